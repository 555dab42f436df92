//! Node admission by certificate: the IO side of `protocol::trust`.
//!
//! A node in a federation that admits by certificate has two files named in
//! its config: `federation` (the federation's name and each site's admin
//! public key, [`load_federation`]) and `cert` (its own certificate, signed
//! by its site's admin key). At start the node checks its own certificate
//! against the federation and its identity, and refuses to start with a
//! certificate that would not admit it anywhere.
//!
//! Then [`Admission`]:
//! - puts the certificate into every announcement the node sends;
//! - checks the certificate of every announcement it receives (signature
//!   under the named site's key, the federation, that it names the node
//!   gossipsub says signed the announcement, its validity window against
//!   the wall clock). A refused announcement never reaches the membership
//!   view, so an unadmitted node is never placed on, never asked to
//!   repair, and never counted;
//! - rewrites an admitted announcement's site label to the certificate's
//!   and cuts its capacity and free space to the certificate's ceiling;
//! - remembers which peers are admitted (until their certificate expires),
//!   so that node-only requests from anyone else are refused.
//!
//! The site admin key file ([`write_site_key`]) and the certificate file are
//! written with mode 0600 / 0644; neither is ever needed on a command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dynostore_protocol::token::{Op, Principal, Token};
use dynostore_protocol::trust::{
    Admitted, Federation, NodeCert, Revocation, RevocationBytes, SiteKey, TrustError,
    MAX_REVOCATIONS,
};
use dynostore_protocol::wire::Announcement;
use dynostore_protocol::NodeId;
use serde::Deserialize;

use crate::manifests::wall_ms;

/// Problems with trust files and admission.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Trust { path: PathBuf, source: TrustError },
    #[error("this node's own certificate {path} would not admit it: {source}")]
    OwnCert { path: PathBuf, source: TrustError },
}

/// The federation file: `name = "..."` and a `[sites]` table of
/// `label = "ed25519:..."`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FederationFile {
    name: String,
    sites: std::collections::BTreeMap<String, String>,
}

/// Reads and checks a federation file.
pub fn load_federation(path: &Path) -> Result<Federation, AdmissionError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdmissionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: FederationFile = toml::from_str(&text).map_err(|e| AdmissionError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let trust = |source| AdmissionError::Trust {
        path: path.to_path_buf(),
        source,
    };
    let mut fed = Federation::new(&file.name).map_err(trust)?;
    for (site, key) in &file.sites {
        fed.add_site(site, key.parse().map_err(trust)?)
            .map_err(trust)?;
    }
    if file.sites.is_empty() {
        return Err(AdmissionError::Format {
            path: path.to_path_buf(),
            reason: "[sites] lists no site".into(),
        });
    }
    Ok(fed)
}

/// Reads a certificate file.
pub fn load_cert(path: &Path) -> Result<NodeCert, AdmissionError> {
    let bytes = std::fs::read(path).map_err(|source| AdmissionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    NodeCert::decode(&bytes).map_err(|source| AdmissionError::Trust {
        path: path.to_path_buf(),
        source,
    })
}

const SITE_KEY_HEADER: &str = "dynostore site admin key v1";

/// A new site admin key from the operating system's CSPRNG.
pub fn new_site_key() -> SiteKey {
    SiteKey::from_seed(fresh_seed())
}

/// 32 bytes from the operating system's CSPRNG (key material of new token
/// blocks; `protocol` draws no randomness itself).
pub fn fresh_seed() -> [u8; 32] {
    rand::random()
}

/// Writes a site admin key (mode 0600, refusing to overwrite).
pub fn write_site_key(path: &Path, site: &str, key: &SiteKey) -> Result<(), AdmissionError> {
    let hex: String = key.seed().iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("{SITE_KEY_HEADER}\nsite = {site}\nsecret = {hex}\n");
    Ok(crate::keys::write_secret(path, text.as_bytes())?)
}

/// Reads a site admin key: its site label and the key.
pub fn load_site_key(path: &Path) -> Result<(String, SiteKey), AdmissionError> {
    let bad = |reason: &str| AdmissionError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|source| AdmissionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines();
    if lines.next() != Some(SITE_KEY_HEADER) {
        return Err(bad("not a site admin key (made by `dynostore site init`)"));
    }
    let mut site = None;
    let mut secret = None;
    for line in lines {
        match line.split_once(" = ") {
            Some(("site", v)) => site = Some(v.to_string()),
            Some(("secret", v)) => secret = Some(v.to_string()),
            _ if line.trim().is_empty() => {}
            _ => return Err(bad("unexpected line")),
        }
    }
    let site = site.ok_or_else(|| bad("no `site` line"))?;
    let hex = secret.ok_or_else(|| bad("no `secret` line"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("`secret` is not 64 hex digits"));
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad("bad hex"))?;
    }
    Ok((site, SiteKey::from_seed(seed)))
}

