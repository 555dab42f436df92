//! `Manifest::decode` on arbitrary bytes: it must never panic, and whatever
//! it accepts must re-encode to bytes that decode to the same manifest.
#![no_main]

use dynostore_protocol::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let bytes = m.encode();
        let again = Manifest::decode(&bytes)
            .unwrap_or_else(|e| panic!("re-encoded manifest is refused: {e}"));
        assert_eq!(again, m, "manifest changed in a round trip");
        assert_eq!(again.encode(), bytes, "manifest encoding is not stable");
    }
});
