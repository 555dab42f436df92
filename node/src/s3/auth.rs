//! S3 keys from user tokens, with no central key service.
//!
//! `dynostore s3 keys --token FILE` sends the token to any node
//! ([`register`]), which verifies it against the federation and stores it
//! as a name record in the reserved namespace [`KEYS_NS`] under its access
//! key ID (replicated like every name record), and answers the key pair:
//!
//! - access key ID: `DS` + the first 9 bytes of BLAKE3 of the token, in
//!   upper-case hex (20 characters, like AWS's);
//! - secret: BLAKE3 keyed by a key every admitted node derives from the
//!   network key ([`crate::keys::NetworkKey::s3_secret_base`]), over the
//!   token, in URL-safe base64 (40 characters).
//!
//! Any node can then recompute the secret from the registered token, so
//! SigV4 checks work on every node; the access key ID (which clients
//! print and send in clear) reveals neither the token nor the secret.
//! Requests carry exactly the token's rights: each one is authorized with
//! `Token::authorize` on the resource `BUCKET/KEY` (bucket operations on
//! `BUCKET/`), at the node's clock, so the token's expiry holds too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use dynostore_protocol::names::{NameEntry, NameRecord, NameVersion};
use dynostore_protocol::token::{Op, Token};
use dynostore_protocol::trust::Federation;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use crate::shared::Shared;

/// The namespace of S3 key registrations.
pub const KEYS_NS: &str = ".s3keys";
/// Registrations kept decoded in memory. An access key ID is a hash of
/// its token and a registration is never rewritten or removed, so the
/// cache is never stale; it is emptied when full. Revocation and expiry
/// are checked per request, not cached.
const CACHE_MAX: usize = 4096;

/// Whether a token's revocation ID is revoked, by the node's kept and
/// gossiped revocations (none without a federation).
pub(crate) fn token_revoked(shared: &Shared, id: &str) -> bool {
    shared
        .admission
        .as_ref()
        .is_some_and(|a| a.revocations.is_revoked(id))
}

/// The access key ID of a token.
pub fn access_key_id(token: &[u8]) -> String {
    let h = blake3::hash(token);
    let hex: String = h.as_bytes()[..9]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("DS{hex}")
}

/// The secret of a token, from the nodes' shared base key.
pub fn secret_for(base: &[u8; 32], token: &[u8]) -> String {
    let mac = blake3::keyed_hash(base, token);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.as_bytes()[..30])
}

/// The user a request's token names (put in the request's extensions by
/// the access check, read by the operations for the owner field).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// Registered tokens, looked up by access key ID (cheap to clone).
#[derive(Clone)]
pub struct Keys {
    shared: Arc<Shared>,
    cache: Arc<Mutex<HashMap<String, Registered>>>,
}

