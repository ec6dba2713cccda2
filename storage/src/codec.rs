//! The one module where sipmesh encodes bytes: serde + bincode 2, behind a format-version byte.
//!
//! Every value stored on disk or sent between nodes is `[FORMAT_VERSION, bincode(value)...]`.
//! bincode 2.x is flagged unmaintained (RUSTSEC-2025-0141) but its format is stable; the version
//! byte lets a later build switch encodings and still read (or clearly reject) old bytes.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;

fn config() -> impl bincode::config::Config {
    // Fixed-width integers would waste space on small counters; varint is bincode's standard.
    // The limit bounds what a malicious length prefix can make the decoder allocate.
    bincode::config::standard().with_limit::<{ 64 * 1024 * 1024 }>()
}

/// Encode `value` with the format-version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out)
}

/// Append the encoding of `value` (with version byte) to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(())
}

/// Decode bytes written by [`encode`]. `what` and `key` name the data for the error message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str, key: &[u8]) -> Result<T> {
    decode_borrowed(bytes, what, key)
}

/// As [`decode`], into a value that may borrow strings and bytes from `bytes` (no copies).
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
    key: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        table: what.to_string(),
        key: crate::error::hex(key),
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if version != FORMAT_VERSION {
        return Err(Error::FormatVersion {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let (value, used) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after the value",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let v = (1u32, "abc".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u32, String, Vec<u8>) = decode(&bytes, "t", b"k").unwrap();
        assert_eq!(back, v);
        // truncated
        let err = decode::<(u32, String, Vec<u8>)>(&bytes[..bytes.len() - 1], "t", b"k");
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
        // wrong version
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(matches!(
            decode::<(u32, String, Vec<u8>)>(&bad, "t", b"k"),
            Err(Error::FormatVersion { found: 99, .. })
        ));
        // empty
        assert!(decode::<u32>(&[], "t", b"k").is_err());
        // trailing garbage
        let mut long = bytes;
        long.push(0);
        assert!(decode::<(u32, String, Vec<u8>)>(&long, "t", b"k").is_err());
    }
}
