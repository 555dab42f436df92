//! User tokens: what a site admin lets one user do, verifiable offline by
//! any node, attenuable offline by the holder.
//!
//! Tokens are biscuits (`biscuit-auth` 6): a chain of signed blocks whose
//! first (authority) block a site admin signs with the site's admin key
//! (the same key that signs its nodes' certificates, so every member
//! already holds the public keys that verify tokens). Why biscuit rather
//! than our own ed25519-over-CBOR: attenuation by a holder who does not
//! hold the issuer's key, with each added block only able to restrict
//! what the chain allows, is exactly what biscuit's key chaining and
//! Datalog checks do, and getting that chaining right by hand is the kind
//! of cryptographic code a well-kept crate should own. The cost is a
//! heavier dependency (Datalog parser and protobuf), paid once.
//!
//! The authority block says:
//! ```text
//! user("alice"); site("hospital-a");
//! right("get"); right("put"); ...          // the operations allowed
//! prefix("imaging/"); ...                  // the names covered ("" = all)
//! check if time($t), $t < 2027-01-01T00:00:00Z;
//! ```
//! A node authorizes one request with the facts `operation(op)`,
//! `resource(name)` and `time(now)` and the single policy
//! `allow if operation($op), right($op), resource($r), prefix($p), $r.starts_with($p)`.
//! Rules and facts of attenuation blocks are not trusted by that policy
//! (biscuit scopes the authorizer to the authority block), so a holder can
//! only add checks: [`attenuate`] adds `check if operation($op), [..].contains($op)`,
//! `check if resource($r), $r.starts_with(..)` and an earlier expiry.
//!
//! Revocation: every block has a revocation identifier; revoking the
//! authority block's identifier revokes the token and every attenuation of
//! it, revoking a later block's revokes that attenuation and its
//! descendants. The caller says which identifiers are revoked.
//!
//! Time (`now_secs`) and the key material of new blocks (`next_seed`) are
//! arguments; biscuit's own run-time limit on Datalog evaluation is a bound
//! on work, not an input to any decision that matters here.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use biscuit_auth::builder::{Algorithm, Term};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
};

use crate::trust::{check_label, Federation, SiteKey, SitePublicKey};

/// The largest encoded token a node accepts.
pub const TOKEN_MAX_BYTES: usize = 16 << 10;
/// The most attenuation blocks a token may carry.
pub const TOKEN_MAX_BLOCKS: usize = 16;
/// The longest name prefix a token may name.
pub const PREFIX_MAX_LEN: usize = 1024;

/// What a token can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Put,
    Get,
    Ls,
    Rm,
    Admin,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Put, Op::Get, Op::Ls, Op::Rm, Op::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Ls => "ls",
            Op::Rm => "rm",
            Op::Admin => "admin",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        Op::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                TokenError::Invalid(format!("unknown operation {s:?} (put, get, ls, rm, admin)"))
            })
    }
}

/// Errors of issuing, decoding and authorizing tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token is {found} bytes, more than the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("token has {found} blocks, more than the limit of {limit}")]
    TooManyBlocks { found: usize, limit: usize },
    #[error("token is not valid: {0}")]
    Invalid(String),
    #[error("token is not signed by any site of this federation")]
    UnknownIssuer,
    #[error("token {id} has been revoked")]
    Revoked { id: String },
    #[error("token does not allow {op} on {resource:?}: {reason}")]
    Denied {
        op: Op,
        resource: String,
        reason: String,
    },
}

fn invalid(e: impl fmt::Display) -> TokenError {
    TokenError::Invalid(e.to_string())
}

/// What a site admin grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    pub ops: BTreeSet<Op>,
    /// Name prefixes covered; `""` covers every name.
    pub prefixes: Vec<String>,
    /// Unix seconds after which the token is refused.
    pub expires_secs: u64,
}

/// The restrictions a holder adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restriction {
    /// Only these operations (`None`: unchanged).
    pub ops: Option<BTreeSet<Op>>,
    /// Only names with this prefix.
    pub prefix: Option<String>,
    /// An earlier expiry, Unix seconds.
    pub expires_secs: Option<u64>,
}

