//! Trust between sites: site admin keys, the federation's set of sites, and
//! node certificates.
//!
//! A federation is a set of sites. Each site has an ed25519 admin key pair
//! ([`SiteKey`], [`SitePublicKey`]); the operators of every site hold the same
//! [`Federation`]: the federation's name and each site's public key. A node
//! is admitted only with a [`NodeCert`] that its site's admin key signed. The
//! certificate binds:
//!
//! - the federation's name (a certificate of another federation that happens
//!   to use the same site name is refused);
//! - the site label (a node cannot claim another site's label: the label
//!   members use is the certificate's, never the announced one);
//! - the node's `NodeId` (a certificate cannot be replayed by another key:
//!   the peer presenting it must be the node it names, which libp2p's Noise
//!   handshake proves);
//! - a ceiling on the capacity the node may announce (announced capacity and
//!   free space above it are cut to it, so a node cannot attract every new
//!   shard by announcing `mem:1000000TiB`);
//! - a validity window (`issued_ms`..`expires_ms`, Unix milliseconds).
//!
//! Encoding: the body is CBOR; the certificate is the CBOR pair
//! `(body bytes, signature)`, and the signature covers
//! [`CERT_SIGNING_CONTEXT`] followed by the body bytes exactly as sent, so no
//! re-encoding can make two bodies share a signature, and a signature made
//! for another purpose with the same key never verifies as a certificate.
//! Signatures are checked with `verify_strict` (no malleable or small-order
//! signatures). Decoding is bounded by [`CERT_MAX_BYTES`] and never panics;
//! verification takes `now_ms` as an argument (this crate reads no clock) and
//! a key seed for signing (it draws no randomness).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// The largest encoded certificate a node accepts.
pub const CERT_MAX_BYTES: usize = 2048;
/// The certificate body version this code writes and accepts.
pub const CERT_VERSION: u16 = 1;
/// Prefixed to the body bytes before signing (domain separation).
pub const CERT_SIGNING_CONTEXT: &[u8] = b"dynostore node certificate v1\0";
/// The longest site label or federation name.
pub const LABEL_MAX_LEN: usize = 64;
/// How a public key is written in text (`ed25519:` then base58).
const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Errors of keys, federations and certificates. Each names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("certificate is {found} bytes, more than the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("certificate does not decode: {0}")]
    Decode(String),
    #[error("certificate version {found} is not supported (this node reads {supported})")]
    Version { found: u16, supported: u16 },
    #[error("certificate is for federation {found:?}, this node belongs to {expected:?}")]
    WrongFederation { expected: String, found: String },
    #[error("certificate names site {site:?}, which is not a site of this federation")]
    UnknownSite { site: String },
    #[error("certificate signature does not verify under site {site:?}'s admin key")]
    BadSignature { site: String },
    #[error("certificate names node {cert_node}, but was presented by {peer}")]
    WrongNode { cert_node: String, peer: String },
    #[error("certificate expired at {expires_ms} ms (now {now_ms} ms)")]
    Expired { expires_ms: u64, now_ms: u64 },
    #[error("certificate is valid only from {issued_ms} ms (now {now_ms} ms)")]
    NotYetValid { issued_ms: u64, now_ms: u64 },
    #[error("invalid {what} {value:?}: {reason}")]
    Label {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid public key {value:?}: {reason}")]
    PublicKey { value: String, reason: String },
    #[error("revocation: {0}")]
    Revocation(String),
    #[error("site {site:?} is listed twice")]
    DuplicateSite { site: String },
}

/// Checks a site label or federation name: 1 to 64 characters of ASCII
/// letters, digits, `-`, `_` and `.` (so it prints unambiguously in logs,
/// metrics labels and file names).
pub fn check_label(what: &'static str, value: &str) -> Result<(), TrustError> {
    let bad = |reason| TrustError::Label {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.len() > LABEL_MAX_LEN {
        return Err(bad("longer than 64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(bad(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// A site's admin signing key. Its secret never leaves the admin's file.
pub struct SiteKey(SigningKey);

impl SiteKey {
    /// From 32 secret bytes (the caller draws them from a CSPRNG).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SiteKey(SigningKey::from_bytes(&seed))
    }

    /// The 32 secret bytes, for the key file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> SitePublicKey {
        SitePublicKey(self.0.verifying_key())
    }

    /// Signs a certificate body.
    pub fn issue(&self, body: &NodeCertBody) -> NodeCert {
        let body_bytes = encode_cbor(body);
        let signature = self.0.sign(&signing_input(&body_bytes));
        NodeCert {
            body: body.clone(),
            body_bytes,
            signature: signature.to_bytes(),
        }
    }
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteKey({})", self.public())
    }
}

/// A site's admin public key, written `ed25519:<base58>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SitePublicKey(VerifyingKey);

impl SitePublicKey {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Display for SitePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            bs58::encode(self.0.to_bytes()).into_string()
        )
    }
}

impl fmt::Debug for SitePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SitePublicKey {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        let bad = |reason: String| TrustError::PublicKey {
            value: s.chars().take(80).collect(),
            reason,
        };
        let b58 = s
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| bad(format!("must start with {PUBLIC_KEY_PREFIX:?}")))?;
        let bytes = bs58::decode(b58)
            .into_vec()
            .map_err(|e| bad(format!("not base58: {e}")))?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| bad(format!("{} bytes, an ed25519 key has 32", bytes.len())))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a curve point".into()))?;
        if key.is_weak() {
            return Err(bad("a weak (small-order) key".into()));
        }
        Ok(SitePublicKey(key))
    }
}