/// A node's admission state: the federation, its own certificate, and the
/// peers it has admitted.
#[derive(Debug)]
pub struct Admission {
    federation: Federation,
    own: NodeCert,
    own_bytes: Vec<u8>,
    admitted: Mutex<HashMap<NodeId, Admitted>>,
    pub revocations: Revocations,
}

impl Admission {
    /// Loads both files and checks the node's own certificate; the kept
    /// revocations come from `revocations` (created on the first one).
    pub fn load(
        federation: &Path,
        cert: &Path,
        revocations: &Path,
        local: &NodeId,
    ) -> Result<Self, AdmissionError> {
        let federation = load_federation(federation)?;
        let revocations = Revocations::load(revocations, &federation)?;
        let own = load_cert(cert)?;
        own.verify(&federation, local, wall_ms())
            .map_err(|source| AdmissionError::OwnCert {
                path: cert.to_path_buf(),
                source,
            })?;
        let own_bytes = own.encode();
        Ok(Admission {
            federation,
            own,
            own_bytes,
            admitted: Mutex::new(HashMap::new()),
            revocations,
        })
    }

    /// The federation (sites and their public keys): tokens verify against it.
    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    /// The site label this node's certificate gives it.
    pub fn own_site(&self) -> &str {
        &self.own.body().site
    }

    pub fn own_cert_bytes(&self) -> Vec<u8> {
        self.own_bytes.clone()
    }

    /// Checks an announcement signed by `source` and, when its certificate
    /// admits it, rewrites its site and cuts its capacity to the ceiling.
    pub fn admit(&self, ann: &mut Announcement, source: &NodeId) -> Result<(), TrustError> {
        let bytes = ann.cert.as_deref().ok_or(TrustError::Decode(
            "the announcement carries no certificate".into(),
        ))?;
        let cert = NodeCert::decode(bytes)?;
        let admitted = cert.verify(&self.federation, source, wall_ms())?;
        ann.site.clone_from(&admitted.site);
        let mut pairs: Vec<(u64, u64)> = ann
            .containers
            .iter()
            .map(|c| (c.capacity_bytes, c.free_bytes))
            .collect();
        admitted.clamp(&mut pairs);
        for (c, (cap, free)) in ann.containers.iter_mut().zip(pairs) {
            c.capacity_bytes = cap;
            c.free_bytes = free;
        }
        self.lock().insert(source.clone(), admitted);
        Ok(())
    }

