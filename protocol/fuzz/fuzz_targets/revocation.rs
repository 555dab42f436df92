#![no_main]
//! Revocations arrive from any client (`token revoke`) and from members'
//! lists: decoding and verifying arbitrary bytes must never panic.

use dynostore_protocol::trust::{Federation, Revocation, SiteKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fed = Federation::new("fuzz").expect("a valid name");
    fed.add_site("a", SiteKey::from_seed([7; 32]).public())
        .expect("a valid site");
    if let Ok(r) = Revocation::decode(data) {
        let _ = r.verify(&fed);
        let _ = Revocation::decode(&r.encode()).expect("a decoded revocation re-encodes");
    }
});