/// The federation as every operator holds it: its name and each site's
/// admin public key. Adding a site is adding a line to every operator's
/// copy (README: "Adding a site").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    name: String,
    sites: BTreeMap<String, SitePublicKey>,
}

impl Federation {
    pub fn new(name: &str) -> Result<Self, TrustError> {
        check_label("federation name", name)?;
        Ok(Federation {
            name: name.to_string(),
            sites: BTreeMap::new(),
        })
    }

    pub fn add_site(&mut self, site: &str, key: SitePublicKey) -> Result<(), TrustError> {
        check_label("site label", site)?;
        if self.sites.insert(site.to_string(), key).is_some() {
            return Err(TrustError::DuplicateSite {
                site: site.to_string(),
            });
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn site_key(&self, site: &str) -> Option<&SitePublicKey> {
        self.sites.get(site)
    }

    pub fn sites(&self) -> impl Iterator<Item = (&str, &SitePublicKey)> {
        self.sites.iter().map(|(s, k)| (s.as_str(), k))
    }
}

/// What a site admin vouches for about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertBody {
    pub version: u16,
    pub federation: String,
    pub site: String,
    /// `NodeId` bytes (the libp2p `PeerId` of the node's identity key).
    #[serde(with = "serde_bytes_vec")]
    pub node: Vec<u8>,
    /// The most capacity (and so free space) the node's announcements count for.
    pub capacity_max_bytes: u64,
    pub issued_ms: u64,
    pub expires_ms: u64,
}

impl NodeCertBody {
    pub fn node_id(&self) -> Result<NodeId, TrustError> {
        NodeId::from_bytes(self.node.clone()).map_err(|e| TrustError::Decode(e.to_string()))
    }
}

/// A signed node certificate. Decoding checks form only; [`NodeCert::verify`]
/// checks everything a member relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    body: NodeCertBody,
    body_bytes: Vec<u8>,
    signature: [u8; 64],
}

/// The certificate on the wire: the body bytes as signed, and the signature.
#[derive(Serialize, Deserialize)]
struct WireCert(
    #[serde(with = "serde_bytes_vec")] Vec<u8>,
    #[serde(with = "serde_bytes_vec")] Vec<u8>,
);

impl NodeCert {
    pub fn body(&self) -> &NodeCertBody {
        &self.body
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_cbor(&WireCert(self.body_bytes.clone(), self.signature.to_vec()))
    }

