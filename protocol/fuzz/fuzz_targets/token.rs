#![no_main]
//! User tokens arrive from any client: decoding, verifying and authorizing
//! arbitrary bytes must never panic.

use dynostore_protocol::token::{Op, Token};
use dynostore_protocol::trust::{Federation, SiteKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fed = Federation::new("fuzz").expect("a valid name");
    fed.add_site("a", SiteKey::from_seed([7; 32]).public())
        .expect("a valid site");
    if let Ok(t) = Token::decode(data, &fed) {
        let _ = t.authorize(Op::Get, "x", 0, |_| false);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Token::decode_base64(text, &fed);
    }
});
