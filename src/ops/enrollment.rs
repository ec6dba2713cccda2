//! The files and text forms of signed enrollment (`sipmesh_net::admission`): the enrollment
//! key, members' credentials and revocations. Each is one line of text, a versioned prefix and
//! base64 (URL-safe, unpadded), so it can be pasted into a chat, a ticket or a config tool.

use std::path::Path;

use base64::Engine as _;
use sipmesh_net::{Credential, EnrollmentKey, Revocation};

use crate::error::{Error, Result};

const KEY_PREFIX: &str = "sipmesh-enrollment-key-1:";
const CREDENTIAL_PREFIX: &str = "sipmesh-credential-1:";
const REVOCATION_PREFIX: &str = "sipmesh-revocation-1:";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn decode(text: &str, prefix: &str, what: &str) -> Result<Vec<u8>> {
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| Error::Config(format!("not {what} (it starts with {prefix})")))?;
    b64()
        .decode(body)
        .map_err(|e| Error::Config(format!("{what} is not valid base64: {e}")))
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    if path.exists() {
        return Err(Error::Config(format!(
            "{} exists; not overwriting it",
            path.display()
        )));
    }
    sipmesh_net::config::write_atomically(path, format!("{text}\n").as_bytes(), Some(mode))
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
}

/// Write a new enrollment key to `path` (owner-only, never over an existing file).
pub fn write_enrollment_key(path: &Path, key: &EnrollmentKey) -> Result<()> {
    write_new(
        path,
        &format!("{KEY_PREFIX}{}", b64().encode(key.secret())),
        0o600,
    )
}

/// Read an enrollment key file.
pub fn read_enrollment_key(path: &Path) -> Result<EnrollmentKey> {
    let bytes = decode(
        &read(path, "enrollment key")?,
        KEY_PREFIX,
        "an enrollment key",
    )?;
    Ok(EnrollmentKey::from_secret(&bytes)?)
}

/// The text form of a credential.
pub fn credential_text(c: &Credential) -> String {
    format!("{CREDENTIAL_PREFIX}{}", b64().encode(c.to_bytes()))
}

/// Parse a credential's text form.
pub fn parse_credential(text: &str) -> Result<Credential> {
    Ok(Credential::from_bytes(&decode(
        text,
        CREDENTIAL_PREFIX,
        "a credential",
    )?)?)
}

/// Read a credential file.
pub fn read_credential(path: &Path) -> Result<Credential> {
    parse_credential(&read(path, "credential")?)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Write a credential file (readable by its node's user only; it is not secret, but there is
/// no reason to show it to others).
pub fn write_credential(path: &Path, c: &Credential) -> Result<()> {
    write_new(path, &credential_text(c), 0o600)
}

/// The text form of a revocation.
pub fn revocation_text(r: &Revocation) -> String {
    format!("{REVOCATION_PREFIX}{}", b64().encode(r.to_bytes()))
}

/// Parse a revocation's text form.
pub fn parse_revocation(text: &str) -> Result<Revocation> {
    Ok(Revocation::from_bytes(&decode(
        text,
        REVOCATION_PREFIX,
        "a revocation",
    )?)?)
}

/// The mesh's enrollment public key, as operators compare it.
pub fn public_text(key: &[u8; 32]) -> String {
    b64().encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipmesh_net::{PeerId, Roles};

    #[test]
    fn files_and_texts_round_trip_and_bad_ones_say_what_they_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = EnrollmentKey::generate();
        let path = dir.path().join("enroll.key");
        write_enrollment_key(&path, &key).unwrap();
        assert!(
            write_enrollment_key(&path, &key).is_err(),
            "overwrote a key"
        );
        assert_eq!(read_enrollment_key(&path).unwrap().public(), key.public());
        let peer = PeerId::random();
        let c = key.issue(&peer, Roles::ADMIN, 1, 2);
        assert_eq!(parse_credential(&credential_text(&c)).unwrap(), c);
        let r = key.revoke(&peer, 1);
        assert_eq!(parse_revocation(&revocation_text(&r)).unwrap(), r);
        let err = parse_credential(&revocation_text(&r))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a credential"), "{err}");
        assert!(parse_revocation("sipmesh-revocation-1:!!").is_err());
    }
}
