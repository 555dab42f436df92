//! `ClientResponse` from untrusted bytes, as a bare message
//! (`WireMessage::decode`) and as a frame (`WireMessage::from_frame`): it
//! must never panic, and whatever is accepted must round-trip.
#![no_main]

use dynostore_protocol::wire::{ClientResponse, WireMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientResponse::decode(data) {
        round_trip(&msg);
    }
    if let Ok(msg) = ClientResponse::from_frame(data) {
        round_trip(&msg);
    }
});

fn round_trip(msg: &ClientResponse) {
    let bytes = msg.encode();
    let again = ClientResponse::decode(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {} is refused: {e}", ClientResponse::NAME));
    assert_eq!(
        &again,
        msg,
        "{} changed in a round trip",
        ClientResponse::NAME
    );
    assert_eq!(
        again.encode(),
        bytes,
        "{} encoding is not stable",
        ClientResponse::NAME
    );
    let framed = ClientResponse::from_frame(&msg.to_frame())
        .unwrap_or_else(|e| panic!("re-framed {} is refused: {e}", ClientResponse::NAME));
    assert_eq!(
        &framed,
        msg,
        "{} changed in a frame round trip",
        ClientResponse::NAME
    );
}