/// The biscuit root key ID of a site key: 32 bits of its BLAKE3, so a node
/// picks the right site's key without trying each.
fn key_id(key: &SitePublicKey) -> u32 {
    let h = blake3::derive_key("dynostore token root key id v1", &key.to_bytes());
    u32::from_le_bytes([h[0], h[1], h[2], h[3]])
}

fn keypair(seed: [u8; 32]) -> Result<KeyPair, TokenError> {
    Ok(KeyPair::from(
        &PrivateKey::from_bytes(&seed, Algorithm::Ed25519).map_err(invalid)?,
    ))
}

fn check_prefix(p: &str) -> Result<(), TokenError> {
    if p.len() > PREFIX_MAX_LEN || p.chars().any(char::is_control) {
        return Err(TokenError::Invalid(format!(
            "prefix {:?}: at most {PREFIX_MAX_LEN} bytes of printable text",
            p.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

fn params(pairs: Vec<(&str, Term)>) -> HashMap<String, Term> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Issues a token for `grant`, signed by `site`'s admin key. `next_seed`
/// is fresh randomness for the token's chaining key.
pub fn issue(
    site: &str,
    key: &SiteKey,
    grant: &Grant,
    next_seed: [u8; 32],
) -> Result<Token, TokenError> {
    check_label("site label", site).map_err(invalid)?;
    check_label("user", &grant.user).map_err(invalid)?;
    if grant.ops.is_empty() || grant.prefixes.is_empty() {
        return Err(TokenError::Invalid(
            "a token needs at least one operation and one prefix".into(),
        ));
    }
    let mut b = Biscuit::builder()
        .root_key_id(key_id(&key.public()))
        .code_with_params(
            "user({user}); site({site}); check if time($t), $t < {expires};",
            params(vec![
                ("user", Term::Str(grant.user.clone())),
                ("site", Term::Str(site.to_string())),
                ("expires", Term::Date(grant.expires_secs)),
            ]),
            HashMap::new(),
        )
        .map_err(invalid)?;
    for op in &grant.ops {
        b = b
            .code_with_params(
                "right({op});",
                params(vec![("op", Term::Str(op.as_str().into()))]),
                HashMap::new(),
            )
            .map_err(invalid)?;
    }
    for p in &grant.prefixes {
        check_prefix(p)?;
        b = b
            .code_with_params(
                "prefix({p});",
                params(vec![("p", Term::Str(p.clone()))]),
                HashMap::new(),
            )
            .map_err(invalid)?;
    }
    let root = keypair(key.seed())?;
    let token = b
        .build_with_key_pair(
            &root,
            biscuit_auth::datalog::SymbolTable::new(),
            &keypair(next_seed)?,
        )
        .map_err(invalid)?;
    Ok(Token(token))
}

/// The bytes of a token in its text form (what token files and
/// `DYNOSTORE_TOKEN` hold), for a client that cannot verify it (it holds
/// no federation file); the node it talks to verifies.
pub fn token_bytes(text: &str) -> Result<Vec<u8>, TokenError> {
    let text = text.trim();
    if text.len() > TOKEN_MAX_BYTES.div_ceil(3) * 4 {
        return Err(TokenError::TooLarge {
            found: text.len() * 3 / 4,
            limit: TOKEN_MAX_BYTES,
        });
    }
    biscuit_auth::UnverifiedBiscuit::from_base64(text)
        .and_then(|u| u.to_vec())
        .map_err(invalid)
}

/// A decoded token whose signatures chain to one of the federation's sites.
#[derive(Debug, Clone)]
pub struct Token(Biscuit);

impl Token {
    /// Decodes and verifies the signature chain against `federation`'s site
    /// keys. Size and block limits are checked before any parsing.
    pub fn decode(bytes: &[u8], federation: &Federation) -> Result<Token, TokenError> {
        if bytes.len() > TOKEN_MAX_BYTES {
            return Err(TokenError::TooLarge {
                found: bytes.len(),
                limit: TOKEN_MAX_BYTES,
            });
        }
        let keys: Vec<(u32, SitePublicKey)> =
            federation.sites().map(|(_, k)| (key_id(k), *k)).collect();
        let provider = |id: Option<u32>| -> Result<PublicKey, biscuit_auth::error::Format> {
            let k = keys
                .iter()
                .find(|(i, _)| Some(*i) == id)
                .ok_or(biscuit_auth::error::Format::UnknownPublicKey)?;
            PublicKey::from_bytes(&k.1.to_bytes(), Algorithm::Ed25519)
        };
        let token = Biscuit::from(bytes, provider).map_err(|e| match e {
            biscuit_auth::error::Token::Format(biscuit_auth::error::Format::UnknownPublicKey) => {
                TokenError::UnknownIssuer
            }
            other => invalid(other),
        })?;
        if token.block_count() > TOKEN_MAX_BLOCKS + 1 {
            return Err(TokenError::TooManyBlocks {
                found: token.block_count() - 1,
                limit: TOKEN_MAX_BLOCKS,
            });
        }
        // The site a token speaks for is the site whose key signed it: a
        // site admin cannot issue tokens in another site's name.
        let signer: Vec<&str> = token
            .root_key_id()
            .map(|id| {
                federation
                    .sites()
                    .filter(|(_, k)| key_id(k) == id)
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        let token = Token(token);
        let claimed = token.principal()?.site;
        if !signer.contains(&claimed.as_str()) {
            return Err(TokenError::Invalid(format!(
                "token names site {claimed:?} but is signed by {}",
                signer.first().copied().unwrap_or("an unknown key")
            )));
        }
        Ok(token)
    }

    /// [`Token::decode`] of biscuit's URL-safe base64 text form.
    pub fn decode_base64(text: &str, federation: &Federation) -> Result<Token, TokenError> {
        Token::decode(&token_bytes(text)?, federation)
    }

    /// The token in biscuit's standard URL-safe base64 (what token files hold).
    pub fn to_base64(&self) -> Result<String, TokenError> {
        self.0.to_base64().map_err(invalid)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, TokenError> {
        self.0.to_vec().map_err(invalid)
    }

    /// The hex revocation identifier of each block, authority first.
    pub fn revocation_ids(&self) -> Vec<String> {
        self.0
            .revocation_identifiers()
            .iter()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
            .collect()
    }

    /// The token's Datalog, block by block (for `token inspect`).
    pub fn print(&self) -> String {
        self.0.print()
    }

    /// Adds a block that can only restrict; `next_seed` is fresh randomness.
    pub fn attenuate(&self, r: &Restriction, next_seed: [u8; 32]) -> Result<Token, TokenError> {
        let mut b = BlockBuilder::new();
        if let Some(ops) = &r.ops {
            let set: BTreeSet<Term> = ops.iter().map(|o| Term::Str(o.as_str().into())).collect();
            b = b
                .code_with_params(
                    "check if operation($op), {ops}.contains($op);",
                    params(vec![("ops", Term::Set(set))]),
                    HashMap::new(),
                )
                .map_err(invalid)?;
        }
        if let Some(p) = &r.prefix {
            check_prefix(p)?;
            b = b
                .code_with_params(
                    "check if resource($r), $r.starts_with({p});",
                    params(vec![("p", Term::Str(p.clone()))]),
                    HashMap::new(),
                )
                .map_err(invalid)?;
        }
        if let Some(e) = r.expires_secs {
            b = b
                .code_with_params(
                    "check if time($t), $t < {e};",
                    params(vec![("e", Term::Date(e))]),
                    HashMap::new(),
                )
                .map_err(invalid)?;
        }
        if self.0.block_count() > TOKEN_MAX_BLOCKS {
            return Err(TokenError::TooManyBlocks {
                found: self.0.block_count(),
                limit: TOKEN_MAX_BLOCKS,
            });
        }
        let t = self
            .0
            .append_with_keypair(&keypair(next_seed)?, b)
            .map_err(invalid)?;
        Ok(Token(t))
    }

    /// Whether the token allows `op` on `resource` at `now_secs`, given the
    /// revoked identifiers. Returns the user the token names.
    pub fn authorize(
        &self,
        op: Op,
        resource: &str,
        now_secs: u64,
        is_revoked: impl Fn(&str) -> bool,
    ) -> Result<String, TokenError> {
        self.authorize_object(op, resource, None, now_secs, is_revoked)
            .map(|p| p.user)
    }

    /// Like [`Token::authorize`], for an existing object owned by `owner`:
    /// the token also allows `op` when it names the owner itself (a user
    /// may `get` or `rm` what they stored, whatever its name), provided it
    /// grants `op` at all. Attenuation checks still apply to `resource`,
    /// so a token narrowed to a prefix gains nothing from ownership
    /// outside it. Returns who the token speaks for.
    pub fn authorize_object(
        &self,
        op: Op,
        resource: &str,
        owner: Option<&Principal>,
        now_secs: u64,
        is_revoked: impl Fn(&str) -> bool,
    ) -> Result<Principal, TokenError> {
        if let Some(id) = self.revocation_ids().into_iter().find(|id| is_revoked(id)) {
            return Err(TokenError::Revoked { id });
        }
        let denied = |reason: String| TokenError::Denied {
            op,
            resource: resource.chars().take(200).collect(),
            reason,
        };
        let mut b = AuthorizerBuilder::new()
            .code_with_params(
                "operation({op}); resource({r}); time({now});
                 allow if operation($op), right($op), resource($r), prefix($p), $r.starts_with($p);",
                params(vec![
                    ("op", Term::Str(op.as_str().into())),
                    ("r", Term::Str(resource.to_string())),
                    ("now", Term::Date(now_secs)),
                ]),
                HashMap::new(),
            )
            .map_err(invalid)?;
        if let Some(o) = owner {
            b = b
                .code_with_params(
                    "owner_user({u}); owner_site({s});
                     allow if operation($op), right($op), owner_user($u), user($u), owner_site($s), site($s);",
                    params(vec![
                        ("u", Term::Str(o.user.clone())),
                        ("s", Term::Str(o.site.clone())),
                    ]),
                    HashMap::new(),
                )
                .map_err(invalid)?;
        }
        let mut a = b
            .set_limits(AuthorizerLimits {
                max_facts: 1000,
                max_iterations: 100,
                max_time: std::time::Duration::from_millis(50),
            })
            .build(&self.0)
            .map_err(|e| denied(e.to_string()))?;
        a.authorize().map_err(|e| denied(explain(&e)))?;
        let (user, site): (String, String) = a
            .query_exactly_one("data($u, $s) <- user($u), site($s)")
            .map_err(|e| denied(e.to_string()))?;
        Ok(Principal { user, site })
    }

    /// Who the token speaks for, from its authority block (no check of
    /// expiry or rights: for display and for revocation by a site).
    pub fn principal(&self) -> Result<Principal, TokenError> {
        let mut a = AuthorizerBuilder::new()
            .code("allow if true;")
            .map_err(invalid)?
            .set_limits(AuthorizerLimits {
                max_facts: 1000,
                max_iterations: 100,
                max_time: std::time::Duration::from_millis(50),
            })
            .build(&self.0)
            .map_err(invalid)?;
        let (user, site): (String, String) = a
            .query_exactly_one("data($u, $s) <- user($u), site($s)")
            .map_err(invalid)?;
        Ok(Principal { user, site })
    }
}

/// The user a token speaks for, qualified by the site that issued it
/// (user names are a site's own: `alice` of one hospital is not `alice`
/// of another). Written `user@site`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub user: String,
    pub site: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.site)
    }
}

impl FromStr for Principal {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let (user, site) = s
            .rsplit_once('@')
            .ok_or_else(|| TokenError::Invalid(format!("owner {s:?} is not user@site")))?;
        check_label("user", user).map_err(invalid)?;
        check_label("site label", site).map_err(invalid)?;
        Ok(Principal {
            user: user.into(),
            site: site.into(),
        })
    }
}

/// A short reason for a refused authorization.
fn explain(e: &biscuit_auth::error::Token) -> String {
    match e {
        biscuit_auth::error::Token::FailedLogic(logic) => match logic {
            biscuit_auth::error::Logic::Unauthorized { checks, .. }
            | biscuit_auth::error::Logic::NoMatchingPolicy { checks } => {
                if checks.is_empty() {
                    "no right or prefix covers it".into()
                } else {
                    format!(
                        "{} check(s) failed (expired, or outside an attenuation)",
                        checks.len()
                    )
                }
            }
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn fed() -> (Federation, SiteKey) {
        let k = SiteKey::from_seed([9; 32]);
        let mut f = Federation::new("eu").unwrap();
        f.add_site("hospital-a", k.public()).unwrap();
        f.add_site("observatory", SiteKey::from_seed([8; 32]).public())
            .unwrap();
        (f, k)
    }

    fn grant(ops: &[Op], prefixes: &[&str]) -> Grant {
        Grant {
            user: "alice".into(),
            ops: ops.iter().copied().collect(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            expires_secs: NOW + 3600,
        }
    }

    fn round_trip(t: &Token, f: &Federation) -> Token {
        Token::decode(&t.to_bytes().unwrap(), f).unwrap()
    }

    #[test]
    fn a_token_allows_what_it_names_and_nothing_else() {
        let (f, k) = fed();
        let t = issue(
            "hospital-a",
            &k,
            &grant(&[Op::Get, Op::Put], &["imaging/"]),
            [1; 32],
        )
        .unwrap();
        let t = round_trip(&t, &f);
        let never = |_: &str| false;
        assert_eq!(
            t.authorize(Op::Get, "imaging/ct1", NOW, never).unwrap(),
            "alice"
        );
        assert!(t.authorize(Op::Put, "imaging/ct2", NOW, never).is_ok());
        assert!(matches!(
            t.authorize(Op::Rm, "imaging/ct1", NOW, never),
            Err(TokenError::Denied { .. })
        ));
        assert!(t.authorize(Op::Get, "genomics/x", NOW, never).is_err());
        // Expired.
        assert!(t
            .authorize(Op::Get, "imaging/ct1", NOW + 3600, never)
            .is_err());
    }

    #[test]
    fn an_owner_reaches_their_objects_but_attenuation_still_binds() {
        let (f, k) = fed();
        let t = issue(
            "hospital-a",
            &k,
            &grant(&[Op::Get, Op::Rm], &["imaging/"]),
            [1; 32],
        )
        .unwrap();
        let t = round_trip(&t, &f);
        let never = |_: &str| false;
        let me: Principal = "alice@hospital-a".parse().unwrap();
        let other: Principal = "alice@observatory".parse().unwrap();
        // Outside the prefix: only as the owner.
        assert!(t.authorize_object(Op::Rm, "x", None, NOW, never).is_err());
        assert_eq!(
            t.authorize_object(Op::Rm, "x", Some(&me), NOW, never)
                .unwrap(),
            me
        );
        assert!(t
            .authorize_object(Op::Rm, "x", Some(&other), NOW, never)
            .is_err());
        // Ownership does not add operations.
        assert!(t
            .authorize_object(Op::Put, "x", Some(&me), NOW, never)
            .is_err());
        // An attenuated copy stays inside its prefix even for the owner.
        let narrow = t
            .attenuate(
                &Restriction {
                    prefix: Some("imaging/shared/".into()),
                    ..Restriction::default()
                },
                [3; 32],
            )
            .unwrap();
        assert!(narrow
            .authorize_object(Op::Get, "x", Some(&me), NOW, never)
            .is_err());
        assert!(narrow
            .authorize_object(Op::Get, "imaging/shared/a", Some(&me), NOW, never)
            .is_ok());
    }

    #[test]
    fn a_site_cannot_issue_tokens_in_another_sites_name() {
        let (f, k) = fed();
        let forged = issue("observatory", &k, &grant(&[Op::Get], &[""]), [1; 32]).unwrap();
        let e = Token::decode(&forged.to_bytes().unwrap(), &f).unwrap_err();
        assert!(
            matches!(e, TokenError::Invalid(ref m) if m.contains("observatory")),
            "{e}"
        );
    }

    #[test]
    fn attenuation_only_restricts() {
        let (f, k) = fed();
        let t = issue(
            "hospital-a",
            &k,
            &grant(&[Op::Get, Op::Put, Op::Rm], &[""]),
            [1; 32],
        )
        .unwrap();
        let ro = t
            .attenuate(
                &Restriction {
                    ops: Some([Op::Get].into()),
                    prefix: Some("shared/".into()),
                    expires_secs: Some(NOW + 60),
                },
                [2; 32],
            )
            .unwrap();
        let ro = round_trip(&ro, &f);
        let never = |_: &str| false;
        assert!(ro.authorize(Op::Get, "shared/a", NOW, never).is_ok());
        assert!(ro.authorize(Op::Put, "shared/a", NOW, never).is_err());
        assert!(ro.authorize(Op::Rm, "shared/a", NOW, never).is_err());
        assert!(ro.authorize(Op::Get, "private/a", NOW, never).is_err());
        assert!(ro.authorize(Op::Get, "shared/a", NOW + 61, never).is_err());
        // Widening in a later block does not help: its facts are not trusted.
        let wider = BlockBuilder::new()
            .code(r#"right("put"); right("rm"); prefix("");"#)
            .unwrap();
        let widened = Token(
            t.0.append_with_keypair(&keypair([3; 32]).unwrap(), wider)
                .unwrap(),
        );
        let widened = round_trip(&widened, &f);
        assert!(widened.authorize(Op::Get, "x", NOW, never).is_ok());
        let only_get = issue("hospital-a", &k, &grant(&[Op::Get], &["a/"]), [4; 32]).unwrap();
        let wider = BlockBuilder::new()
            .code(r#"right("put"); prefix("");"#)
            .unwrap();
        let widened = Token(
            only_get
                .0
                .append_with_keypair(&keypair([5; 32]).unwrap(), wider)
                .unwrap(),
        );
        let widened = round_trip(&widened, &f);
        assert!(widened.authorize(Op::Put, "a/x", NOW, never).is_err());
        assert!(widened.authorize(Op::Get, "b/x", NOW, never).is_err());
        assert!(widened.authorize(Op::Get, "a/x", NOW, never).is_ok());
        // Revoking the authority block revokes the attenuation too.
        let root_id = t.revocation_ids()[0].clone();
        assert!(matches!(
            ro.authorize(Op::Get, "shared/a", NOW, |id| id == root_id),
            Err(TokenError::Revoked { .. })
        ));
        // Revoking the attenuation leaves the original alone.
        let att_id = ro.revocation_ids()[1].clone();
        assert!(t
            .authorize(Op::Get, "shared/a", NOW, |id| id == att_id)
            .is_ok());
    }

    #[test]
    fn other_issuers_and_garbage_are_refused() {
        let (f, _) = fed();
        let stranger = SiteKey::from_seed([5; 32]);
        let t = issue("hospital-a", &stranger, &grant(&[Op::Get], &[""]), [1; 32]).unwrap();
        assert_eq!(
            Token::decode(&t.to_bytes().unwrap(), &f).unwrap_err(),
            TokenError::UnknownIssuer
        );
        assert!(Token::decode(b"", &f).is_err());
        assert!(Token::decode(&[0u8; 300], &f).is_err());
        assert!(matches!(
            Token::decode(&vec![0u8; TOKEN_MAX_BYTES + 1], &f),
            Err(TokenError::TooLarge { .. })
        ));
        assert!("delete".parse::<Op>().is_err());
        assert_eq!("rm".parse::<Op>().unwrap(), Op::Rm);
    }
}
