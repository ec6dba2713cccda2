//! Digest access authentication's primitives (RFC 7616, RFC 8760 for SIP): the algorithms,
//! HA1, and stored credentials. Nonces and verification live with the node (`call::auth`).

use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (RFC 2617).
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The algorithm a credentials' `algorithm` directive names (MD5 when absent).
    pub fn parse(s: Option<&str>) -> Option<Algorithm> {
        match s.map(|s| s.to_ascii_uppercase()).as_deref() {
            None | Some("MD5") => Some(Algorithm::Md5),
            Some("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// Its name in `algorithm=` directives.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// A comma-separated list of algorithm names (`MD5,SHA-256`, any case), in the order given:
    /// at least one, no repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Algorithm>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim) {
            let alg = match name.to_ascii_uppercase().as_str() {
                "MD5" => Algorithm::Md5,
                "SHA-256" | "SHA256" => Algorithm::Sha256,
                _ => return Err(format!("{name:?} is not MD5 or SHA-256")),
            };
            if out.contains(&alg) {
                return Err(format!("{name} is listed twice"));
            }
            out.push(alg);
        }
        Ok(out)
    }

    /// Hex digest of `data`.
    pub fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

/// Bytes from lowercase or uppercase hex (`None` if it is not hex).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// HA1 = H(user:realm:password), the only form a password is stored in.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash(&format!("{user}:{realm}:{password}"))
}

/// Stored credentials of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// HA1 with MD5.
    pub ha1_md5: String,
    /// HA1 with SHA-256.
    pub ha1_sha256: String,
}
