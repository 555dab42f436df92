//! Container specifications: what the operator writes in `config.toml` or on
//! the command line to describe one data container, and byte sizes.
//!
//! A [`ContainerSpec`] is pure data: parsing one never touches the disk or
//! the network, and every field is checked here so that opening a container
//! fails only for reasons outside the node (a missing bucket, a full disk).
//!
//! # Command-line form
//!
//! ```text
//! KIND:LOCATION:QUOTA[?OPTION=VALUE&OPTION=VALUE...]
//!
//! dir:/data/shards:10GiB
//! dir:/mnt/disk2/dynostore:500GB?name=disk2
//! mem:256MiB
//! s3:http://127.0.0.1:9000/dynostore:100GiB?access_key=AK&secret_key=SK
//! s3:https://s3.eu-west-1.amazonaws.com/bucket/prefix:1TiB?region=eu-west-1&access_key=AK&secret_key=SK
//! webdav:https://dav.example.org/remote.php/dav/files/me:50GiB?user=me&password=PW
//! sftp:backup@archive.example.org:22/srv/dynostore:2TiB?key=/etc/dynostore/id_ed25519
//! ```
//!
//! The options start at the first `?`; the quota is what follows the last
//! `:` before them, so a location may itself contain `:` (ports, URLs) but
//! not `?`. `mem` has no location (`mem:QUOTA`). Option values may use
//! percent escapes (`%26` for `&`). Kinds are case-insensitive; `fs` is an
//! alias of `dir` and `memory` of `mem`.
//!
//! | kind | location | options |
//! |---|---|---|
//! | `dir` | a directory (created if missing) | `name` |
//! | `mem` | none | `name` |
//! | `s3` | `http[s]://HOST[:PORT]/BUCKET[/PREFIX]` | `name`, `region` (default `us-east-1`), `access_key`, `secret_key` (both required) |
//! | `webdav` | `http[s]://HOST[:PORT][/ROOT]` | `name`, `user`, `password` |
//! | `sftp` | `[USER@]HOST[:PORT]/PATH` | `name`, `key` (private key file), `known_hosts` (`strict`, `accept`, `add`) |
//!
//! `webdav` and `sftp` always parse; opening one needs the node built with the
//! feature of the same name.
//!
//! # Configuration-file form
//!
//! The same fields as a TOML table, `kind` selecting the variant:
//!
//! ```toml
//! [[containers]]
//! kind = "dir"
//! path = "/data/shards"
//! quota = "10GiB"
//!
//! [[containers]]
//! kind = "s3"
//! name = "archive"
//! endpoint = "http://127.0.0.1:9000"
//! bucket = "dynostore"
//! access_key = "AK"
//! secret_key = "SK"
//! quota = "100GiB"
//! ```
//!
//! Deserialising does not re-run the command-line checks, so call
//! [`ContainerSpec::validate`] after loading a file (the store does).
//!
//! # Names
//!
//! Every container has a name, stored in each shard's index record, so it
//! must stay the same across restarts. Unless given with `name=`, it is
//! derived from the location (`dir:/data/shards`, `mem`,
//! `s3:http://127.0.0.1:9000/dynostore`): changing a quota keeps the name,
//! moving a directory changes it. Names are at most [`MAX_NAME_LEN`] bytes
//! of printable characters.
//!
//! # Sizes
//!
//! [`ByteSize`] reads a number, optionally with a fraction, and an optional
//! unit, case-insensitively: `B`; decimal `KB`, `MB`, `GB`, `TB`, `PB`
//! (powers of 1000); binary `KiB`, `MiB`, `GiB`, `TiB`, `PiB` and the short
//! forms `K`, `M`, `G`, `T`, `P` (powers of 1024, as `dd` and `truncate` read
//! them). In TOML a size is either such a string or an integer of bytes.
//!
//! Secrets ([`Secret`]) never appear in `Debug` or `Display` output.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest container name, in bytes (the wire limit of a container name).
pub const MAX_NAME_LEN: usize = dynostore_protocol::wire::MAX_SITE_LEN;

