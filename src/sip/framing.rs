//! Framing on a stream transport (RFC 3261 §18.3): where a message ends in a TCP buffer, by its
//! Content-Length, and the double-CRLF keepalives of RFC 5626 §3.5.1 between messages.

use super::message::{HeaderName, MAX_MESSAGE};
use super::Fault;

/// Find the end of the header section: the index just past the empty line.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    // "\n\n" or "\n\r\n"
    memchr::memchr_iter(b'\n', buf).find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
        (Some(b'\n'), _) => Some(i + 2),
        (Some(b'\r'), Some(b'\n')) => Some(i + 3),
        _ => None,
    })
}

/// What framing found at the start of a TCP buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// More bytes are needed.
    Incomplete,
    /// A message of this many bytes (after `skip` leading bytes of line ends).
    Message {
        /// Leading CR/LF bytes to discard first.
        skip: usize,
        /// The message length.
        len: usize,
    },
    /// A double-CRLF keepalive (RFC 5626 §3.5.1) of this many bytes: answer with one CRLF.
    Ping(usize),
    /// A lone CRLF (a keepalive answer) of this many bytes: discard.
    Pong(usize),
    /// The stream cannot be framed: close the connection.
    Error(Fault),
}

/// Frame the next message in a TCP buffer, by Content-Length (which TCP requires).
pub fn frame_stream(buf: &[u8]) -> Framed {
    if buf.starts_with(b"\r\n\r\n") {
        return Framed::Ping(4);
    }
    if buf == b"\r\n" || (buf.starts_with(b"\r\n") && buf.get(2) != Some(&b'\r')) {
        return Framed::Pong(2);
    }
    if buf.starts_with(b"\r") || buf.starts_with(b"\n") {
        if buf.len() < 4 {
            return Framed::Incomplete;
        }
        let skip = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        return Framed::Pong(skip);
    }
    let Some(head_end) = find_head_end(buf) else {
        if buf.len() > MAX_MESSAGE {
            return Framed::Error(Fault::new(513, "Message Too Large"));
        }
        return Framed::Incomplete;
    };
    let mut lengths = Vec::new();
    for line in buf[..head_end].split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        if HeaderName::parse(name.trim()) == HeaderName::ContentLength {
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_string();
            match parse_content_length(&value) {
                Ok(n) => lengths.push(n),
                Err(f) => return Framed::Error(f),
            }
        }
    }
    let len = match lengths.as_slice() {
        [] => return Framed::Error(Fault::bad("Missing Content-Length on a stream transport")),
        [n] => *n,
        _ => return Framed::Error(Fault::bad("Multiple Content-Length headers")),
    };
    let total = head_end + len;
    if total > MAX_MESSAGE {
        return Framed::Error(Fault::new(513, "Message Too Large"));
    }
    if buf.len() < total {
        return Framed::Incomplete;
    }
    Framed::Message {
        skip: 0,
        len: total,
    }
}

pub(super) fn parse_content_length(value: &str) -> Result<usize, Fault> {
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Fault::bad(format!(
            "Bad Content-Length {:?}",
            truncate(value)
        )));
    }
    value.parse().map_err(|_| Fault::bad("Bad Content-Length"))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(24);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
