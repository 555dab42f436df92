//! `ClientEnvelope` (a client's first frame: its token and request) from
//! untrusted bytes, as a bare message (`WireMessage::decode`) and as a
//! frame (`WireMessage::from_frame`): it must never panic, and whatever is
//! accepted must round-trip.
#![no_main]

use dynostore_protocol::wire::{ClientEnvelope, WireMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientEnvelope::decode(data) {
        round_trip(&msg);
    }
    if let Ok(msg) = ClientEnvelope::from_frame(data) {
        round_trip(&msg);
    }
});

fn round_trip(msg: &ClientEnvelope) {
    let bytes = msg.encode();
    let again = ClientEnvelope::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {} is refused: {e}", ClientEnvelope::NAME));
    assert_eq!(
        &again,
        msg,
        "{} changed in a round trip",
        ClientEnvelope::NAME
    );
    assert_eq!(
        again.encode(),
        bytes,
        "{} encoding is not stable",
        ClientEnvelope::NAME
    );
    let framed = ClientEnvelope::from_frame(&msg.to_frame())
        .unwrap_or_else(|e| panic!("re-framed {} is refused: {e}", ClientEnvelope::NAME));
    assert_eq!(
        &framed,
        msg,
        "{} changed in a frame round trip",
        ClientEnvelope::NAME
    );
}