/// Region used for S3 when none is given.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Why a container specification or a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error(
        "empty container specification; expected KIND:LOCATION:QUOTA, e.g. dir:/data/shards:10GiB"
    )]
    Empty,
    #[error("unknown container kind {kind:?}; allowed: dir, mem, s3, webdav, sftp")]
    UnknownKind { kind: String },
    #[error("{kind} container: {field} is missing; expected {expected}")]
    Missing {
        kind: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    #[error("{field}: {value:?} is not a size: {reason}; use e.g. 10GiB, 500GB, 64M or 1048576")]
    BadSize {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{kind} container: unknown option {option:?}; allowed: {allowed}")]
    UnknownOption {
        kind: &'static str,
        option: String,
        allowed: &'static str,
    },
    #[error("{kind} container: option {option:?} is given twice")]
    DuplicateOption { kind: &'static str, option: String },
    #[error("{kind} container: {field} {value:?} is invalid: {reason}")]
    Invalid {
        kind: &'static str,
        field: &'static str,
        value: String,
        reason: String,
    },
}

// ---------------------------------------------------------------------------
// Sizes

/// A number of bytes, read from `10GiB`, `500GB`, `64M`, `1.5TiB` or `4096`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
    ("p", 1 << 50),
    ("pib", 1 << 50),
    ("pb", 1_000_000_000_000_000),
];

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses a size; `field` names it in the error.
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, SpecError> {
        let bad = |reason| SpecError::BadSize {
            field,
            value: s.to_string(),
            reason,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| bad("unknown unit (allowed: B, K, M, G, T, P, KiB..PiB, KB..PB)"))?
        };
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad("it has no number"));
        }
        if frac_part.contains('.') {
            return Err(bad("it has more than one decimal point"));
        }
        if frac_part.len() > 18 {
            return Err(bad("it has more than 18 decimals"));
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| bad("the number is too large"))?
        };
        let mut total = int
            .checked_mul(u128::from(multiplier))
            .ok_or_else(|| bad("it does not fit in 64 bits"))?;
        if !frac_part.is_empty() {
            let frac: u128 = frac_part
                .parse()
                .map_err(|_| bad("the fraction is not a number"))?;
            let scale = 10u128.pow(frac_part.len() as u32);
            total += frac * u128::from(multiplier) / scale;
        }
        u64::try_from(total)
            .map(ByteSize)
            .map_err(|_| bad("it does not fit in 64 bits"))
    }
}

impl FromStr for ByteSize {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse_field("size", s)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, so that
    /// parsing the output gives the same size back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BINARY: &[(&str, u64)] = &[
            ("PiB", 1 << 50),
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, m) in BINARY {
            if self.0 != 0 && self.0.is_multiple_of(*m) {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteSize({self})")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10GiB\" or an integer number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse_field("quota", v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Secrets

/// A credential: serialised as is, never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The credential itself, for handing to a backend.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

// ---------------------------------------------------------------------------
// Specs

/// A directory on a local filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub path: PathBuf,
    pub quota: ByteSize,
}

/// Process memory: empty at every start (tests, caches, simulations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub quota: ByteSize,
}

/// A bucket (and optional key prefix) of an S3-compatible service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http[s]://HOST[:PORT]`, without the bucket.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key: String,
    pub secret_key: Secret,
    pub quota: ByteSize,
}

fn default_region() -> String {
    DEFAULT_S3_REGION.to_string()
}

/// A WebDAV collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebdavSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http[s]://HOST[:PORT]`.
    pub endpoint: String,
    /// Path under the endpoint (`/` if empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    pub quota: ByteSize,
}

/// A directory on an SFTP server (key-based login only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `HOST[:PORT]`.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Absolute directory on the server.
    pub root: String,
    /// Private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `strict` (default), `accept` or `add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    pub quota: ByteSize,
}

/// One data container as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ContainerSpec {
    #[serde(alias = "fs")]
    Dir(DirSpec),
    #[serde(alias = "memory")]
    Mem(MemSpec),
    S3(S3Spec),
    Webdav(WebdavSpec),
    Sftp(SftpSpec),
}

impl ContainerSpec {
    /// A directory container, named after its path.
    pub fn dir(path: impl Into<PathBuf>, quota_bytes: u64) -> Self {
        ContainerSpec::Dir(DirSpec {
            name: None,
            path: path.into(),
            quota: ByteSize(quota_bytes),
        })
    }

    /// A memory container called `name`.
    pub fn mem(name: impl Into<String>, quota_bytes: u64) -> Self {
        ContainerSpec::Mem(MemSpec {
            name: Some(name.into()),
            quota: ByteSize(quota_bytes),
        })
    }