    /// Whether `peer` presented a certificate that is still valid.
    pub fn is_admitted(&self, peer: &NodeId) -> bool {
        let now = wall_ms();
        self.lock().get(peer).is_some_and(|a| now < a.expires_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Admitted>> {
        // Every update is one insert: a poisoned map is still consistent.
        self.admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a request's credentials were refused (answered as `Forbidden`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("this federation requires a user token (pass --token FILE or set DYNOSTORE_TOKEN)")]
    NoToken,
    #[error(transparent)]
    Token(#[from] dynostore_protocol::token::TokenError),
    #[error(
        "operator requests need an admin token of this node's site {site:?} (this one is from {found:?})"
    )]
    OtherSite { site: String, found: String },
    #[error("operator requests to this node need an admin token")]
    NotOperator,
    #[error("revocation refused: {0}")]
    Revocation(TrustError),
    #[error("cannot keep revocations in {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this node knows {limit} revocations, its limit; ask an operator")]
    RevocationsFull { limit: usize },
}

impl Admission {
    /// Decodes a client's token against the federation's site keys and
    /// refuses a revoked one, before any work on the request.
    pub fn user_token(&self, token: Option<&[u8]>) -> Result<Token, AccessError> {
        let bytes = token.ok_or(AccessError::NoToken)?;
        let t = Token::decode(bytes, &self.federation)?;
        if let Some(id) = t
            .revocation_ids()
            .into_iter()
            .find(|id| self.revocations.is_revoked(id))
        {
            return Err(dynostore_protocol::token::TokenError::Revoked { id }.into());
        }
        Ok(t)
    }

    /// Whether `token` allows `op` on an object named `resource` (`""`
    /// when unnamed) that `owner` stored, now, given the revocations.
    pub fn authorize(
        &self,
        token: &Token,
        op: Op,
        resource: &str,
        owner: Option<&str>,
    ) -> Result<Principal, AccessError> {
        let owner: Option<Principal> = owner.and_then(|o| o.parse().ok());
        Ok(
            token.authorize_object(op, resource, owner.as_ref(), wall_ms() / 1000, |id| {
                self.revocations.is_revoked(id)
            })?,
        )
    }

    /// An operator's token: `admin` over every name, from this node's own
    /// site (a site's admin runs its own nodes, not another site's).
    pub fn operator(&self, token: &[u8]) -> Result<Principal, AccessError> {
        let t = self.user_token(Some(token))?;
        let p = self.authorize(&t, Op::Admin, "", None)?;
        if p.site != self.own_site() {
            return Err(AccessError::OtherSite {
                site: self.own_site().to_string(),
                found: p.site,
            });
        }
        Ok(p)
    }

    /// Verifies and keeps a site's signed revocation; returns how many
    /// identifiers were new.
    pub fn revoke(&self, bytes: &[u8]) -> Result<usize, AccessError> {
        let r = Revocation::decode(bytes).map_err(AccessError::Revocation)?;
        r.verify(&self.federation)
            .map_err(AccessError::Revocation)?;
        self.revocations.add(&r)
    }
}

/// The revocations a node knows: every identifier any verified site
/// revocation named, kept in `DIR/revocations.cbor` (rewritten whole,
/// fsynced and renamed into place on every change, so a crash leaves the
/// old list or the new one), and a digest announced to members so that a
/// member that knows a different set pulls it ([`Revocations::digest`]).
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    state: Mutex<RevocationState>,
}

#[derive(Debug, Default)]
struct RevocationState {
    /// Encoded revocations by their BLAKE3 (what is stored and sent).
    messages: std::collections::BTreeMap<[u8; 32], Vec<u8>>,
    /// Every identifier they name.
    ids: std::collections::HashSet<String>,
}

impl Revocations {
    /// Loads `path` if it exists. Each kept revocation is verified again;
    /// one that no longer verifies (its site left the federation file) is
    /// still honoured, and reported: dropping a revocation silently would
    /// give rights back.
    pub fn load(path: &Path, federation: &Federation) -> Result<Self, AdmissionError> {
        let mut state = RevocationState::default();
        match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<RevocationBytes> =
                    ciborium::from_reader(bytes.as_slice()).map_err(|e| {
                        AdmissionError::Format {
                            path: path.to_path_buf(),
                            reason: e.to_string(),
                        }
                    })?;
                for RevocationBytes(b) in list {
                    let r = Revocation::decode(&b).map_err(|source| AdmissionError::Trust {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    if let Err(e) = r.verify(federation) {
                        tracing::warn!(error = %e, "a kept revocation no longer verifies; still honoured");
                    }
                    state.ids.extend(r.body().ids.iter().cloned());
                    state.messages.insert(*blake3::hash(&b).as_bytes(), b);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AdmissionError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(Revocations {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RevocationState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.lock().ids.contains(id)
    }

    /// 0 when empty, else a digest of the set of revocations.
    pub fn digest(&self) -> u64 {
        let st = self.lock();
        if st.messages.is_empty() {
            return 0;
        }
        let mut h = blake3::Hasher::new();
        for k in st.messages.keys() {
            h.update(k);
        }
        let b = h.finalize();
        u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8])).max(1)
    }

    /// Every kept revocation, encoded.
    pub fn all(&self) -> Vec<RevocationBytes> {
        self.lock()
            .messages
            .values()
            .map(|b| RevocationBytes(b.clone()))
            .collect()
    }

    /// Keeps a verified revocation durably before it counts.
    fn add(&self, r: &Revocation) -> Result<usize, AccessError> {
        let bytes = r.encode();
        let key = *blake3::hash(&bytes).as_bytes();
        let mut st = self.lock();
        if st.messages.contains_key(&key) {
            return Ok(0);
        }
        if st.messages.len() >= MAX_REVOCATIONS {
            return Err(AccessError::RevocationsFull {
                limit: MAX_REVOCATIONS,
            });
        }
        let mut list: Vec<RevocationBytes> = st
            .messages
            .values()
            .map(|b| RevocationBytes(b.clone()))
            .collect();
        list.push(RevocationBytes(bytes.clone()));
        let mut out = Vec::new();
        ciborium::into_writer(&list, &mut out).map_err(|e| AccessError::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        write_durably(&self.path, &out).map_err(|source| AccessError::Store {
            path: self.path.clone(),
            source,
        })?;
        let before = st.ids.len();
        st.ids.extend(r.body().ids.iter().cloned());
        st.messages.insert(key, bytes);
        Ok(st.ids.len() - before)
    }
}

/// Writes `path` so that a crash leaves either its old or its new content.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
