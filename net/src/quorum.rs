//! Asking several replicas at once and deciding on the first quorum — Garage's
//! `try_call_many` with its result tracker is the model. Reads and writes both go through
//! [`ask`]: it resolves as soon as the outcome is known, and lets the slower requests finish in
//! the background, where [`Answers`] reaches a closure that stores hints or repairs replicas.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::error::{Error, Result};

/// Every answer of one fan-out, once all of them are in.
#[derive(Debug)]
pub(crate) struct Answers<T> {
    /// Peers that answered, with their answers.
    pub ok: Vec<(PeerId, T)>,
    /// Peers that failed, with why.
    pub failed: Vec<(PeerId, Error)>,
}

/// Ask every peer in `peers` at once (`call(peer)` makes the request). Resolves with the first
/// `needed` successes — or, once `needed` succeeded, with every success that comes within
/// `linger` more (so a write settles on all live replicas when they are quick) — or with an
/// error as soon as so many failed that `needed` cannot be reached: the failing peer's own
/// refusal (`Remote`, `Storage`) if there is one, else `Timeout` naming how many succeeded.
/// The requests still running carry on; when every one has answered, `then` gets all answers
/// and failures.
pub(crate) async fn ask<T, Call, Fut, Then>(
    peers: &[PeerId],
    needed: usize,
    timeout: Duration,
    linger: Duration,
    call: Call,
    then: Then,
) -> Result<Vec<(PeerId, T)>>
where
    T: Clone + Send + 'static,
    Call: Fn(PeerId) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    Then: FnOnce(Answers<T>) + Send + 'static,
{
    let mut pending: FuturesUnordered<_> = peers
        .iter()
        .map(|&peer| {
            let fut = call(peer);
            async move { (peer, fut.await) }
        })
        .collect();
    let total = peers.len();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(
        async move {
            let mut answers = Answers {
                ok: Vec::new(),
                failed: Vec::new(),
            };
            let mut done_tx = Some(done_tx);
            let mut linger_until: Option<tokio::time::Instant> = None;
            loop {
                let next = match linger_until {
                    Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await
                    {
                        Ok(n) => n,
                        Err(_) => {
                            // Lingered long enough: answer with what succeeded.
                            if let Some(tx) = done_tx.take() {
                                let _ = tx.send(Ok(answers.ok.clone()));
                            }
                            linger_until = None;
                            continue;
                        }
                    },
                    None => pending.next().await,
                };
                let Some((peer, result)) = next else { break };
                match result {
                    Ok(v) => answers.ok.push((peer, v)),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "replica request failed");
                        answers.failed.push((peer, e));
                    }
                }
                let Some(tx) = done_tx.take() else { continue };
                let all_in = answers.ok.len() + answers.failed.len() == total;
                if answers.ok.len() >= needed && (linger.is_zero() || all_in) {
                    let _ = tx.send(Ok(answers.ok.clone()));
                } else if answers.ok.len() >= needed {
                    linger_until.get_or_insert(tokio::time::Instant::now() + linger);
                    done_tx = Some(tx);
                } else if total - answers.failed.len() < needed {
                    let refusal = answers
                        .failed
                        .iter()
                        .find(|(_, e)| matches!(e, Error::Remote { .. } | Error::Storage(_)))
                        .map(|(_, e)| e.to_string());
                    let _ = tx.send(Err(match refusal {
                        Some(reason) => Error::Remote {
                            peer: "replica".into(),
                            reason,
                        },
                        None => Error::Timeout {
                            acked: answers.ok.len(),
                            needed,
                            after: timeout,
                        },
                    }));
                } else {
                    done_tx = Some(tx);
                }
            }
            then(answers);
        }
        .in_current_span(),
    );
    done_rx.await.map_err(|_| Error::Shutdown)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[tokio::test]
    async fn resolves_on_the_first_quorum_and_reports_every_answer_later() {
        let p = peers(3);
        let slow = p[2];
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let (tx, rx) = oneshot::channel();
        let got = ask(
            &p,
            2,
            Duration::from_secs(1),
            Duration::ZERO,
            |peer| async move {
                if peer == slow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(peer)
            },
            move |a: Answers<PeerId>| {
                *s.lock().unwrap() = Some(a.ok.len());
                let _ = tx.send(());
            },
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 2);
        assert!(!got.iter().any(|(peer, _)| *peer == slow));
        rx.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), Some(3));
    }

    #[tokio::test]
    async fn lingering_waits_a_little_for_the_rest() {
        let p = peers(3);
        let (slow, late) = (p[1], p[2]);
        let got = ask(
            &p,
            1,
            Duration::from_secs(5),
            Duration::from_millis(200),
            |peer| async move {
                if peer == slow {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if peer == late {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok(peer)
            },
            |_| {},
        )
        .await
        .unwrap();
        // The quick and the slow one, not the one past the linger.
        assert_eq!(got.len(), 2);
        assert!(!got.iter().any(|(peer, _)| *peer == late));
    }

    #[tokio::test]
    async fn fails_as_soon_as_quorum_is_out_of_reach() {
        let p = peers(3);
        let ok = p[0];
        let err = ask(
            &p,
            2,
            Duration::from_secs(1),
            Duration::ZERO,
            |peer| async move {
                if peer == ok {
                    // never decides the outcome: two failures already did
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                } else {
                    Err(Error::Unreachable {
                        peer: peer.to_string(),
                        reason: "down".into(),
                    })
                }
            },
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    acked: 0,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_replicas_refusal_is_reported_as_such() {
        let p = peers(1);
        let err = ask(
            &p,
            1,
            Duration::from_secs(1),
            Duration::ZERO,
            |peer| async move {
                Err::<(), _>(Error::Remote {
                    peer: peer.to_string(),
                    reason: "invalid mutation".into(),
                })
            },
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("invalid mutation"), "{err}");
    }
}