    /// Decodes untrusted bytes: size limit first, then CBOR, then the body
    /// and its version and field limits. The signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustError> {
        if bytes.len() > CERT_MAX_BYTES {
            return Err(TrustError::TooLarge {
                found: bytes.len(),
                limit: CERT_MAX_BYTES,
            });
        }
        let WireCert(body_bytes, sig) =
            ciborium::from_reader(bytes).map_err(|e| TrustError::Decode(e.to_string()))?;
        let signature: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| TrustError::Decode(format!("signature of {} bytes", sig.len())))?;
        let body: NodeCertBody = ciborium::from_reader(body_bytes.as_slice())
            .map_err(|e| TrustError::Decode(format!("body: {e}")))?;
        if body.version != CERT_VERSION {
            return Err(TrustError::Version {
                found: body.version,
                supported: CERT_VERSION,
            });
        }
        check_label("federation name", &body.federation)?;
        check_label("site label", &body.site)?;
        body.node_id()?;
        Ok(NodeCert {
            body,
            body_bytes,
            signature,
        })
    }

    /// Everything a member checks before it counts `peer` as admitted: the
    /// federation, the site's key and signature, that the certificate names
    /// `peer`, and the validity window at `now_ms`.
    pub fn verify(
        &self,
        federation: &Federation,
        peer: &NodeId,
        now_ms: u64,
    ) -> Result<Admitted, TrustError> {
        let b = &self.body;
        if b.federation != federation.name {
            return Err(TrustError::WrongFederation {
                expected: federation.name.clone(),
                found: b.federation.clone(),
            });
        }
        let key = federation
            .site_key(&b.site)
            .ok_or_else(|| TrustError::UnknownSite {
                site: b.site.clone(),
            })?;
        if !key.verify(&signing_input(&self.body_bytes), &self.signature) {
            return Err(TrustError::BadSignature {
                site: b.site.clone(),
            });
        }
        if b.node != peer.as_bytes() {
            return Err(TrustError::WrongNode {
                cert_node: b.node_id().map(|n| n.to_string()).unwrap_or_default(),
                peer: peer.to_string(),
            });
        }
        if now_ms < b.issued_ms {
            return Err(TrustError::NotYetValid {
                issued_ms: b.issued_ms,
                now_ms,
            });
        }
        if now_ms >= b.expires_ms {
            return Err(TrustError::Expired {
                expires_ms: b.expires_ms,
                now_ms,
            });
        }
        Ok(Admitted {
            site: b.site.clone(),
            capacity_max_bytes: b.capacity_max_bytes,
            expires_ms: b.expires_ms,
        })
    }
}

/// What a verified certificate grants its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The site label members use for the node, whatever it announces.
    pub site: String,
    pub capacity_max_bytes: u64,
    pub expires_ms: u64,
}

impl Admitted {
    /// Cuts announced per-container `(capacity, free)` pairs so that their
    /// sum stays within the ceiling, taking from the last containers first;
    /// free space never exceeds capacity after the cut.
    pub fn clamp(&self, containers: &mut [(u64, u64)]) {
        let mut left = self.capacity_max_bytes;
        for (capacity, free) in containers.iter_mut() {
            *capacity = (*capacity).min(left);
            *free = (*free).min(*capacity);
            left -= *capacity;
        }
    }
}

/// The largest encoded revocation a node accepts.
pub const REVOCATION_MAX_BYTES: usize = 16 << 10;
/// Most token identifiers one revocation names.
pub const MAX_REVOKED_PER_MESSAGE: usize = 64;
/// Most revocations a node keeps (and sends in one answer).
pub const MAX_REVOCATIONS: usize = 10_000;
/// Prefixed to a revocation body before signing.
pub const REVOCATION_SIGNING_CONTEXT: &[u8] = b"dynostore token revocation v1\0";

/// A site admin's statement that tokens are revoked: the hex revocation
/// identifiers of token blocks ([`crate::token::Token::revocation_ids`]).
/// Signed with the site's admin key, so any member verifies it offline and
/// nobody else can revoke in a site's name; a site may revoke any token
/// identifier (a revocation only ever takes rights away, and it is
/// attributable to the site that signed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    pub federation: String,
    pub site: String,
    pub ids: Vec<String>,
    pub issued_ms: u64,
}

/// A signed revocation; encoded as the CBOR pair `(body bytes, signature)`
/// like a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    body: RevocationBody,
    body_bytes: Vec<u8>,
    signature: [u8; 64],
}

/// An encoded revocation as a CBOR byte string (in control answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBytes(#[serde(with = "serde_bytes_vec")] pub Vec<u8>);

