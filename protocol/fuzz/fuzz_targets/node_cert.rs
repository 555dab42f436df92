#![no_main]
//! Node certificates arrive from unadmitted peers: decoding and verifying
//! arbitrary bytes must never panic.

use dynostore_protocol::trust::{Federation, NodeCert, SiteKey};
use dynostore_protocol::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = NodeCert::decode(data) {
        let mut fed = Federation::new("fuzz").expect("a valid name");
        fed.add_site(&cert.body().site, SiteKey::from_seed([7; 32]).public())
            .expect("decode checked the label");
        if let Ok(peer) = NodeId::from_bytes(cert.body().node.clone()) {
            let _ = cert.verify(&fed, &peer, 0);
        }
    }
});