/// A registration, decoded: the token and the secret derived from it.
#[derive(Clone)]
struct Registered {
    token: Arc<Token>,
    secret: Option<Arc<str>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Keys {
            shared,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn federation(&self) -> S3Result<&Federation> {
        self.shared
            .admission
            .as_ref()
            .map(|a| a.federation())
            .ok_or_else(|| s3_error!(NotImplemented, "this node has no federation: no S3 keys"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registration of `access_key`: from the cache, or read from the
    /// key's name replicas and verified against the federation (once per
    /// key: every S3 request needs it twice, for its signature and for its
    /// rights, and the read costs a quorum of name requests).
    async fn registered(&self, access_key: &str) -> S3Result<Registered> {
        if let Some(r) = self.lock().get(access_key) {
            return Ok(r.clone());
        }
        if access_key.len() > 64 || !access_key.starts_with("DS") {
            return Err(s3_error!(InvalidAccessKeyId));
        }
        let rec = crate::names::get(&self.shared, KEYS_NS, access_key)
            .await
            .map_err(|e| s3_error!(ServiceUnavailable, "{e}"))?;
        let bytes = rec
            .and_then(|r| r.entry)
            .and_then(|e| e.blob)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        let token = Token::decode(&bytes, self.federation()?)
            .map_err(|e| s3_error!(InvalidAccessKeyId, "the registered token: {e}"))?;
        let r = Registered {
            token: Arc::new(token),
            secret: self
                .shared
                .s3_secret_base
                .map(|base| secret_for(&base, &bytes).into()),
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(access_key.to_string(), r.clone());
        Ok(r)
    }

    /// The token of `access_key` (cached).
    pub async fn token(&self, access_key: &str) -> S3Result<Arc<Token>> {
        Ok(self.registered(access_key).await?.token)
    }

    /// Authorizes `op` on `resource` for the request's key; returns the user.
    pub async fn authorize(
        &self,
        access_key: Option<&str>,
        op: Op,
        resource: &str,
    ) -> S3Result<String> {
        let Some(access_key) = access_key else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        let token = self.token(access_key).await?;
        token
            .authorize(op, resource, now_secs(), |id| {
                token_revoked(&self.shared, id)
            })
            .map_err(|e| s3_error!(AccessDenied, "{e}"))
    }
}

fn now_secs() -> u64 {
    crate::manifests::wall_ms() / 1000
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let secret =
            self.registered(access_key).await?.secret.ok_or_else(|| {
                s3_error!(NotImplemented, "this node has no network key: no S3 keys")
            })?;
        Ok(SecretKey::from(secret.to_string()))
    }
}

/// The token operation and resource of an S3 operation on a path. `None`:
/// the operation checks per key itself (DeleteObjects, CopyObject's
/// source) or is not bound to a bucket (ListBuckets).
fn op_of(name: &str, bucket: Option<&str>, key: Option<&str>) -> Option<(Op, String)> {
    let resource = match (bucket, key) {
        (Some(b), Some(k)) => format!("{b}/{k}"),
        (Some(b), None) => format!("{b}/"),
        _ => return None,
    };
    let op = match name {
        "GetObject"
        | "HeadObject"
        | "GetObjectAttributes"
        | "HeadBucket"
        | "GetBucketLocation"
        | "GetObjectTagging"
        | "GetBucketVersioning" => Op::Get,
        "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "ListMultipartUploads"
        | "ListParts" => Op::Ls,
        "PutObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "CreateBucket"
        | "CopyObject"
        | "UploadPartCopy" => Op::Put,
        "DeleteObject" | "DeleteBucket" | "AbortMultipartUpload" => Op::Rm,
        "DeleteObjects" => return None,
        _ => Op::Admin,
    };
    Some((op, resource))
}

/// The longest a presigned URL may be valid (S3's limit): a URL is a
/// bearer credential that anyone who sees it can use, and it cannot be
/// revoked apart from its token.
const MAX_PRESIGNED_SECS: u64 = 7 * 24 * 3600;

/// How long a presigned request's URL is valid from `now` (seconds since
/// the epoch): SigV4's `X-Amz-Expires`, or SigV2's absolute `Expires`.
fn presigned_lifetime_secs(query: Option<&str>, now: u64) -> Option<u64> {
    let param = |name: &str| -> Option<u64> {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    param("X-Amz-Expires").or_else(|| param("Expires").map(|at| at.saturating_sub(now)))
}

#[async_trait::async_trait]
impl S3Access for Keys {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let access_key = cx.credentials().map(|c| c.access_key.clone());
        let Some(access_key) = access_key else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        if presigned_lifetime_secs(cx.uri().query(), now_secs())
            .is_some_and(|e| e > MAX_PRESIGNED_SECS)
        {
            return Err(s3_error!(
                AccessDenied,
                "a presigned URL may be valid for at most {MAX_PRESIGNED_SECS} seconds (seven days)"
            ));
        }
        let name = cx.s3_op().name().to_string();
        let path = cx.s3_path();
        let bucket = path.get_bucket_name().map(str::to_string);
        let key = path.get_object_key().map(str::to_string);
        let user = match op_of(&name, bucket.as_deref(), key.as_deref()) {
            Some((op, resource)) => self.authorize(Some(&access_key), op, &resource).await?,
            // The operation authorizes per key or per bucket itself.
            None => {
                self.token(&access_key).await?;
                String::new()
            }
        };
        cx.extensions_mut().insert(User(user));
        Ok(())
    }
}

/// Registers `token` (verified against the federation) and returns the
/// key pair. For the client protocol's `S3Keys` request.
pub(crate) async fn register(
    shared: &Arc<Shared>,
    token: &[u8],
) -> Result<(String, String), String> {
    let base = shared
        .s3_secret_base
        .ok_or("this node has no network key, so it cannot derive S3 secrets")?;
    let federation = shared
        .admission
        .as_ref()
        .map(|a| a.federation())
        .ok_or("this node has no federation, so it cannot verify tokens")?;
    let t = Token::decode(token, federation).map_err(|e| e.to_string())?;
    // Expired or revoked tokens are not registered (a denial only means
    // the token does not cover the empty name).
    let user = match t.authorize(Op::Get, "", now_secs(), |id| token_revoked(shared, id)) {
        Ok(u) => u,
        Err(dynostore_protocol::token::TokenError::Denied { .. }) => String::new(),
        Err(e) => return Err(e.to_string()),
    };
    let access = access_key_id(token);
    let existing = crate::names::get(shared, KEYS_NS, &access)
        .await
        .map_err(|e| e.to_string())?;
    if existing.as_ref().is_none_or(|r| r.is_tombstone()) {
        let record = NameRecord {
            ns: KEYS_NS.into(),
            key: access.clone(),
            version: NameVersion::next(
                crate::manifests::wall_ms(),
                shared.local.clone(),
                existing.as_ref().map(|r| &r.version),
            ),
            entry: Some(NameEntry {
                owner: (!user.is_empty()).then_some(user),
                blob: Some(token.to_vec()),
                ..NameEntry::default()
            }),
        };
        crate::names::put(shared, vec![record])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((access, secret_for(&base, token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_like_aws_keys_and_depend_on_the_base() {
        let a = access_key_id(b"token one");
        assert_eq!(a.len(), 20);
        assert_ne!(a, access_key_id(b"token two"));
        let s1 = secret_for(&[1; 32], b"token one");
        let s2 = secret_for(&[2; 32], b"token one");
        assert_eq!(s1.len(), 40);
        assert_ne!(s1, s2);
        assert!(!s1.contains(&a));
    }

    #[test]
    fn presigned_lifetimes_are_read_from_the_query() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=604801&X-Amz-Signature=ab";
        assert_eq!(presigned_lifetime_secs(Some(q), 5), Some(604_801));
        let v4 = Some("X-Amz-Expires=3600");
        assert_eq!(presigned_lifetime_secs(v4, 5), Some(3600));
        // SigV2: an absolute time.
        let v2 = "AWSAccessKeyId=A&Signature=x&Expires=1000";
        assert_eq!(presigned_lifetime_secs(Some(v2), 400), Some(600));
        assert_eq!(presigned_lifetime_secs(Some(v2), 2000), Some(0));
        assert_eq!(presigned_lifetime_secs(Some("list-type=2"), 5), None);
        assert_eq!(presigned_lifetime_secs(Some("X-Amz-Expiresx=9"), 5), None);
        assert_eq!(presigned_lifetime_secs(None, 5), None);
    }

    #[test]
    fn operations_map_to_token_rights() {
        assert_eq!(
            op_of("GetObject", Some("b"), Some("k")),
            Some((Op::Get, "b/k".into()))
        );
        assert_eq!(
            op_of("ListObjectsV2", Some("b"), None),
            Some((Op::Ls, "b/".into()))
        );
        assert_eq!(
            op_of("DeleteObject", Some("b"), Some("k")),
            Some((Op::Rm, "b/k".into()))
        );
        assert_eq!(op_of("ListBuckets", None, None), None);
        assert_eq!(
            op_of("PutBucketPolicy", Some("b"), None).map(|x| x.0),
            Some(Op::Admin)
        );
    }
}
