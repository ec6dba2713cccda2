//! How a node is named in SIP: the address it advertises (in Via, Record-Route, the mesh's
//! tags, 302s and the bootstrap list) and every name it answers to. A node bound to 0.0.0.0,
//! or behind a NAT, advertises what phones and other nodes can reach, not what it bound.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::flow::StreamKind;
use super::header::parse_host_port;

/// A host and port as SIP writes them (`host:port`, IPv6 in brackets); hosts compare without
/// case and without brackets, so `[::1]:5060` and a Via's `::1` host with port 5060 are one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A hostname or an IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// Parse `host[:port]` (`[v6]:port` for IPv6); `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Option<HostPort> {
        let (host, port) = parse_host_port(s.trim())?;
        Some(HostPort {
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// A socket address as a host and port.
    pub fn of(addr: SocketAddr) -> HostPort {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// Whether `host` (brackets optional) and `port` (5060 when absent) name this.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        port.unwrap_or(5060) == self.port && host.eq_ignore_ascii_case(&self.host)
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Every name a node answers to in SIP, the advertised one first.
#[derive(Debug, Clone)]
pub struct OwnNames {
    advertised: HostPort,
    bound: SocketAddr,
    /// The ports of the TLS, WS and WSS listeners (same host names and addresses).
    streams: [Option<u16>; 3],
}

fn stream_index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Tls => 0,
        StreamKind::Ws => 1,
        StreamKind::Wss => 2,
    }
}

impl OwnNames {
    /// A node bound to `bound` that advertises `advertised` (`None`: the bound address, which
    /// must then be a specific one).
    pub fn new(bound: SocketAddr, advertised: Option<HostPort>) -> OwnNames {
        OwnNames {
            advertised: advertised.unwrap_or_else(|| HostPort::of(bound)),
            bound,
            streams: [None; 3],
        }
    }

    /// The same names, also answering on the port of a TLS or WebSocket listener.
    pub fn with_listener(mut self, kind: StreamKind, port: u16) -> OwnNames {
        self.streams[stream_index(kind)] = Some(port);
        self
    }

    /// The address to advertise for a transport (`None`: UDP and TCP): the advertised host
    /// with that listener's port (`None` when the node has no such listener).
    pub fn advertised_for(&self, kind: Option<StreamKind>) -> Option<HostPort> {
        let port = match kind {
            None => self.advertised.port,
            Some(k) => self.streams[stream_index(k)]?,
        };
        Some(HostPort {
            host: self.advertised.host.clone(),
            port,
        })
    }

    fn has_port(&self, port: u16) -> bool {
        self.streams.contains(&Some(port))
    }

    /// The names of a node bound to `bound` with `--sip-advertise` `advertise`, and the IP
    /// address and port other nodes send SIP to: the advertised address when it is an IP, else
    /// the bound one, else the advertised name resolved (once, at start). A node bound to
    /// every address must say which one it is reached at.
    pub fn for_node(
        bound: SocketAddr,
        advertise: Option<&str>,
    ) -> Result<(OwnNames, SocketAddr), String> {
        let advertised = match advertise {
            Some(a) => Some(
                HostPort::parse(a, bound.port())
                    .ok_or_else(|| format!("--sip-advertise {a:?} is not HOST[:PORT]"))?,
            ),
            None if bound.ip().is_unspecified() => {
                return Err(format!(
                    "--sip-listen {bound} binds every address: say which one phones and other \
                     nodes reach with --sip-advertise HOST[:PORT]"
                ))
            }
            None => None,
        };
        let names = OwnNames::new(bound, advertised);
        let adv = names.advertised();
        let mesh_sip = match adv.ip() {
            Some(ip) => SocketAddr::new(ip, adv.port),
            None if !bound.ip().is_unspecified() => bound,
            None => std::net::ToSocketAddrs::to_socket_addrs(&(adv.host.as_str(), adv.port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("--sip-advertise {adv}: the name does not resolve"))?,
        };
        Ok((names, mesh_sip))
    }

    /// The address this node puts in Via and Record-Route and publishes to the mesh.
    pub fn advertised(&self) -> &HostPort {
        &self.advertised
    }

    /// Whether `host:port` names this node: the advertised name, the bound address, or — bound
    /// to every interface — a loopback address on the bound port.
    pub fn is_own(&self, host: &str, port: Option<u16>) -> bool {
        if self.advertised.matches(host, port) {
            return true;
        }
        let port = port.unwrap_or(5060);
        if self.has_port(port) && self.advertised.matches(host, Some(self.advertised.port)) {
            return true;
        }
        if port != self.bound.port() && !self.has_port(port) {
            return false;
        }
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return false;
        };
        ip == self.bound.ip() || (self.bound.ip().is_unspecified() && ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sent_by_compares_with_or_without_brackets() {
        let me = HostPort::of("[::1]:5060".parse().unwrap());
        assert_eq!(me.to_string(), "[::1]:5060");
        assert!(me.matches("::1", None));
        assert!(me.matches("[::1]", Some(5060)));
        assert!(!me.matches("::1", Some(5062)));
        assert_eq!(HostPort::parse("[::1]:5060", 5060), Some(me));
    }

    #[test]
    fn a_node_answers_to_every_name_it_has() {
        let names = OwnNames::new(
            "0.0.0.0:5060".parse().unwrap(),
            HostPort::parse("SIP.Example.org", 5060),
        );
        assert_eq!(names.advertised().to_string(), "SIP.Example.org:5060");
        assert!(names.is_own("sip.example.org", None));
        assert!(names.is_own("127.0.0.1", Some(5060)));
        assert!(!names.is_own("0.0.0.0", Some(5062)));
        assert!(!names.is_own("other.example.org", None));
        let plain = OwnNames::new("192.0.2.7:5070".parse().unwrap(), None);
        assert!(plain.is_own("192.0.2.7", Some(5070)));
        assert!(!plain.is_own("127.0.0.1", Some(5070)));
        let tls = OwnNames::new(
            "0.0.0.0:5060".parse().unwrap(),
            HostPort::parse("sip.example.org", 5060),
        )
        .with_listener(StreamKind::Tls, 5061);
        assert!(tls.is_own("sip.example.org", Some(5061)));
        assert!(tls.is_own("127.0.0.1", Some(5061)));
        assert!(!tls.is_own("sip.example.org", Some(5062)));
        assert_eq!(
            tls.advertised_for(Some(StreamKind::Tls))
                .unwrap()
                .to_string(),
            "sip.example.org:5061"
        );
        assert_eq!(tls.advertised_for(Some(StreamKind::Ws)), None);
    }
}