    /// The keyword of the command-line form (`dir`, `mem`, `s3`, ...).
    pub fn kind_str(&self) -> &'static str {
        match self {
            ContainerSpec::Dir(_) => "dir",
            ContainerSpec::Mem(_) => "mem",
            ContainerSpec::S3(_) => "s3",
            ContainerSpec::Webdav(_) => "webdav",
            ContainerSpec::Sftp(_) => "sftp",
        }
    }

    pub fn quota(&self) -> ByteSize {
        match self {
            ContainerSpec::Dir(s) => s.quota,
            ContainerSpec::Mem(s) => s.quota,
            ContainerSpec::S3(s) => s.quota,
            ContainerSpec::Webdav(s) => s.quota,
            ContainerSpec::Sftp(s) => s.quota,
        }
    }

    fn explicit_name(&self) -> Option<&str> {
        match self {
            ContainerSpec::Dir(s) => s.name.as_deref(),
            ContainerSpec::Mem(s) => s.name.as_deref(),
            ContainerSpec::S3(s) => s.name.as_deref(),
            ContainerSpec::Webdav(s) => s.name.as_deref(),
            ContainerSpec::Sftp(s) => s.name.as_deref(),
        }
    }

    /// The container's name: the `name` given, or one derived from the
    /// location (see the module header).
    pub fn name(&self) -> String {
        if let Some(n) = self.explicit_name() {
            return n.to_string();
        }
        match self {
            ContainerSpec::Dir(s) => format!("dir:{}", s.path.display()),
            ContainerSpec::Mem(_) => "mem".to_string(),
            ContainerSpec::S3(s) if s.prefix.is_empty() => {
                format!("s3:{}/{}", s.endpoint, s.bucket)
            }
            ContainerSpec::S3(s) => format!("s3:{}/{}/{}", s.endpoint, s.bucket, s.prefix),
            ContainerSpec::Webdav(s) => format!("webdav:{}{}", s.endpoint, s.root),
            ContainerSpec::Sftp(s) => match &s.user {
                Some(u) => format!("sftp:{u}@{}{}", s.endpoint, s.root),
                None => format!("sftp:{}{}", s.endpoint, s.root),
            },
        }
    }

    /// Checks what the type does not: the name, the URLs, required fields.
    /// [`FromStr`] runs it; call it after deserialising a file.
    pub fn validate(&self) -> Result<(), SpecError> {
        let kind = self.kind_str();
        check_name(kind, &self.name())?;
        match self {
            ContainerSpec::Dir(s) => {
                if s.path.as_os_str().is_empty() {
                    return Err(SpecError::Missing {
                        kind,
                        field: "path",
                        expected: "a directory, e.g. dir:/data/shards:10GiB",
                    });
                }
            }
            ContainerSpec::Mem(_) => {}
            ContainerSpec::S3(s) => {
                check_http_endpoint(kind, &s.endpoint)?;
                check_bucket(&s.bucket)?;
                if s.region.is_empty() {
                    return Err(invalid(kind, "region", "", "it is empty"));
                }
                if s.access_key.is_empty() {
                    return Err(SpecError::Missing {
                        kind,
                        field: "access_key",
                        expected: "option access_key=KEY",
                    });
                }
                if s.secret_key.expose().is_empty() {
                    return Err(SpecError::Missing {
                        kind,
                        field: "secret_key",
                        expected: "option secret_key=SECRET",
                    });
                }
            }
            ContainerSpec::Webdav(s) => check_http_endpoint(kind, &s.endpoint)?,
            ContainerSpec::Sftp(s) => {
                if s.endpoint.is_empty() {
                    return Err(SpecError::Missing {
                        kind,
                        field: "host",
                        expected: "[USER@]HOST[:PORT]/PATH",
                    });
                }
                if !s.root.starts_with('/') {
                    return Err(invalid(kind, "path", &s.root, "it must be absolute"));
                }
                if let Some(k) = &s.known_hosts {
                    if !matches!(k.as_str(), "strict" | "accept" | "add") {
                        return Err(invalid(
                            kind,
                            "known_hosts",
                            k,
                            "allowed: strict, accept, add",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn invalid(kind: &'static str, field: &'static str, value: &str, reason: &str) -> SpecError {
    SpecError::Invalid {
        kind,
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(invalid(kind, "name", name, "it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            kind,
            "name",
            name,
            &format!("it is longer than {MAX_NAME_LEN} bytes; give a shorter one with ?name=NAME"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(kind, "name", name, "it has control characters"));
    }
    Ok(())
}

fn check_http_endpoint(kind: &'static str, endpoint: &str) -> Result<(), SpecError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                kind,
                "endpoint",
                endpoint,
                "it must start with http:// or https://",
            )
        })?;
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid(
            kind,
            "endpoint",
            endpoint,
            "expected http[s]://HOST[:PORT] with no path",
        ));
    }
    Ok(())
}

fn check_bucket(bucket: &str) -> Result<(), SpecError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "s3",
            "bucket",
            bucket,
            "a bucket name is 3-63 characters of a-z, 0-9, '-' and '.'",
        ))
    }
}

