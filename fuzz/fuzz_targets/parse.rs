//! Fuzz the SIP parse + validate path: any bytes, as a datagram and as a stream, must come back
//! as a message or a fault — never a panic, never a hang.
//! Run: `cargo +nightly fuzz run parse fuzz/seeds -- -dict=tests/corpus/seeds/sip.dict`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sipmesh::sip::fuzz_one(data);
});
