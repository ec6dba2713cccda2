//! Determining request targets (RFC 3261 §16.5): the callee's bindings from the location
//! service, each reached through the node that owns its flow, and URIs resolved to flows.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Hop, Proxy, NODE_PARAM};
use crate::call::location::{self, Binding};
use crate::sip::flow::Flow;
use crate::sip::uri::SipUri;
use crate::sip::Fault;

/// How long a DNS lookup of a next hop may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a forwarded request goes: a known flow, or a URI resolved when forwarding.
#[derive(Debug, Clone)]
pub(super) enum Dest {
    Flow(Flow),
    Uri(String),
}

/// A place to send a forwarded request.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Where it goes.
    pub dest: Dest,
    /// The new Request-URI, if it changes.
    pub uri: Option<String>,
    /// Route headers to add in front (a binding's Path).
    pub routes: Vec<String>,
    /// Other flows of the same phone instance, tried in order if this one fails.
    pub alternates: Vec<Target>,
}

impl Target {
    /// A target that only says where to send the request as it is.
    pub fn to(dest: Dest) -> Target {
        Target {
            dest,
            uri: None,
            routes: Vec::new(),
            alternates: Vec::new(),
        }
    }
}

/// The address of a UDP contact given as an IP address (`None` for another transport or a
/// host name).
fn contact_addr(contact: &str) -> Option<SocketAddr> {
    let u = SipUri::parse(contact).ok()?;
    if u.secure
        || u.param("transport")
            .flatten()
            .is_some_and(|t| !t.eq_ignore_ascii_case("udp"))
    {
        return None;
    }
    let ip: std::net::IpAddr = u.host.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// Whether an address is private (RFC 1918, RFC 6598 shared, IPv6 unique local): what a phone
/// behind a NAT puts in its Contact.
fn private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// A UDP binding registered from behind a NAT: its contact is a private address other than
/// the one the REGISTER came from, and no edge proxy (Path) stands in between. Such a contact
/// cannot be reached; the address the REGISTER came from can (the NAT keeps it open while the
/// phone refreshes), as Kamailio's `fix_nated_register` + `nat_uac_test("1")` do. A contact on
/// a public or loopback address is taken as given (a third-party registration). `contact`
/// is the binding's contact as an address.
fn behind_nat(b: &Binding, contact: Option<SocketAddr>) -> bool {
    let Flow::Udp(source) = b.flow else {
        return false;
    };
    b.path.is_empty() && contact.is_some_and(|c| private(c.ip()) && c != source)
}

impl Proxy {
    /// Where a URI leads: another mesh node (its Record-Route), or an address.
    pub(crate) async fn resolve(&self, uri: &str) -> Result<Flow, Fault> {
        let u = SipUri::parse(uri).map_err(|_| Fault::new(416, "Unsupported URI Scheme"))?;
        if u.param(NODE_PARAM).is_some() {
            match self.hop(uri) {
                Hop::Node {
                    peer,
                    up: true,
                    flow,
                } => {
                    return Ok(match flow.flow() {
                        Some(f) => Flow::Mesh {
                            node: peer,
                            target: Some(Box::new(f)),
                        },
                        None => Flow::to_node(peer),
                    })
                }
                Hop::Ours(flow) => {
                    if let Some(f) = flow.flow().filter(|f| self.ctx.transport.is_alive(f)) {
                        return Ok(f);
                    }
                }
                _ => {}
            }
        }
        let transport = u.param("transport").flatten().map(str::to_ascii_lowercase);
        let tls = u.secure || transport.as_deref() == Some("tls");
        if tls && self.ctx.transport.tls().is_none() {
            return Err(super::entry::no_tls());
        }
        if matches!(transport.as_deref(), Some("ws" | "wss")) {
            // A WebSocket client is reached only down the connection it opened.
            return Err(Fault::new(480, "Temporarily Unavailable"));
        }
        let port = u.port.unwrap_or(if tls { 5061 } else { 5060 });
        let unresolvable = || Fault::new(478, "Unresolvable Destination");
        let ip = match u.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let lookup = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    tokio::net::lookup_host((u.host.as_str(), port)),
                )
                .await;
                match lookup {
                    Ok(Ok(mut addrs)) => addrs.next().ok_or_else(unresolvable)?.ip(),
                    _ => return Err(unresolvable()),
                }
            }
        };
        let dest = SocketAddr::new(ip, port);
        if tls {
            // RFC 3261 §26.2: a sips: target is only ever reached over TLS.
            return self
                .ctx
                .transport
                .tls_flow(dest, &u.host)
                .await
                .map_err(|_| Fault::new(503, "Service Unavailable"));
        }
        if transport.as_deref() == Some("tcp") {
            self.ctx
                .transport
                .tcp_flow(dest)
                .await
                .map_err(|_| Fault::new(503, "Service Unavailable"))
        } else {
            Ok(Flow::Udp(dest))
        }
    }

    /// The targets of an initial request: the callee's bindings, each through its owner node;
    /// only those of one instance (a phone) when the request was for its GRUU.
    pub(super) async fn locate(
        &self,
        user: &str,
        instance: Option<&str>,
    ) -> Result<Vec<Target>, Fault> {
        let mut bindings = location::lookup_near(&self.ctx.mesh, user)
            .await
            .map_err(|_| Fault::new(500, "Location service unavailable"))?;
        if let Some(id) = instance {
            bindings.retain(|b| {
                b.instance
                    .as_deref()
                    .is_some_and(|i| crate::call::gruu::instance_id(i) == id)
            });
            if bindings.is_empty() {
                return Err(Fault::new(480, "Temporarily Unavailable"));
            }
        }
        if bindings.is_empty() {
            return Err(match self.ctx.users.get_cached(user).await {
                Ok(Some(_)) => Fault::new(480, "Temporarily Unavailable"),
                Ok(None) => Fault::new(404, "Not Found"),
                Err(_) => Fault::new(500, "User lookup failed"),
            });
        }
        // Bindings of one Outbound instance (same +sip.instance, different reg-id) are one
        // target with standby flows, lowest reg-id first; others are forked in parallel.
        let mut sorted: Vec<&Binding> = bindings.iter().collect();
        sorted.sort_by_key(|b| (b.instance.clone(), b.reg_id));
        let mut targets: Vec<Target> = Vec::new();
        let mut instances: Vec<Option<String>> = Vec::new();
        for b in sorted {
            let Some(t) = self.binding_target(b) else {
                continue;
            };
            let group = b.instance.clone().filter(|_| b.reg_id.is_some());
            match group
                .as_ref()
                .and_then(|g| instances.iter().position(|x| x.as_ref() == Some(g)))
            {
                Some(at) => targets[at].alternates.push(t),
                None => {
                    instances.push(group);
                    targets.push(t);
                }
            }
        }
        if targets.is_empty() {
            return Err(Fault::new(480, "Temporarily Unavailable"));
        }
        Ok(targets)
    }

    /// How to reach one binding. An Outbound binding (RFC 5626, with reg-id) is reached only
    /// down its flow; another binding at its contact URI (RFC 3261), or down its TCP connection
    /// while that is open, or at the address its REGISTER came from when it is behind a NAT.
    /// A binding owned by another node goes through that node.
    fn binding_target(&self, b: &Binding) -> Option<Target> {
        let outbound = b.reg_id.is_some();
        let tcp = b.flow.is_reliable();
        // The contact as an address, parsed once: only a UDP binding may be reached at it.
        let contact = if outbound || tcp {
            None
        } else {
            contact_addr(&b.contact)
        };
        // A binding registered through an edge proxy (Path) is reached through that proxy, on
        // the flow its REGISTER came in on (RFC 3327: the Path is the request's first hops).
        let use_flow = outbound || tcp || !b.path.is_empty() || behind_nat(b, contact);
        let dest = if b.owner == self.node {
            if use_flow && self.ctx.transport.is_alive(&b.flow) {
                Dest::Flow(b.flow.clone())
            } else if outbound {
                return None; // the flow is dead
            } else {
                Dest::Uri(b.contact.clone())
            }
        } else {
            if !self.ctx.mesh.is_up(&b.owner) {
                return None; // its owner is down: its flows died with it
            }
            // The owner relays the request down the binding's flow, or to the contact's
            // address over UDP (what it would resolve the contact to); a contact naming a host
            // is routed by the owner itself.
            let target = if use_flow {
                Some(b.flow.clone())
            } else {
                contact.map(Flow::Udp)
            };
            Dest::Flow(Flow::Mesh {
                node: b.owner,
                target: target.map(Box::new),
            })
        };
        Some(Target {
            dest,
            uri: Some(b.contact.clone()),
            routes: b.path.clone(),
            alternates: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::private;

    #[test]
    fn private_addresses_are_what_nat_phones_register() {
        for ip in [
            "10.1.2.3",
            "172.16.0.9",
            "192.168.77.2",
            "100.64.1.1",
            "fd00::1",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "203.0.113.7",
            "100.128.0.1",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }
}