fn check_revoked_id(id: &str) -> Result<(), TrustError> {
    if id.len() < 16 || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TrustError::Revocation(format!(
            "identifier {:?} is not 16 to 256 hex digits",
            id.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

impl Revocation {
    /// Signs a revocation of `ids` by `site` of `federation`.
    pub fn sign(
        federation: &str,
        site: &str,
        key: &SiteKey,
        ids: Vec<String>,
        issued_ms: u64,
    ) -> Result<Self, TrustError> {
        let body = RevocationBody {
            federation: federation.into(),
            site: site.into(),
            ids,
            issued_ms,
        };
        Self::check_body(&body)?;
        let body_bytes = encode_cbor(&body);
        let mut input = REVOCATION_SIGNING_CONTEXT.to_vec();
        input.extend_from_slice(&body_bytes);
        let signature = key.0.sign(&input).to_bytes();
        Ok(Revocation {
            body,
            body_bytes,
            signature,
        })
    }

    fn check_body(b: &RevocationBody) -> Result<(), TrustError> {
        check_label("federation name", &b.federation)?;
        check_label("site label", &b.site)?;
        if b.ids.is_empty() || b.ids.len() > MAX_REVOKED_PER_MESSAGE {
            return Err(TrustError::Revocation(format!(
                "{} identifiers (1 to {MAX_REVOKED_PER_MESSAGE})",
                b.ids.len()
            )));
        }
        b.ids.iter().try_for_each(|id| check_revoked_id(id))
    }

    pub fn body(&self) -> &RevocationBody {
        &self.body
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_cbor(&WireCert(self.body_bytes.clone(), self.signature.to_vec()))
    }

    /// Decodes untrusted bytes (size first, then form); [`Revocation::verify`]
    /// checks the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustError> {
        if bytes.len() > REVOCATION_MAX_BYTES {
            return Err(TrustError::Revocation(format!(
                "{} bytes, more than the limit of {REVOCATION_MAX_BYTES}",
                bytes.len()
            )));
        }
        let WireCert(body_bytes, sig) =
            ciborium::from_reader(bytes).map_err(|e| TrustError::Revocation(e.to_string()))?;
        let signature: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| TrustError::Revocation(format!("signature of {} bytes", sig.len())))?;
        let body: RevocationBody = ciborium::from_reader(body_bytes.as_slice())
            .map_err(|e| TrustError::Revocation(format!("body: {e}")))?;
        Self::check_body(&body)?;
        Ok(Revocation {
            body,
            body_bytes,
            signature,
        })
    }

    /// The federation and the signing site's key.
    pub fn verify(&self, federation: &Federation) -> Result<&RevocationBody, TrustError> {
        let b = &self.body;
        if b.federation != federation.name {
            return Err(TrustError::Revocation(format!(
                "it is for federation {:?}, this node belongs to {:?}",
                b.federation, federation.name
            )));
        }
        let key = federation.site_key(&b.site).ok_or_else(|| {
            TrustError::Revocation(format!(
                "site {:?} is not a site of this federation",
                b.site
            ))
        })?;
        let mut input = REVOCATION_SIGNING_CONTEXT.to_vec();
        input.extend_from_slice(&self.body_bytes);
        if !key.verify(&input, &self.signature) {
            return Err(TrustError::Revocation(format!(
                "signature does not verify under site {:?}'s admin key",
                b.site
            )));
        }
        Ok(b)
    }
}

fn signing_input(body_bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CERT_SIGNING_CONTEXT.len() + body_bytes.len());
    v.extend_from_slice(CERT_SIGNING_CONTEXT);
    v.extend_from_slice(body_bytes);
    v
}

fn encode_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

/// An optional byte string as a CBOR byte string (for the certificate in
/// an announcement).
pub(crate) mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&ciborium::Value::Bytes(b.clone())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<ciborium::Value>::deserialize(d)? {
            None => Ok(None),
            Some(ciborium::Value::Bytes(b)) => Ok(Some(b)),
            Some(_) => Err(serde::de::Error::custom("expected a byte string")),
        }
    }
}

