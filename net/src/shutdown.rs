//! Graceful shutdown, as mini-redis does it: one trigger, many listeners. Every background loop
//! of a node selects on [`Shutdown::wait`] and returns when it fires; [`Background`] holds the
//! loops' handles, fires the trigger and waits for them.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

/// The listening side: cloned into every background loop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Wait until shutdown is triggered (at once if it already was, or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Named background loops and the trigger that stops them.
#[derive(Debug)]
pub struct Background {
    tx: watch::Sender<bool>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            tx: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        }
    }
}

impl Background {
    /// A listener for loops spawned elsewhere.
    pub fn signal(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Keep a loop's handle under a name (for logs).
    pub fn keep(&self, name: &'static str, handle: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, handle));
    }

    /// Spawn a loop that gets a [`Shutdown`], and keep its handle.
    pub fn spawn<F, Fut>(&self, name: &'static str, f: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(f(self.signal()));
        self.keep(name, handle);
    }

    /// Fire the trigger and wait up to `within` for every loop to return; abort the rest.
    pub async fn stop(&self, within: Duration) {
        let _ = self.tx.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        for (name, mut handle) in tasks {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                debug!(task = name, "did not stop in time; aborted");
                handle.abort();
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.tx.send(true);
        for (_, t) in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loops_stop_when_triggered() {
        let bg = Background::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        bg.spawn("ticker", |mut shutdown| async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            let _ = tx.send(()).await;
        });
        bg.stop(Duration::from_secs(5)).await;
        assert_eq!(rx.recv().await, Some(()));
        assert!(bg.signal().is_triggered());
    }
}
