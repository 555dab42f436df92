//! Property tests of node certificates: whatever is flipped in an encoded
//! certificate, no body other than the one the site signed ever verifies.

use dynostore_protocol::trust::{Federation, NodeCert, NodeCertBody, SiteKey, CERT_VERSION};
use dynostore_protocol::NodeId;
use proptest::prelude::*;

fn node(n: u8) -> NodeId {
    let mut v = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    v.extend([n; 32]);
    NodeId::from_bytes(v).unwrap()
}

fn arb_body() -> impl Strategy<Value = NodeCertBody> {
    (
        "[a-z][a-z0-9-]{0,20}",
        any::<u8>(),
        any::<u64>(),
        0u64..1 << 50,
        1u64..1 << 40,
    )
        .prop_map(|(site, n, cap, issued, len)| NodeCertBody {
            version: CERT_VERSION,
            federation: "fed".into(),
            site,
            node: node(n).as_bytes().to_vec(),
            capacity_max_bytes: cap,
            issued_ms: issued,
            expires_ms: issued + len,
        })
}

proptest! {
    #[test]
    fn a_flipped_byte_never_verifies_another_body(
        body in arb_body(),
        seed in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let key = SiteKey::from_seed(seed);
        let mut fed = Federation::new("fed").unwrap();
        fed.add_site(&body.site, key.public()).unwrap();
        let now = body.issued_ms;
        let peer = body.node_id().unwrap();
        let cert = key.issue(&body);
        let mut bytes = cert.encode();
        prop_assert!(NodeCert::decode(&bytes).unwrap().verify(&fed, &peer, now).is_ok());
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(c) = NodeCert::decode(&bytes) {
            if c.verify(&fed, &peer, now).is_ok() {
                prop_assert_eq!(c.body(), &body);
            }
        }
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = NodeCert::decode(&bytes);
    }
}
