//! The mesh-wide secret: one key every member holds, for the MACs that let any node check what
//! another node issued without shared state — digest nonces, flow tokens in Record-Route, Path
//! and Via. The previous key stays valid after a change, so a rotation fails nothing in flight.

use std::sync::RwLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type Keyed = Hmac<Sha256>;

/// The current and previous keys, each with its HMAC state precomputed, and the current key's
/// public id ([`MeshSecret::key_id`]).
pub struct MeshSecret {
    keys: RwLock<(Vec<u8>, Keyed, Option<Keyed>, String)>,
}

/// The public id of a key: the first bytes of a MAC of a fixed label, in hex.
fn id_of(k: &Keyed) -> String {
    let mut m = k.clone();
    m.update(b"sipmesh key id");
    let full: [u8; 32] = m.finalize().into_bytes().into();
    full[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn keyed(secret: &[u8]) -> Keyed {
    <Keyed as Mac>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// Whether two byte strings are equal, in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl MeshSecret {
    /// A secret starting with `key`.
    pub fn new(key: Vec<u8>) -> Self {
        let k = keyed(&key);
        let id = id_of(&k);
        MeshSecret {
            keys: RwLock::new((key, k, None, id)),
        }
    }

    /// Adopt a new key (the current one becomes the previous one); a no-op for the same key.
    /// Returns whether the key changed.
    pub fn set(&self, key: Vec<u8>) -> bool {
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if k.0 == key {
            return false;
        }
        let next = keyed(&key);
        k.3 = id_of(&next);
        let old = std::mem::replace(&mut k.1, next);
        k.0 = key;
        k.2 = Some(old);
        true
    }

    /// A short public name of the current key (a MAC of a fixed label, so it reveals nothing
    /// of the key): two nodes with the same id seal and open each other's datagrams.
    pub fn key_id(&self) -> String {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .3
            .clone()
    }

    /// HMAC-SHA256 of the parts (in order) with the current key.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is a prefix of the HMAC of the parts under the current or previous key.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(&keys.1).chain(keys.2.as_ref()).any(|k| {
            let mut m = k.clone();
            for p in parts {
                m.update(p);
            }
            let full: [u8; 32] = m.finalize().into_bytes().into();
            tag.len() <= 32 && constant_time_eq(&full[..tag.len()], tag)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_survive_one_rotation() {
        let s = MeshSecret::new(b"one".to_vec());
        let tag = s.mac(&[b"a", b"b"]);
        assert!(s.verify(&[b"a", b"b"], &tag[..8]));
        assert!(!s.verify(&[b"a", b"c"], &tag[..8]));
        s.set(b"two".to_vec());
        assert!(s.verify(&[b"a", b"b"], &tag[..8]));
        s.set(b"three".to_vec());
        assert!(!s.verify(&[b"a", b"b"], &tag[..8]));
    }
}
