//! `Chunk` from untrusted bytes, as a bare message
//! (`WireMessage::decode`) and as a frame (`WireMessage::from_frame`): it
//! must never panic, and whatever is accepted must round-trip.
#![no_main]

use dynostore_protocol::wire::{Chunk, WireMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Chunk::decode(data) {
        round_trip(&msg);
    }
    if let Ok(msg) = Chunk::from_frame(data) {
        round_trip(&msg);
    }
});

fn round_trip(msg: &Chunk) {
    let bytes = msg.encode();
    let again = Chunk::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {} is refused: {e}", Chunk::NAME));
    assert_eq!(
        &again,
        msg,
        "{} changed in a round trip",
        Chunk::NAME
    );
    assert_eq!(
        again.encode(),
        bytes,
        "{} encoding is not stable",
        Chunk::NAME
    );
    let framed = Chunk::from_frame(&msg.to_frame())
        .unwrap_or_else(|e| panic!("re-framed {} is refused: {e}", Chunk::NAME));
    assert_eq!(
        &framed,
        msg,
        "{} changed in a frame round trip",
        Chunk::NAME
    );
}