/// Options after `?`, checked against what the kind allows.
struct Options {
    kind: &'static str,
    pairs: Vec<(String, String)>,
}

impl Options {
    fn parse(
        kind: &'static str,
        query: Option<&str>,
        allowed: &'static str,
    ) -> Result<Self, SpecError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = k.trim().to_ascii_lowercase();
            if !allowed.split(", ").any(|a| a == k) {
                return Err(SpecError::UnknownOption {
                    kind,
                    option: k,
                    allowed,
                });
            }
            if pairs.iter().any(|(p, _)| *p == k) {
                return Err(SpecError::DuplicateOption { kind, option: k });
            }
            let v = percent_decode(v).ok_or_else(|| SpecError::Invalid {
                kind,
                field: "option",
                value: part.to_string(),
                reason: "bad percent escape (use %XX with two hex digits)".into(),
            })?;
            pairs.push((k, v));
        }
        Ok(Options { kind, pairs })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.swap_remove(i).1)
    }

    fn take_nonempty(&mut self, key: &'static str) -> Result<Option<String>, SpecError> {
        match self.take(key) {
            Some(v) if v.is_empty() => Err(invalid(self.kind, key, &v, "it is empty")),
            other => Ok(other),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits `http[s]://HOST[:PORT][/PATH]` into endpoint and path (no leading `/`).
fn split_url(kind: &'static str, url: &str) -> Result<(String, String), SpecError> {
    let scheme_len = if url.starts_with("http://") {
        7
    } else if url.starts_with("https://") {
        8
    } else {
        return Err(invalid(
            kind,
            "endpoint",
            url,
            "it must start with http:// or https://",
        ));
    };
    match url[scheme_len..].find('/') {
        Some(i) => {
            let (ep, path) = url.split_at(scheme_len + i);
            Ok((ep.to_string(), path.trim_matches('/').to_string()))
        }
        None => Ok((url.to_string(), String::new())),
    }
}

impl FromStr for ContainerSpec {
    type Err = SpecError;

    /// Parses the command-line form (see the module header).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        let (main, query) = match s.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (s, None),
        };
        let (kind_word, rest) = main.split_once(':').unwrap_or((main, ""));
        let kind: &'static str = match kind_word.to_ascii_lowercase().as_str() {
            "dir" | "fs" => "dir",
            "mem" | "memory" => "mem",
            "s3" => "s3",
            "webdav" => "webdav",
            "sftp" => "sftp",
            _ => {
                return Err(SpecError::UnknownKind {
                    kind: kind_word.to_string(),
                })
            }
        };
        // `mem:QUOTA` has no location; every other kind is LOCATION:QUOTA.
        let (location, quota) = if kind == "mem" {
            ("", rest)
        } else {
            match rest.rsplit_once(':') {
                Some((l, q)) => (l, q),
                None => (rest, ""),
            }
        };
        let expected_form: &'static str = match kind {
            "dir" => "dir:PATH:QUOTA, e.g. dir:/data/shards:10GiB",
            "mem" => "mem:QUOTA, e.g. mem:256MiB",
            "s3" => "s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]:QUOTA?access_key=..&secret_key=..",
            "webdav" => "webdav:http[s]://HOST[:PORT][/ROOT]:QUOTA",
            _ => "sftp:[USER@]HOST[:PORT]/PATH:QUOTA",
        };
        if quota.is_empty() {
            return Err(SpecError::Missing {
                kind,
                field: "quota",
                expected: expected_form,
            });
        }
        let quota = ByteSize::parse_field("quota", quota)?;
        if kind != "mem" && location.is_empty() {
            return Err(SpecError::Missing {
                kind,
                field: "location",
                expected: expected_form,
            });
        }

        let spec = match kind {
            "dir" => {
                let mut o = Options::parse(kind, query, "name")?;
                ContainerSpec::Dir(DirSpec {
                    name: o.take_nonempty("name")?,
                    path: PathBuf::from(location),
                    quota,
                })
            }
            "mem" => {
                let mut o = Options::parse(kind, query, "name")?;
                ContainerSpec::Mem(MemSpec {
                    name: o.take_nonempty("name")?,
                    quota,
                })
            }
            "s3" => {
                let mut o = Options::parse(kind, query, "name, region, access_key, secret_key")?;
                let (endpoint, path) = split_url(kind, location)?;
                let (bucket, prefix) = match path.split_once('/') {
                    Some((b, p)) => (b.to_string(), p.trim_matches('/').to_string()),
                    None => (path, String::new()),
                };
                if bucket.is_empty() {
                    return Err(SpecError::Missing {
                        kind,
                        field: "bucket",
                        expected: expected_form,
                    });
                }
                ContainerSpec::S3(S3Spec {
                    name: o.take_nonempty("name")?,
                    endpoint,
                    bucket,
                    prefix,
                    region: o.take_nonempty("region")?.unwrap_or_else(default_region),
                    access_key: o.take("access_key").unwrap_or_default(),
                    secret_key: Secret(o.take("secret_key").unwrap_or_default()),
                    quota,
                })
            }
            "webdav" => {
                let mut o = Options::parse(kind, query, "name, user, password")?;
                let (endpoint, root) = split_url(kind, location)?;
                ContainerSpec::Webdav(WebdavSpec {
                    name: o.take_nonempty("name")?,
                    endpoint,
                    root: if root.is_empty() {
                        String::new()
                    } else {
                        format!("/{root}")
                    },
                    user: o.take_nonempty("user")?,
                    password: o.take("password").map(Secret),
                    quota,
                })
            }
            _ => {
                let mut o = Options::parse(kind, query, "name, key, known_hosts")?;
                let (user, host_path) = match location.split_once('@') {
                    Some((u, hp)) => (Some(u.to_string()), hp),
                    None => (None, location),
                };
                let (endpoint, root) = match host_path.find('/') {
                    Some(i) => host_path.split_at(i),
                    None => {
                        return Err(SpecError::Missing {
                            kind,
                            field: "path",
                            expected: expected_form,
                        })
                    }
                };
                ContainerSpec::Sftp(SftpSpec {
                    name: o.take_nonempty("name")?,
                    endpoint: endpoint.to_string(),
                    user,
                    root: root.to_string(),
                    key: o.take_nonempty("key")?.map(PathBuf::from),
                    known_hosts: o.take_nonempty("known_hosts")?,
                    quota,
                })
            }
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for ContainerSpec {
    /// The command-line form with secrets replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut opts: Vec<(&str, String)> = Vec::new();
        if let Some(n) = self.explicit_name() {
            opts.push(("name", n.to_string()));
        }
        match self {
            ContainerSpec::Dir(s) => write!(f, "dir:{}:{}", s.path.display(), s.quota)?,
            ContainerSpec::Mem(s) => write!(f, "mem:{}", s.quota)?,
            ContainerSpec::S3(s) => {
                write!(f, "s3:{}/{}", s.endpoint, s.bucket)?;
                if !s.prefix.is_empty() {
                    write!(f, "/{}", s.prefix)?;
                }
                write!(f, ":{}", s.quota)?;
                opts.push(("region", s.region.clone()));
                opts.push(("access_key", s.access_key.clone()));
                opts.push(("secret_key", s.secret_key.to_string()));
            }
            ContainerSpec::Webdav(s) => {
                write!(f, "webdav:{}{}:{}", s.endpoint, s.root, s.quota)?;
                if let Some(u) = &s.user {
                    opts.push(("user", u.clone()));
                }
                if let Some(p) = &s.password {
                    opts.push(("password", p.to_string()));
                }
            }
            ContainerSpec::Sftp(s) => {
                f.write_str("sftp:")?;
                if let Some(u) = &s.user {
                    write!(f, "{u}@")?;
                }
                write!(f, "{}{}:{}", s.endpoint, s.root, s.quota)?;
                if let Some(k) = &s.key {
                    opts.push(("key", k.display().to_string()));
                }
                if let Some(k) = &s.known_hosts {
                    opts.push(("known_hosts", k.clone()));
                }
            }
        }
        for (i, (k, v)) in opts.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{k}={}", v.replace('%', "%25").replace('&', "%26"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("10GiB", 10 << 30),
            ("10gib", 10 << 30),
            ("10G", 10 << 30),
            ("500GB", 500_000_000_000),
            ("64M", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1K", 1024),
            ("1kb", 1000),
            ("1.5GiB", 3 << 29),
            (".5K", 512),
            ("7B", 7),
            ("1TiB", 1 << 40),
            ("2PB", 2_000_000_000_000_000),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ByteSize>().unwrap().0, *want, "{s}");
        }
        for bad in [
            "",
            "GiB",
            "10XB",
            "1.2.3G",
            "-1",
            "99999999999999999999",
            "16384PiB",
            "15EiB",
            ".",
        ] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(
                matches!(e, SpecError::BadSize { field: "size", .. }),
                "{bad}: {e}"
            );
        }
        let e = ByteSize::parse_field("quota", "10XB")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quota") && e.contains("unknown unit") && e.contains("GiB"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn size_display_round_trips(n in any::<u64>()) {
            let s = ByteSize(n).to_string();
            prop_assert_eq!(s.parse::<ByteSize>().unwrap(), ByteSize(n));
        }

        #[test]
        fn spec_parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<ContainerSpec>();
            let _ = s.parse::<ByteSize>();
        }
    }

    #[test]
    fn dir_and_mem() {
        let s: ContainerSpec = "dir:/data/shards:10GiB".parse().unwrap();
        assert_eq!(s, ContainerSpec::dir("/data/shards", 10 << 30));
        assert_eq!(s.name(), "dir:/data/shards");
        assert_eq!(s.quota().bytes(), 10 << 30);

        let s: ContainerSpec = "FS:/mnt/a:b:1K?name=disk2".parse().unwrap();
        let ContainerSpec::Dir(d) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(d.path, PathBuf::from("/mnt/a:b"));
        assert_eq!(s.name(), "disk2");
        assert_eq!(s.to_string().parse::<ContainerSpec>().unwrap(), s);

        let s: ContainerSpec = "mem:256MiB".parse().unwrap();
        assert_eq!(s.name(), "mem");
        assert_eq!(s.quota().bytes(), 256 << 20);
        assert_eq!(s.to_string(), "mem:256MiB");
    }

    #[test]
    fn s3() {
        let s: ContainerSpec =
            "s3:http://127.0.0.1:9000/dynostore:100GiB?access_key=AK&secret_key=S%26K%3D"
                .parse()
                .unwrap();
        let ContainerSpec::S3(c) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(c.endpoint, "http://127.0.0.1:9000");
        assert_eq!(c.bucket, "dynostore");
        assert_eq!(c.prefix, "");
        assert_eq!(c.region, DEFAULT_S3_REGION);
        assert_eq!(c.access_key, "AK");
        assert_eq!(c.secret_key.expose(), "S&K=");
        assert_eq!(s.name(), "s3:http://127.0.0.1:9000/dynostore");
        // The secret never shows.
        assert!(!format!("{s:?}").contains("S&K"));
        assert!(!s.to_string().contains("S&K"));
        assert!(s.to_string().contains("secret_key=***"));

        let s: ContainerSpec = "s3:https://s3.example.org/b-1/some/prefix/:1T?region=eu-west-1&access_key=a&secret_key=b&name=arch"
            .parse()
            .unwrap();
        let ContainerSpec::S3(c) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("b-1", "some/prefix", "eu-west-1")
        );
        assert_eq!(s.name(), "arch");
    }

    #[test]
    fn errors_name_the_field() {
        let err = |s: &str| s.parse::<ContainerSpec>().unwrap_err();
        assert_eq!(err(""), SpecError::Empty);
        assert!(matches!(err("nfs:/x:1G"), SpecError::UnknownKind { .. }));
        assert!(err("nfs:/x:1G")
            .to_string()
            .contains("allowed: dir, mem, s3"));
        assert!(matches!(
            err("dir:/data"),
            SpecError::Missing { field: "quota", .. }
        ));
        assert!(matches!(
            err("dir:/data:lots"),
            SpecError::BadSize { field: "quota", .. }
        ));
        assert!(matches!(
            err("dir:/data:"),
            SpecError::Missing { field: "quota", .. }
        ));
        assert!(matches!(
            err("dir::1G"),
            SpecError::Missing {
                field: "location",
                ..
            }
        ));
        assert!(matches!(
            err("dir:/d:1G?colour=red"),
            SpecError::UnknownOption { .. }
        ));
        assert!(matches!(
            err("dir:/d:1G?name=a&name=b"),
            SpecError::DuplicateOption { .. }
        ));
        assert!(matches!(
            err("s3:http://h:1/bucket:1G?access_key=a"),
            SpecError::Missing {
                field: "secret_key",
                ..
            }
        ));
        assert!(matches!(
            err("s3:http://h:1/:1G?access_key=a&secret_key=b"),
            SpecError::Missing {
                field: "bucket",
                ..
            }
        ));
        assert!(matches!(
            err("s3:ftp://h/bucket:1G?access_key=a&secret_key=b"),
            SpecError::Invalid {
                field: "endpoint",
                ..
            }
        ));
        assert!(matches!(
            err("s3:http://h/Bad_Bucket:1G?access_key=a&secret_key=b"),
            SpecError::Invalid {
                field: "bucket",
                ..
            }
        ));
        assert!(matches!(
            err(&format!("mem:1G?name={}", "n".repeat(MAX_NAME_LEN + 1))),
            SpecError::Invalid { field: "name", .. }
        ));
        assert!(matches!(
            err("dir:/d:1G?name=a%zz"),
            SpecError::Invalid {
                field: "option",
                ..
            }
        ));
        assert!(matches!(
            err("sftp:host:1G"),
            SpecError::Missing { field: "path", .. }
        ));
    }

    #[test]
    fn webdav_and_sftp_parse() {
        let s: ContainerSpec = "webdav:https://dav.example.org/files/me:50GiB?user=me&password=pw"
            .parse()
            .unwrap();
        let ContainerSpec::Webdav(w) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(w.endpoint, "https://dav.example.org");
        assert_eq!(w.root, "/files/me");
        assert!(!s.to_string().contains("pw"));

        let s: ContainerSpec =
            "sftp:backup@archive.example.org:22/srv/ds:2TiB?key=/k&known_hosts=accept"
                .parse()
                .unwrap();
        let ContainerSpec::Sftp(c) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.endpoint, "archive.example.org:22");
        assert_eq!(c.root, "/srv/ds");
        assert_eq!(s.to_string().parse::<ContainerSpec>().unwrap(), s);
    }

    #[test]
    fn toml_form() {
        #[derive(Deserialize, Serialize)]
        struct Config {
            containers: Vec<ContainerSpec>,
        }
        let text = r#"
            [[containers]]
            kind = "dir"
            path = "/data/shards"
            quota = "10GiB"

            [[containers]]
            kind = "memory"
            name = "scratch"
            quota = 1048576

            [[containers]]
            kind = "s3"
            endpoint = "http://127.0.0.1:9000"
            bucket = "dynostore"
            access_key = "AK"
            secret_key = "SK"
            quota = "100GiB"
        "#;
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.containers[0], "dir:/data/shards:10GiB".parse().unwrap());
        assert_eq!(c.containers[1], ContainerSpec::mem("scratch", 1 << 20));
        let ContainerSpec::S3(s3) = &c.containers[2] else {
            panic!()
        };
        assert_eq!(s3.region, DEFAULT_S3_REGION);
        assert_eq!(s3.secret_key.expose(), "SK");
        for spec in &c.containers {
            spec.validate().unwrap();
        }
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.containers, c.containers);

        let bad = "[[containers]]\nkind = \"dir\"\npath = \"/x\"\nquota = \"lots\"\n";
        let e = toml::from_str::<Config>(bad).err().unwrap().to_string();
        assert!(e.contains("not a size"), "{e}");
        let bad = "[[containers]]\nkind = \"dir\"\npath = \"/x\"\nquota = 1\ncolour = 2\n";
        assert!(toml::from_str::<Config>(bad).is_err());
    }
}