/// Byte strings as CBOR byte strings (not arrays of integers).
pub(crate) mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let v = ciborium::Value::deserialize(d)?;
        match v {
            ciborium::Value::Bytes(b) => Ok(b),
            _ => Err(serde::de::Error::custom("expected a byte string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_verifies_only_under_its_sites_key() {
        let a = SiteKey::from_seed([1; 32]);
        let b = SiteKey::from_seed([2; 32]);
        let mut f = Federation::new("eu").unwrap();
        f.add_site("a", a.public()).unwrap();
        f.add_site("b", b.public()).unwrap();
        let id = "ab".repeat(64);
        let r = Revocation::sign("eu", "a", &a, vec![id.clone()], 5).unwrap();
        let back = Revocation::decode(&r.encode()).unwrap();
        assert_eq!(back.verify(&f).unwrap().ids, vec![id.clone()]);
        // Signed by b's key in a's name.
        let forged = Revocation::sign("eu", "a", &b, vec![id.clone()], 5).unwrap();
        assert!(Revocation::decode(&forged.encode())
            .unwrap()
            .verify(&f)
            .is_err());
        // Another federation.
        let other = Revocation::sign("us", "a", &a, vec![id], 5).unwrap();
        assert!(other.verify(&f).is_err());
        // Malformed identifiers and garbage never decode.
        assert!(Revocation::sign("eu", "a", &a, vec!["zz".into()], 5).is_err());
        assert!(Revocation::decode(&[0xff; 40]).is_err());
    }

    fn node(n: u8) -> NodeId {
        // An identity-multihash-shaped byte string, as PeerId bytes are.
        let mut v = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        v.extend([n; 32]);
        NodeId::from_bytes(v).unwrap()
    }

    fn body(site: &str, n: u8) -> NodeCertBody {
        NodeCertBody {
            version: CERT_VERSION,
            federation: "eu-research".into(),
            site: site.into(),
            node: node(n).as_bytes().to_vec(),
            capacity_max_bytes: 10 << 30,
            issued_ms: 1_000,
            expires_ms: 2_000,
        }
    }

    fn federation() -> (Federation, SiteKey, SiteKey) {
        let a = SiteKey::from_seed([1; 32]);
        let b = SiteKey::from_seed([2; 32]);
        let mut f = Federation::new("eu-research").unwrap();
        f.add_site("hospital-a", a.public()).unwrap();
        f.add_site("observatory", b.public()).unwrap();
        (f, a, b)
    }

    #[test]
    fn a_certificate_round_trips_and_verifies() {
        let (f, a, _) = federation();
        let cert = a.issue(&body("hospital-a", 7));
        let back = NodeCert::decode(&cert.encode()).unwrap();
        assert_eq!(back, cert);
        let adm = back.verify(&f, &node(7), 1_500).unwrap();
        assert_eq!(adm.site, "hospital-a");
        assert_eq!(adm.capacity_max_bytes, 10 << 30);
    }

    #[test]
    fn each_check_names_its_failure() {
        let (f, a, b) = federation();
        let enc = |k: &SiteKey, bd: NodeCertBody| NodeCert::decode(&k.issue(&bd).encode()).unwrap();
        // Another site's admin signs a certificate claiming hospital-a.
        let forged = enc(&b, body("hospital-a", 7));
        assert_eq!(
            forged.verify(&f, &node(7), 1_500),
            Err(TrustError::BadSignature {
                site: "hospital-a".into()
            })
        );
        let unknown = enc(&a, body("elsewhere", 7));
        assert!(matches!(
            unknown.verify(&f, &node(7), 1_500),
            Err(TrustError::UnknownSite { .. })
        ));
        let mut other_fed = body("hospital-a", 7);
        other_fed.federation = "us-research".into();
        assert!(matches!(
            enc(&a, other_fed).verify(&f, &node(7), 1_500),
            Err(TrustError::WrongFederation { .. })
        ));
        let good = enc(&a, body("hospital-a", 7));
        assert!(matches!(
            good.verify(&f, &node(8), 1_500),
            Err(TrustError::WrongNode { .. })
        ));
        assert!(matches!(
            good.verify(&f, &node(7), 2_000),
            Err(TrustError::Expired { .. })
        ));
        assert!(matches!(
            good.verify(&f, &node(7), 999),
            Err(TrustError::NotYetValid { .. })
        ));
        let mut old = body("hospital-a", 7);
        old.version = 9;
        assert!(matches!(
            NodeCert::decode(&a.issue(&old).encode()),
            Err(TrustError::Version { found: 9, .. })
        ));
    }

    #[test]
    fn the_ceiling_cuts_capacity_and_free_space() {
        let adm = Admitted {
            site: "s".into(),
            capacity_max_bytes: 100,
            expires_ms: 0,
        };
        let mut c = vec![(60, 50), (80, 80), (10, 0)];
        adm.clamp(&mut c);
        assert_eq!(c, vec![(60, 50), (40, 40), (0, 0)]);
        let total: u64 = c.iter().map(|x| x.0).sum();
        assert!(total <= 100);
    }

    #[test]
    fn public_keys_parse_and_refuse() {
        let k = SiteKey::from_seed([3; 32]).public();
        assert_eq!(k.to_string().parse::<SitePublicKey>().unwrap(), k);
        for bad in ["", "ed25519:", "ed25519:0OIl", "x25519:abc", "ed25519:2222"] {
            assert!(bad.parse::<SitePublicKey>().is_err(), "{bad:?}");
        }
        // The identity point is a weak key: refused.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        let s = format!("ed25519:{}", bs58::encode(ident).into_string());
        assert!(s.parse::<SitePublicKey>().is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("site label", "hospital-a.eu_1").is_ok());
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(check_label("site label", bad).is_err(), "{bad:?}");
        }
        let mut f = Federation::new("f").unwrap();
        let k = SiteKey::from_seed([4; 32]).public();
        f.add_site("a", k).unwrap();
        assert_eq!(
            f.add_site("a", k),
            Err(TrustError::DuplicateSite { site: "a".into() })
        );
    }
}
