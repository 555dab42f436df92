//! The S3 operations over name records and the data path.
//!
//! - Buckets are records of the reserved namespace [`BUCKETS_NS`]; a
//!   bucket's keys are the records of the namespace named like the bucket.
//! - PutObject spools the body to a temporary file while hashing it
//!   (BLAKE3 for the ID, MD5 for the ETag), then stores it through the
//!   data path with the ID known, then writes the name record. Memory is
//!   the data path's few segments whatever the size.
//! - GetObject streams the object through the data path's `get` (whole
//!   object verified against its ID) or, with `Range`, only the segments
//!   the range covers (each decoded from verified shards).
//! - Multipart uploads are records of `.uploads/BUCKET`: the upload
//!   (`ID`) and each part (`ID/NNNNN`, an object of its own, stored as it
//!   arrives). Complete names the parts' objects in order
//!   (`NameEntry::pieces`), so no byte is stored twice; reads go piece by
//!   piece. Past `s3_max_pieces` parts (at most [`MAX_PIECES`]), or when a
//!   piece is being reclaimed, it reads the parts into a spool and stores
//!   the whole as one object.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use md5::Digest;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use dynostore_protocol::erasure::{CodecKind, Geometry, MAX_SEGMENT_SIZE};
use dynostore_protocol::manifest::{Manifest, Metadata as ObjMeta};
use dynostore_protocol::names::{
    fold_page, Listed, NameEntry, NameRecord, NameVersion, MAX_PIECES, MAX_RECORDS_PER_MESSAGE,
};
use dynostore_protocol::token::Op;
use dynostore_protocol::wire::{ClientResponse, ErrorKind, SkippedShard};
use dynostore_protocol::ObjectId;

use super::auth::{Keys, User};
use super::{spool_body, ChannelBody, S3Config, Spool, Spooled, MAX_OBJECT_BYTES, SEND_TIMEOUT};
use crate::datapath::{self, DataError, ObjectSink, SEGMENTS_IN_FLIGHT};
use crate::names::{self, NameError};
use crate::refs::{self, Basis, RefError};
use crate::shared::Shared;

/// The bucket catalogue's namespace.
pub const BUCKETS_NS: &str = ".buckets";
/// Most keys one listing answers.
const MAX_KEYS: usize = 1000;
/// Most parts of one upload (S3's limit).
const MAX_PARTS: i32 = 10_000;
/// Smallest part but the last (S3's limit).
const MIN_PART: u64 = 5 << 20;
/// Segments of a download buffered between the read and the client.
const DOWNLOAD_BUFFER: usize = 2;
/// Pieces' manifests looked up at once.
const PIECES_IN_FLIGHT: usize = 16;

/// An upload's state, in its record's blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upload {
    key: String,
    content_type: Option<String>,
    meta: Vec<(String, String)>,
    owner: Option<String>,
    created_ms: u64,
    /// Standard headers for the completed object (see [`NameEntry::headers`]).
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// Set once the upload is complete: the object's ETag. The record is
    /// kept (until the upload expiry) so that a client that retries its
    /// CompleteMultipartUpload, as clients do after a timeout, gets the
    /// same answer instead of `NoSuchUpload`.
    #[serde(default)]
    completed: Option<String>,
}

fn uploads_ns(bucket: &str) -> String {
    format!(".uploads/{bucket}")
}

fn part_key(upload: &str, part: i32) -> String {
    format!("{upload}/{part:05}")
}

/// The S3 service of one node.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    keys: Keys,
    cfg: S3Config,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn data_err(e: DataError) -> s3s::S3Error {
    match e.kind() {
        ErrorKind::NotEnoughNodes => s3_error!(ServiceUnavailable, "{e}"),
        ErrorKind::NotFound => s3_error!(NoSuchKey, "{e}"),
        ErrorKind::Unavailable => s3_error!(ServiceUnavailable, "{e}"),
        ErrorKind::BadRequest => s3_error!(InvalidRequest, "{e}"),
        _ => s3_error!(InternalError, "{e}"),
    }
}

fn name_err(e: NameError) -> s3s::S3Error {
    match e.kind() {
        ErrorKind::BadRequest => s3_error!(InvalidArgument, "{e}"),
        ErrorKind::Unavailable => s3_error!(ServiceUnavailable, "{e}"),
        _ => s3_error!(InternalError, "{e}"),
    }
}

fn ref_err(e: RefError) -> s3s::S3Error {
    match e {
        RefError::Names(e) => name_err(e),
        RefError::Data(e) => data_err(e),
        RefError::Invalid(m) => s3_error!(InvalidArgument, "{m}"),
        e @ RefError::Condemned(_) => s3_error!(SlowDown, "{e}"),
    }
}

fn now_ms() -> u64 {
    crate::manifests::wall_ms()
}

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_string())
}

fn user_of<T>(req: &S3Request<T>) -> Option<String> {
    req.extensions
        .get::<User>()
        .map(|u| u.0.clone())
        .filter(|u| !u.is_empty())
}

fn meta_pairs(m: Option<s3s::dto::Metadata>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m.map(|m| m.into_iter().collect()).unwrap_or_default();
    v.sort();
    v
}

fn meta_map(pairs: &[(String, String)]) -> Option<s3s::dto::Metadata> {
    (!pairs.is_empty()).then(|| pairs.iter().cloned().collect())
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn token_of(after: &str) -> String {
    after.bytes().map(|b| format!("{b:02x}")).collect()
}

fn after_of(token: &str) -> S3Result<String> {
    hex_bytes(token)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))
}

/// Checks a request's `Content-MD5` (base64 of the body's MD5) against
/// the spooled body's, before anything is stored: a body damaged on the
/// way is refused, not kept.
fn check_content_md5(
    headers: &hyper::http::HeaderMap,
    given: Option<&str>,
    spooled: &Spooled,
) -> S3Result<()> {
    use base64::Engine as _;
    let Some(given) = given else {
        // An empty header is no digest to s3s, but a wrong one to S3.
        if headers.contains_key("content-md5") {
            return Err(s3_error!(InvalidDigest, "an empty Content-MD5"));
        }
        return Ok(());
    };
    let want = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .ok()
        .filter(|d| d.len() == 16)
        .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not the base64 of an MD5"))?;
    if spooled.md5.map(|m| m.to_vec()) != Some(want) {
        return Err(s3_error!(
            BadDigest,
            "the body's MD5 is not the Content-MD5 sent"
        ));
    }
    Ok(())
}

/// Seconds since the epoch of an S3 timestamp (HTTP dates have whole
/// seconds, so a last-modified time is compared in seconds too).
fn epoch_secs(t: &Timestamp) -> Option<i64> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::EpochSeconds, &mut buf).ok()?;
    std::str::from_utf8(&buf)
        .ok()?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The [`Conditions`] of an s3s input, whose fields have the same names on
/// every operation: `conditions!(input)` for `if_*`,
/// `conditions!(input, copy_source)` for `copy_source_if_*`.
macro_rules! conditions {
    ($input:ident) => {
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
    };
    ($input:ident, copy_source) => {
        Conditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}

/// A request's conditions on an object (`If-Match`, `If-None-Match`,
/// `If-Modified-Since`, `If-Unmodified-Since`, or their `x-amz-copy-source-`
/// forms), evaluated in RFC 9110's order (13.2.2) against the object's
/// ETag and last-modified time.
struct Conditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    /// `Ok` to go on; `PreconditionFailed` when a match or unmodified
    /// condition fails; when a none-match or modified condition fails,
    /// `NotModified` for a read (304), `PreconditionFailed` for a copy.
    fn check(&self, etag: &str, modified_ms: u64, read: bool) -> S3Result<()> {
        let secs = i64::try_from(modified_ms / 1000).unwrap_or(i64::MAX);
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(t) => t.value().trim_matches('"') == etag,
        };
        if let Some(c) = self.if_match {
            if !matches(c) {
                return Err(s3_error!(PreconditionFailed));
            }
        } else if let Some(t) = self.if_unmodified_since {
            if epoch_secs(t).is_some_and(|since| secs > since) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let unchanged = if let Some(c) = self.if_none_match {
            matches(c)
        } else if let Some(t) = self.if_modified_since {
            epoch_secs(t).is_some_and(|since| secs <= since)
        } else {
            false
        };
        match (unchanged, read) {
            (false, _) => Ok(()),
            (true, true) => {
                // A 304 carries the validators a cache compares.
                let mut e = s3_error!(NotModified);
                let mut h = hyper::http::HeaderMap::new();
                if let Ok(v) = hyper::http::HeaderValue::from_str(&format!("\"{etag}\"")) {
                    h.insert(hyper::http::header::ETAG, v);
                }
                let mut date = Vec::new();
                if timestamp(modified_ms)
                    .format(TimestampFormat::HttpDate, &mut date)
                    .is_ok()
                {
                    if let Ok(v) = hyper::http::HeaderValue::from_bytes(&date) {
                        h.insert(hyper::http::header::LAST_MODIFIED, v);
                    }
                }
                e.set_headers(h);
                Err(e)
            }
            (true, false) => Err(s3_error!(PreconditionFailed)),
        }
    }
}

/// Listing fields as the request's `encoding-type` asks: `url`
/// percent-encodes keys, prefixes, delimiters and markers (clients ask
/// for it so that keys with characters XML cannot carry come back whole).
struct ListEncoding(bool);

/// What `encoding-type=url` leaves as it is: unreserved characters and `/`.
const URL_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

impl ListEncoding {
    fn of(t: Option<&EncodingType>) -> Self {
        ListEncoding(t.is_some_and(|t| t.as_str().eq_ignore_ascii_case("url")))
    }

    fn s(&self, v: String) -> String {
        if self.0 {
            percent_encoding::utf8_percent_encode(&v, URL_KEEP).to_string()
        } else {
            v
        }
    }

    fn opt(&self, v: Option<String>) -> Option<String> {
        v.map(|v| self.s(v))
    }

    fn echo(&self) -> Option<EncodingType> {
        self.0.then(|| EncodingType::from_static(EncodingType::URL))
    }
}

/// A listing's delimiter: an empty one is no delimiter (and is not echoed).
fn delimiter_of(d: Option<&String>) -> Option<String> {
    d.filter(|d| !d.is_empty()).cloned()
}

/// The bytes `[start, end)` an UploadPartCopy's `x-amz-copy-source-range`
/// (`bytes=FIRST-LAST`, both inclusive) names within an object of `size`.
fn copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=FIRST-LAST"
        )
    };
    let (a, b) = r
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let (first, last): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if first > last || last >= size {
        return Err(s3_error!(
            InvalidRange,
            "bytes {first}-{last} of an object of {size} bytes"
        ));
    }
    Ok((first, last + 1))
}

/// The standard headers an object keeps (see [`NameEntry::headers`]), from
/// a put's, an upload's or a replacing copy's input; `aws-chunked` is a
/// transfer coding of the request, not of the object, and is dropped.
fn stored_headers(
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<&Timestamp>,
) -> S3Result<Vec<(String, String)>> {
    let encoding = content_encoding.map(|e| {
        e.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let expires = expires.and_then(|t| {
        let mut b = Vec::new();
        t.format(TimestampFormat::HttpDate, &mut b).ok()?;
        String::from_utf8(b).ok()
    });
    let mut out: Vec<(String, String)> = [
        ("cache-control", cache_control),
        ("content-disposition", content_disposition),
        ("content-encoding", encoding),
        ("content-language", content_language),
        ("expires", expires),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v.filter(|v| !v.is_empty())?)))
    .collect();
    out.sort();
    let bytes: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > dynostore_protocol::names::MAX_HEADER_BYTES {
        return Err(s3_error!(
            InvalidArgument,
            "the stored headers are {bytes} bytes, more than {}",
            dynostore_protocol::names::MAX_HEADER_BYTES
        ));
    }
    Ok(out)
}

/// One stored standard header of `e`.
fn header_of(e: &NameEntry, name: &str) -> Option<String> {
    e.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// The stored `expires` of `e`, as S3 answers it.
fn expires_of(e: &NameEntry) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, &header_of(e, "expires")?).ok()
}

/// The answer to a conditional write (`If-Match` / `If-None-Match` on a
/// put or a completion): name records are last-writer-wins with no
/// compare-and-swap, so the condition could not be kept against a
/// concurrent writer; a clear refusal, not an overwrite.
fn conditional_write() -> s3s::S3Error {
    s3_error!(
        NotImplemented,
        "conditional writes (If-Match, If-None-Match) are not supported: names have no compare-and-swap"
    )
}

/// Part numbers are 1 to [`MAX_PARTS`].
fn check_part_number(n: i32) -> S3Result<()> {
    if (1..=MAX_PARTS).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "part numbers are 1 to {MAX_PARTS}"
        ))
    }
}

/// What a read by `partNumber` answers: the part's bytes `[start, end)`
/// and, for a multipart object, its part count. An object stored in one
/// piece has one part, the whole object (as in S3).
fn part_range(e: &NameEntry, n: i32) -> S3Result<((u64, u64), Option<i32>)> {
    check_part_number(n)?;
    let n = n as usize;
    if e.parts.is_empty() {
        return if n == 1 {
            Ok(((0, e.size), None))
        } else {
            Err(s3_error!(InvalidPart, "the object has one part"))
        };
    }
    let Some(&len) = e.parts.get(n - 1) else {
        return Err(s3_error!(
            InvalidPart,
            "the object has {} parts",
            e.parts.len()
        ));
    };
    let start: u64 = e.parts[..n - 1].iter().sum();
    Ok(((start, start + len), i32::try_from(e.parts.len()).ok()))
}

/// Most keys one DeleteObjects may name (S3's limit).
const MAX_DELETE_KEYS: usize = 1000;

impl Gateway {
    pub(crate) fn new(shared: Arc<Shared>, keys: Keys, cfg: S3Config) -> Self {
        Gateway { shared, keys, cfg }
    }

    fn geometry(&self) -> S3Result<Geometry> {
        let seg = (u32::from(self.cfg.k) << 20).min(MAX_SEGMENT_SIZE);
        Geometry::new(CodecKind::default(), self.cfg.k, self.cfg.m, seg)
            .map_err(|e| s3_error!(InternalError, "{e}"))
    }

    /// The live record of `ns`/`key`, if any.
    async fn live(&self, ns: &str, key: &str) -> S3Result<Option<NameRecord>> {
        Ok(names::get(&self.shared, ns, key)
            .await
            .map_err(name_err)?
            .filter(|r| !r.is_tombstone()))
    }

    /// Writes `entry` (or a tombstone) under `ns`/`key`, above any version
    /// seen, keeping the references of names to objects (`refs`).
    async fn write(&self, ns: &str, key: &str, entry: Option<NameEntry>) -> S3Result<NameVersion> {
        self.write_on(ns, key, entry, Basis::Lookup).await
    }

    /// [`Self::write`] of a name of an object a put just stored or found.
    async fn write_on(
        &self,
        ns: &str,
        key: &str,
        entry: Option<NameEntry>,
        basis: Basis,
    ) -> S3Result<NameVersion> {
        refs::write_name(&self.shared, ns, key, entry, basis)
            .await
            .map_err(ref_err)
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<NameRecord> {
        self.live(BUCKETS_NS, bucket)
            .await?
            .ok_or_else(|| s3_error!(NoSuchBucket))
    }

    async fn require_key(&self, bucket: &str, key: &str) -> S3Result<(NameRecord, NameEntry)> {
        match self.live(bucket, key).await? {
            Some(r) => {
                let e = r.entry.clone().unwrap_or_default();
                Ok((r, e))
            }
            None => {
                self.require_bucket(bucket).await?;
                Err(s3_error!(NoSuchKey))
            }
        }
    }

    /// Names the object a put just stored (`basis`) from `spooled`. When
    /// the generation the put found turns out to be condemned (a collector
    /// is about to reclaim it), stores a generation of its own from the
    /// spool, which the condemnation does not reach, and names that: the
    /// client never sees the race.
    #[allow(clippy::too_many_arguments)]
    async fn name_stored(
        &self,
        ns: &str,
        key: &str,
        entry: NameEntry,
        basis: Basis,
        spooled: Spooled,
        name: &str,
        ct: Option<String>,
    ) -> S3Result<(Spooled, NameVersion)> {
        match refs::write_name(&self.shared, ns, key, Some(entry.clone()), basis).await {
            Ok(v) => Ok((spooled, v)),
            Err(RefError::Condemned(_)) => {
                let (spooled, basis) = self.store(spooled, name, ct, true).await?;
                let v = self.write_on(ns, key, Some(entry), basis).await?;
                Ok((spooled, v))
            }
            Err(e) => Err(ref_err(e)),
        }
    }

    /// Stores a spooled body as an object through the data path (`fresh`:
    /// as a generation of its own even if the object is stored whole).
    async fn store(
        &self,
        mut spooled: Spooled,
        name: &str,
        ct: Option<String>,
        fresh: bool,
    ) -> S3Result<(Spooled, Basis)> {
        let meta = ObjMeta {
            name: Some(
                name.chars()
                    .take(dynostore_protocol::manifest::MAX_META_LEN)
                    .collect(),
            ),
            content_type: ct.filter(|c| c.len() <= dynostore_protocol::manifest::MAX_META_LEN),
            created_ms: Some(now_ms()),
            owner: None,
            collectable: true,
        };
        let g = self.geometry()?;
        let object = spooled.object;
        let size = spooled.size;
        let receipt =
            datapath::put_object(&self.shared, &mut spooled, object, size, g, meta, fresh)
                .await
                .map_err(data_err)?;
        let basis = receipt.generation.map_or(Basis::Lookup, Basis::Generation);
        Ok((spooled, basis))
    }

    async fn spool(&self, body: Option<StreamingBlob>, limit: u64) -> S3Result<Spooled> {
        match body {
            Some(b) => spool_body(&self.cfg.spool_dir, b, limit).await,
            None => Spool::new(&self.cfg.spool_dir, limit).await?.finish().await,
        }
    }

    /// One merged listing page of a bucket.
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<String>,
        max: usize,
    ) -> S3Result<(Vec<Listed>, bool)> {
        let mut out: Vec<Listed> = Vec::new();
        let mut cursor = after.clone();
        let mut fold_after = after;
        loop {
            let (page, more) = names::list_page(
                &self.shared,
                bucket,
                prefix,
                cursor.as_deref(),
                MAX_RECORDS_PER_MESSAGE as u32,
            )
            .await
            .map_err(name_err)?;
            cursor = page.last().map(|r| r.key.clone());
            let (listed, full) = fold_page(
                page,
                prefix,
                delimiter,
                fold_after.as_deref(),
                max - out.len(),
            );
            if let Some(l) = listed.last() {
                fold_after = Some(l.resume_after().to_string());
            }
            out.extend(listed);
            if full {
                return Ok((out, true));
            }
            if !more || cursor.is_none() {
                return Ok((out, false));
            }
            // A common prefix folded on this page may go on in the next.
            if let (Some(Listed::CommonPrefix(p)), Some(c)) = (out.last(), &cursor) {
                if c.starts_with(p.as_str()) {
                    fold_after = Some(p.clone());
                }
            }
        }
    }

    fn object_of(r: &NameRecord) -> Object {
        let e = r.entry.clone().unwrap_or_default();
        Object {
            key: Some(r.key.clone()),
            size: Some(e.size as i64),
            e_tag: Some(etag(&e.etag)),
            last_modified: Some(timestamp(r.version.ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            owner: e.owner.map(|o| Owner {
                display_name: Some(o.clone()),
                id: Some(o),
            }),
            ..Default::default()
        }
    }

    /// An upload in progress (a completed one is `NoSuchUpload`, as in S3).
    async fn upload(&self, bucket: &str, upload_id: &str) -> S3Result<(NameRecord, Upload)> {
        let (r, up) = self.upload_record(bucket, upload_id).await?;
        if up.completed.is_some() {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok((r, up))
    }

    /// An upload's record, in progress or completed.
    async fn upload_record(&self, bucket: &str, upload_id: &str) -> S3Result<(NameRecord, Upload)> {
        if upload_id.contains('/') || upload_id.is_empty() || upload_id.len() > 64 {
            return Err(s3_error!(NoSuchUpload));
        }
        let r = self
            .live(&uploads_ns(bucket), upload_id)
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let up: Upload = r
            .entry
            .as_ref()
            .and_then(|e| e.blob.as_deref())
            .and_then(|b| ciborium::from_reader(b).ok())
            .ok_or_else(|| s3_error!(InternalError, "an upload record does not decode"))?;
        Ok((r, up))
    }

    async fn parts(&self, bucket: &str, upload_id: &str) -> S3Result<Vec<NameRecord>> {
        names::list_all(
            &self.shared,
            &uploads_ns(bucket),
            &format!("{upload_id}/"),
            MAX_PARTS as usize + 1,
        )
        .await
        .map_err(name_err)
    }

    /// Completes an upload. The object is named as its parts (`pieces`):
    /// each part is already an object of its own, stored, verified and
    /// repaired like any, so no byte moves again. An upload of more than
    /// `max_pieces` parts, or one whose part is being reclaimed (a
    /// condemnation the name's references met), is read part by part into
    /// a spool and stored whole, as one object whose ID is the BLAKE3 of
    /// all its bytes.
    async fn finish_upload(
        self,
        bucket: String,
        key: String,
        upload_id: String,
        up: Upload,
        chosen: Vec<NameEntry>,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let mut md5s = md5::Md5::new();
        for e in &chosen {
            md5s.update(hex_bytes(&e.etag).unwrap_or_default());
        }
        let tag = format!("{}-{}", super::hex(&md5s.finalize()), chosen.len());
        let pieces: Vec<ObjectId> = chosen
            .iter()
            .map(|e| e.object.ok_or_else(|| s3_error!(InvalidPart)))
            .collect::<S3Result<_>>()?;
        let entry = NameEntry {
            object: None,
            size: chosen.iter().map(|p| p.size).sum(),
            etag: tag.clone(),
            content_type: up.content_type.clone(),
            meta: up.meta.clone(),
            owner: up.owner.clone(),
            blob: None,
            headers: up.headers.clone(),
            parts: chosen.iter().map(|p| p.size).collect(),
            pieces: Vec::new(),
        };
        let as_pieces = NameEntry {
            pieces: pieces.clone(),
            ..entry.clone()
        };
        let named = pieces.len() <= self.cfg.max_pieces.min(MAX_PIECES)
            && match refs::write_name(&self.shared, &bucket, &key, Some(as_pieces), Basis::Lookup)
                .await
            {
                Ok(_) => true,
                Err(RefError::Condemned(o)) => {
                    tracing::info!(object = %o.short(), "a part is being reclaimed: the upload is stored whole");
                    false
                }
                Err(e) => return Err(ref_err(e)),
            };
        if !named {
            self.store_whole(&bucket, &key, &up, &pieces, entry).await?;
        }
        // The upload's record stays, marked complete, for retried
        // completions, until the upload expiry removes it (and any part
        // record left by a failure below). It is marked first, so that a
        // completion that fails while dropping the parts' records is
        // answered, when retried, with the object it named.
        let ns = uploads_ns(&bucket);
        let owner = up.owner.clone();
        let done = Upload {
            completed: Some(tag.clone()),
            ..up
        };
        let mut blob = Vec::new();
        ciborium::into_writer(&done, &mut blob).map_err(|e| s3_error!(InternalError, "{e}"))?;
        self.write(
            &ns,
            &upload_id,
            Some(NameEntry {
                owner,
                blob: Some(blob),
                ..NameEntry::default()
            }),
        )
        .await?;
        // The parts' records go: the completed object's name references
        // the pieces it is made of.
        let deletes: Vec<_> = self
            .parts(&bucket, &upload_id)
            .await?
            .into_iter()
            .map(|p| {
                let (g, ns) = (self.clone(), ns.clone());
                async move { g.write(&ns, &p.key, None).await }
            })
            .collect();
        let deleted: Vec<S3Result<NameVersion>> = futures::stream::iter(deletes)
            .buffer_unordered(PIECES_IN_FLIGHT)
            .collect()
            .await;
        deleted.into_iter().try_for_each(|r| r.map(|_| ()))?;
        Ok(CompleteMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            e_tag: Some(etag(&tag)),
            ..Default::default()
        })
    }

    /// Stores a completed upload's parts as one object (read part by part
    /// into a spool) and names it with `entry`.
    async fn store_whole(
        &self,
        bucket: &str,
        key: &str,
        up: &Upload,
        pieces: &[ObjectId],
        entry: NameEntry,
    ) -> S3Result<()> {
        let mut spool = Spool::without_md5(&self.cfg.spool_dir, u64::MAX).await?;
        for &object in pieces {
            datapath::get(
                &self.shared,
                &mut SpoolSink(&mut spool),
                object,
                &datapath::open_gate,
            )
            .await
            .map_err(data_err)?;
        }
        let spooled = spool.finish().await?;
        let name = format!("{bucket}/{key}");
        let (spooled, basis) = self
            .store(spooled, &name, up.content_type.clone(), false)
            .await?;
        let entry = NameEntry {
            object: Some(spooled.object),
            ..entry
        };
        self.name_stored(
            bucket,
            key,
            entry,
            basis,
            spooled,
            &name,
            up.content_type.clone(),
        )
        .await?;
        Ok(())
    }

    /// The source of a copy (CopyObject, UploadPartCopy): `get` on it
    /// authorized for the request's key, its name record, and its
    /// conditions met. Returns the bucket, key, record and entry.
    async fn copy_source(
        &self,
        access: Option<&str>,
        source: &CopySource,
        conditions: Conditions<'_>,
    ) -> S3Result<(String, String, NameRecord, NameEntry)> {
        let (bucket, key) = match source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => return Err(s3_error!(NotImplemented, "access point copy sources")),
        };
        self.keys
            .authorize(access, Op::Get, &format!("{bucket}/{key}"))
            .await?;
        let (r, e) = self.require_key(&bucket, &key).await?;
        conditions.check(&e.etag, r.version.ms, false)?;
        Ok((bucket, key, r, e))
    }

    /// Stores a part's spooled bytes as an object of their own and records
    /// it under the upload; returns its ETag and the record's time.
    async fn store_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        spooled: Spooled,
    ) -> S3Result<(String, u64)> {
        let name = format!("{bucket}/{key} part {part_number}");
        let (spooled, basis) = self.store(spooled, &name, None, false).await?;
        let tag = spooled.etag()?;
        let entry = NameEntry {
            object: Some(spooled.object),
            size: spooled.size,
            etag: tag.clone(),
            ..NameEntry::default()
        };
        let (_, v) = self
            .name_stored(
                &uploads_ns(bucket),
                &part_key(upload_id, part_number),
                entry,
                basis,
                spooled,
                &name,
                None,
            )
            .await?;
        Ok((tag, v.ms))
    }

    /// Forgets an upload and its part records.
    async fn drop_upload(&self, bucket: &str, upload_id: &str) -> S3Result<()> {
        let ns = uploads_ns(bucket);
        for p in self.parts(bucket, upload_id).await? {
            self.write(&ns, &p.key, None).await?;
        }
        self.write(&ns, upload_id, None).await?;
        Ok(())
    }
}

/// Where a full download's bytes go: a bounded channel to the body.
struct BodySink {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ObjectSink for BodySink {
    async fn begin(&mut self, _size: u64, _meta: &ObjMeta) -> Result<(), DataError> {
        Ok(())
    }

    async fn data(&mut self, bytes: Vec<u8>) -> Result<(), DataError> {
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(Bytes::from(bytes)))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(DataError::Io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the S3 client went away or stalled",
            ))),
        }
    }

    async fn fail(&mut self, e: &DataError) -> Result<(), DataError> {
        // An error aborts the body: the client sees fewer bytes than the
        // declared length, never a complete wrong object.
        let _ = tokio::time::timeout(
            SEND_TIMEOUT,
            self.tx.send(Err(std::io::Error::other(e.to_string()))),
        )
        .await;
        Ok(())
    }

    async fn end(&mut self, _skipped: Vec<SkippedShard>) -> Result<(), DataError> {
        Ok(())
    }
}

/// Where a completed upload's parts are read into.
struct SpoolSink<'a>(&'a mut Spool);

impl ObjectSink for SpoolSink<'_> {
    async fn begin(&mut self, _size: u64, _meta: &ObjMeta) -> Result<(), DataError> {
        Ok(())
    }

    async fn data(&mut self, bytes: Vec<u8>) -> Result<(), DataError> {
        self.0
            .write(&bytes)
            .await
            .map_err(|e| DataError::Internal(format!("{e:?}")))
    }

    async fn fail(&mut self, _e: &DataError) -> Result<(), DataError> {
        Ok(())
    }

    async fn end(&mut self, _skipped: Vec<SkippedShard>) -> Result<(), DataError> {
        Ok(())
    }
}

/// What a read of bytes `[start, end)` of a name is read from: the
/// manifest of its object, or of each of its pieces the range covers, with
/// the offset where each begins (found before the answer starts, so that
/// an object that is gone is an error, not a short body).
struct Source {
    pieces: Vec<(u64, Arc<Manifest>)>,
}

impl Source {
    async fn of(shared: &Arc<Shared>, e: &NameEntry, start: u64, end: u64) -> S3Result<Source> {
        if let Some(object) = e.object {
            let m = datapath::read_manifest(shared, object)
                .await
                .map_err(data_err)?;
            return Ok(Source {
                pieces: vec![(0, Arc::new(m))],
            });
        }
        if e.pieces.is_empty() {
            return Err(s3_error!(InternalError, "a name without an object"));
        }
        let mut wanted = Vec::new();
        let mut from = 0u64;
        for (&o, &len) in e.pieces.iter().zip(&e.parts) {
            let to = from + len;
            if len > 0 && from < end && to > start {
                wanted.push((from, len, o));
            }
            from = to;
        }
        let lookups: Vec<_> = wanted
            .into_iter()
            .map(|(from, len, o)| {
                let shared = shared.clone();
                async move {
                    let m = datapath::read_manifest(&shared, o).await;
                    (from, len, m)
                }
            })
            .collect();
        let found: Vec<_> = futures::stream::iter(lookups)
            .buffered(PIECES_IN_FLIGHT)
            .collect()
            .await;
        let mut pieces = Vec::with_capacity(found.len());
        for (from, want, m) in found {
            let m = m.map_err(data_err)?;
            if m.size != want {
                return Err(s3_error!(
                    InternalError,
                    "piece {} has {} bytes, its part {want}",
                    m.object.short(),
                    m.size
                ));
            }
            pieces.push((from, Arc::new(m)));
        }
        Ok(Source { pieces })
    }

    /// Sends bytes `[start, end)` into `tx`. A whole object (or piece) is
    /// read through the data path's `get` (verified against its ID); a
    /// part of one, segment by segment from verified shards.
    async fn send(
        self,
        shared: Arc<Shared>,
        start: u64,
        end: u64,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        for (from, m) in self.pieces {
            let to = from + m.size;
            if to <= start || from >= end || from == to {
                continue;
            }
            let (a, b) = (start.max(from) - from, end.min(to) - from);
            let sent = if a == 0 && b == m.size {
                let mut sink = BodySink { tx: tx.clone() };
                let object = m.object;
                match datapath::get_found(&shared, &mut sink, m, &datapath::open_gate).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(object = %object.short(), error = %e, "S3 get failed");
                        false
                    }
                }
            } else {
                send_range(shared.clone(), m, a, b, tx.clone()).await
            };
            if !sent {
                return;
            }
        }
    }
}

/// Sends bytes `[start, end)` of the object of `m` into `tx`, segment by
/// segment (each decoded from verified shards). Returns whether every
/// byte was sent.
async fn send_range(
    shared: Arc<Shared>,
    m: Arc<Manifest>,
    start: u64,
    end: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> bool {
    if let Some(bytes) = &m.inline {
        // An inline object has no segments: its bytes are in the manifest
        // (checked against the ID when it was decoded; again here, as a
        // whole get does).
        let chunk = (ObjectId::of(bytes) == m.object)
            .then(|| bytes.get(start as usize..end as usize))
            .flatten()
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| {
                std::io::Error::other("the inline object does not match its ID or the range")
            });
        let ok = chunk.is_ok();
        let sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(chunk)).await;
        return ok && matches!(sent, Ok(Ok(())));
    }
    let mut offsets = Vec::with_capacity(m.segments.len());
    let mut off = 0u64;
    for s in &m.segments {
        offsets.push(off);
        off += s.len;
    }
    let wanted: Vec<usize> = (0..m.segments.len())
        .filter(|&i| offsets[i] < end && offsets[i] + m.segments[i].len > start)
        .collect();
    let mut in_flight = FuturesOrdered::new();
    let mut next = 0usize;
    loop {
        while next < wanted.len() && in_flight.len() < SEGMENTS_IN_FLIGHT {
            let idx = wanted[next];
            let shared = shared.clone();
            let m = m.clone();
            in_flight.push_back(async move {
                let r =
                    tokio::spawn(
                        async move { crate::stripes::read_segment(&shared, &m, idx).await },
                    )
                    .await;
                (idx, r)
            });
            next += 1;
        }
        let Some((idx, r)) = in_flight.next().await else {
            return true;
        };
        let bytes = match r {
            Ok(Ok((b, _))) => b,
            Ok(Err(e)) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return false;
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return false;
            }
        };
        let seg_start = offsets[idx];
        let from = start.saturating_sub(seg_start) as usize;
        let to = ((end - seg_start) as usize).min(bytes.len());
        let chunk = Bytes::from(bytes).slice(from..to);
        let sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(chunk))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        if let Some(r) = self.live(BUCKETS_NS, &bucket).await? {
            let owner = r.entry.and_then(|e| e.owner);
            if owner == user_of(&req) {
                return Err(s3_error!(BucketAlreadyOwnedByYou));
            }
            return Err(s3_error!(BucketAlreadyExists));
        }
        self.write(
            BUCKETS_NS,
            &bucket,
            Some(NameEntry {
                owner: user_of(&req),
                ..NameEntry::default()
            }),
        )
        .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let after = match &req.input.continuation_token {
            Some(t) => Some(after_of(t)?),
            None => None,
        };
        let max = req
            .input
            .max_buckets
            .map_or(usize::MAX, |m| m.max(1) as usize);
        let all = names::list_all(&self.shared, BUCKETS_NS, &prefix, 100_000)
            .await
            .map_err(name_err)?;
        let access = req.credentials.as_ref().map(|c| c.access_key.as_str());
        let mut buckets = Vec::new();
        let mut next = None;
        for r in all {
            if after.as_deref().is_some_and(|a| r.key.as_str() <= a) {
                continue;
            }
            if buckets.len() == max {
                next = buckets
                    .last()
                    .and_then(|b: &Bucket| b.name.as_deref())
                    .map(token_of);
                break;
            }
            // Only the buckets the token can list.
            if self
                .keys
                .authorize(access, Op::Ls, &format!("{}/", r.key))
                .await
                .is_ok()
            {
                buckets.push(Bucket {
                    name: Some(r.key.clone()),
                    creation_date: Some(timestamp(r.version.ms)),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token: next,
            prefix: req.input.prefix.clone(),
            owner: user_of(&req).map(|u| Owner {
                display_name: Some(u.clone()),
                id: Some(u),
            }),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.require_bucket(&bucket).await?;
        let (page, _) = self.list(&bucket, "", None, None, 1).await?;
        if !page.is_empty() {
            return Err(s3_error!(BucketNotEmpty));
        }
        self.write(BUCKETS_NS, &bucket, None).await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let owner = user_of(&req);
        let headers = req.headers;
        let input = req.input;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            // Ignoring them would overwrite what the client asked to keep.
            return Err(conditional_write());
        }
        self.require_bucket(&input.bucket).await?;
        if input
            .content_length
            .is_some_and(|l| l as u64 > MAX_OBJECT_BYTES)
        {
            return Err(s3_error!(EntityTooLarge));
        }
        let spooled = self.spool(input.body, MAX_OBJECT_BYTES).await?;
        check_content_md5(&headers, input.content_md5.as_deref(), &spooled)?;
        let name = format!("{}/{}", input.bucket, input.key);
        let headers = stored_headers(
            input.cache_control,
            input.content_disposition,
            input.content_encoding,
            input.content_language,
            input.expires.as_ref(),
        )?;
        let (spooled, basis) = self
            .store(spooled, &name, input.content_type.clone(), false)
            .await?;
        let tag = spooled.etag()?;
        let entry = NameEntry {
            object: Some(spooled.object),
            size: spooled.size,
            etag: tag.clone(),
            content_type: input.content_type.clone(),
            meta: meta_pairs(input.metadata),
            owner,
            blob: None,
            headers,
            parts: Vec::new(),
            pieces: Vec::new(),
        };
        self.name_stored(
            &input.bucket,
            &input.key,
            entry,
            basis,
            spooled,
            &name,
            input.content_type,
        )
        .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (r, e) = self.require_key(&input.bucket, &input.key).await?;
        conditions!(input).check(&e.etag, r.version.ms, true)?;
        let size = e.size;
        let mut parts_count = None;
        let range = match (&input.range, input.part_number) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "a Range header and a partNumber cannot be combined"
                ))
            }
            (None, None) => None,
            (Some(range), None) => Some(range.check(size).map_err(|_| s3_error!(InvalidRange))?),
            (None, Some(n)) => {
                let ((start, end), count) = part_range(&e, n)?;
                parts_count = count;
                // A multipart object's part is answered as a range (206);
                // the one part of any other object is the whole object.
                count.map(|_| start..end)
            }
        };
        let (tx, rx) = mpsc::channel(DOWNLOAD_BUFFER);
        let (start, end) = range.as_ref().map_or((0, size), |r| (r.start, r.end));
        let source = Source::of(&self.shared, &e, start, end).await?;
        let (len, content_range) = match range {
            None => (size, None),
            Some(_) => (
                end - start,
                Some(format!("bytes {}-{}/{}", start, end.max(1) - 1, size)),
            ),
        };
        if start == end && range.is_some() {
            // An empty part (S3 allows an empty last part).
            drop(tx);
            return Ok(S3Response::new(GetObjectOutput {
                body: Some(ChannelBody::blob(rx, 0)),
                content_length: Some(0),
                e_tag: Some(etag(&e.etag)),
                parts_count,
                ..Default::default()
            }));
        }
        tokio::spawn(source.send(self.shared.clone(), start, end, tx));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(ChannelBody::blob(rx, len)),
            content_length: Some(len as i64),
            content_range,
            parts_count,
            content_type: e.content_type.clone(),
            e_tag: Some(etag(&e.etag)),
            last_modified: Some(timestamp(r.version.ms)),
            metadata: meta_map(&e.meta),
            accept_ranges: Some("bytes".into()),
            cache_control: header_of(&e, "cache-control"),
            content_disposition: header_of(&e, "content-disposition"),
            content_encoding: header_of(&e, "content-encoding"),
            content_language: header_of(&e, "content-language"),
            expires: expires_of(&e),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (r, e) = self.require_key(&input.bucket, &input.key).await?;
        conditions!(input).check(&e.etag, r.version.ms, true)?;
        let (len, parts_count) = match input.part_number {
            None => (e.size, None),
            Some(n) => {
                let ((start, end), count) = part_range(&e, n)?;
                (end - start, count)
            }
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(len as i64),
            parts_count,
            content_type: e.content_type.clone(),
            e_tag: Some(etag(&e.etag)),
            last_modified: Some(timestamp(r.version.ms)),
            metadata: meta_map(&e.meta),
            accept_ranges: Some("bytes".into()),
            cache_control: header_of(&e, "cache-control"),
            content_disposition: header_of(&e, "content-disposition"),
            content_encoding: header_of(&e, "content-encoding"),
            content_language: header_of(&e, "content-language"),
            expires: expires_of(&e),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        // Deleting a key that does not exist succeeds, as in S3.
        if self.live(&input.bucket, &input.key).await?.is_some() {
            self.write(&input.bucket, &input.key, None).await?;
        }
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let access = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        if input.delete.objects.len() > MAX_DELETE_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "at most {MAX_DELETE_KEYS} keys in one DeleteObjects"
            ));
        }
        self.require_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            let resource = format!("{}/{}", input.bucket, o.key);
            let r = match self
                .keys
                .authorize(access.as_deref(), Op::Rm, &resource)
                .await
            {
                Err(e) => Err(e),
                Ok(_) => match self.live(&input.bucket, &o.key).await {
                    Ok(Some(_)) => self.write(&input.bucket, &o.key, None).await.map(|_| ()),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    key: Some(o.key),
                    code: Some(e.code().as_str().to_string()),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let access = req.credentials.as_ref().map(|c| c.access_key.clone());
        let owner = user_of(&req);
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let (src_bucket, src_key, _, mut e) = self
            .copy_source(
                access.as_deref(),
                &input.copy_source,
                conditions!(input, copy_source),
            )
            .await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if replace {
            e.meta = meta_pairs(input.metadata);
            e.content_type = input.content_type;
            e.headers = stored_headers(
                input.cache_control,
                input.content_disposition,
                input.content_encoding,
                input.content_language,
                input.expires.as_ref(),
            )?;
        } else if src_bucket == input.bucket && src_key == input.key {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself needs the REPLACE metadata directive"
            ));
        }
        e.owner = owner;
        // Objects are named by their bytes: a copy is a second name for
        // the same object, no byte moves.
        let v = self
            .write(&input.bucket, &input.key, Some(e.clone()))
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&e.etag)),
                last_modified: Some(timestamp(v.ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = delimiter_of(input.delimiter.as_ref());
        let enc = ListEncoding::of(input.encoding_type.as_ref());
        let max = input
            .max_keys
            .map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => Some(after_of(t)?),
            (None, Some(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let (page, truncated) = if max == 0 {
            (Vec::new(), false)
        } else {
            self.list(&input.bucket, &prefix, delimiter.as_deref(), after, max)
                .await?
        };
        let next = truncated
            .then(|| page.last().map(|l| token_of(l.resume_after())))
            .flatten();
        let owners = input.fetch_owner == Some(true);
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        for l in page {
            match l {
                Listed::Key(r) => {
                    let mut o = Self::object_of(&r);
                    o.key = enc.opt(o.key);
                    if !owners {
                        o.owner = None;
                    }
                    contents.push(o);
                }
                Listed::CommonPrefix(p) => prefixes.push(CommonPrefix {
                    prefix: Some(enc.s(p)),
                }),
            }
        }
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc.s(prefix)),
            delimiter: enc.opt(delimiter),
            encoding_type: enc.echo(),
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            continuation_token: input.continuation_token,
            start_after: enc.opt(input.start_after),
            is_truncated: Some(truncated),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = delimiter_of(input.delimiter.as_ref());
        let enc = ListEncoding::of(input.encoding_type.as_ref());
        let max = input
            .max_keys
            .map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        let after = input.marker.clone().filter(|m| !m.is_empty());
        let (page, truncated) = if max == 0 {
            (Vec::new(), false)
        } else {
            self.list(&input.bucket, &prefix, delimiter.as_deref(), after, max)
                .await?
        };
        let next = truncated
            .then(|| page.last().map(|l| l.resume_after().to_string()))
            .flatten();
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        for l in page {
            match l {
                Listed::Key(r) => {
                    let mut o = Self::object_of(&r);
                    o.key = enc.opt(o.key);
                    contents.push(o);
                }
                Listed::CommonPrefix(p) => prefixes.push(CommonPrefix {
                    prefix: Some(enc.s(p)),
                }),
            }
        }
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            // V1 answers its Prefix as given, encoded or not (clients
            // decode Delimiter, Marker, NextMarker, keys and common
            // prefixes only).
            prefix: Some(prefix),
            delimiter: enc.opt(delimiter),
            encoding_type: enc.echo(),
            // Always present, empty when none was given (clients read it).
            marker: Some(enc.s(input.marker.unwrap_or_default())),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            next_marker: enc.opt(next),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = delimiter_of(input.delimiter.as_ref());
        let enc = ListEncoding::of(input.encoding_type.as_ref());
        let max = input
            .max_keys
            .map_or(MAX_KEYS, |m| (m.max(0) as usize).min(MAX_KEYS));
        let after = input.key_marker.clone().filter(|m| !m.is_empty());
        let (page, truncated) = if max == 0 {
            (Vec::new(), false)
        } else {
            self.list(&input.bucket, &prefix, delimiter.as_deref(), after, max)
                .await?
        };
        let next = truncated
            .then(|| page.last().map(|l| l.resume_after().to_string()))
            .flatten();
        let mut versions = Vec::new();
        let mut prefixes = Vec::new();
        for l in page {
            match l {
                Listed::Key(r) => {
                    let o = Self::object_of(&r);
                    versions.push(ObjectVersion {
                        key: enc.opt(o.key),
                        size: o.size,
                        e_tag: o.e_tag,
                        last_modified: o.last_modified,
                        owner: o.owner,
                        is_latest: Some(true),
                        version_id: Some("null".into()),
                        ..Default::default()
                    });
                }
                Listed::CommonPrefix(p) => prefixes.push(CommonPrefix {
                    prefix: Some(enc.s(p)),
                }),
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(enc.s(prefix)),
            delimiter: enc.opt(delimiter),
            encoding_type: enc.echo(),
            key_marker: enc.opt(input.key_marker),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: enc.opt(next.clone()),
            next_version_id_marker: next.map(|_| "null".into()),
            versions: Some(versions),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let owner = user_of(&req);
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let id: String = rand::random::<[u8; 16]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let up = Upload {
            key: input.key.clone(),
            content_type: input.content_type,
            meta: meta_pairs(input.metadata),
            owner: owner.clone(),
            created_ms: now_ms(),
            headers: stored_headers(
                input.cache_control,
                input.content_disposition,
                input.content_encoding,
                input.content_language,
                input.expires.as_ref(),
            )?,
            completed: None,
        };
        let mut blob = Vec::new();
        ciborium::into_writer(&up, &mut blob).map_err(|e| s3_error!(InternalError, "{e}"))?;
        self.write(
            &uploads_ns(&input.bucket),
            &id,
            Some(NameEntry {
                owner,
                blob: Some(blob),
                ..NameEntry::default()
            }),
        )
        .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let headers = req.headers;
        let input = req.input;
        check_part_number(input.part_number)?;
        let (_, up) = self.upload(&input.bucket, &input.upload_id).await?;
        if up.key != input.key {
            return Err(s3_error!(NoSuchUpload));
        }
        let spooled = self.spool(input.body, MAX_OBJECT_BYTES).await?;
        check_content_md5(&headers, input.content_md5.as_deref(), &spooled)?;
        let (tag, _) = self
            .store_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                input.part_number,
                spooled,
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let access = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        check_part_number(input.part_number)?;
        let (_, up) = self.upload(&input.bucket, &input.upload_id).await?;
        if up.key != input.key {
            return Err(s3_error!(NoSuchUpload));
        }
        // The part is written under the upload's key (authorized as a
        // put by the access check); the source needs `get`.
        let (_, _, _, e) = self
            .copy_source(
                access.as_deref(),
                &input.copy_source,
                conditions!(input, copy_source),
            )
            .await?;
        let (start, end) = match input.copy_source_range.as_deref() {
            None => (0, e.size),
            Some(r) => copy_range(r, e.size)?,
        };
        let source = Source::of(&self.shared, &e, start, end).await?;
        // The range is read (each segment decoded from verified shards)
        // into a spool, and stored as the part like an uploaded one.
        let mut spool = Spool::new(&self.cfg.spool_dir, MAX_OBJECT_BYTES).await?;
        let (tx, mut rx) = mpsc::channel(DOWNLOAD_BUFFER);
        tokio::spawn(source.send(self.shared.clone(), start, end, tx));
        let mut got = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk =
                chunk.map_err(|e| s3_error!(InternalError, "reading the copy source: {e}"))?;
            got += chunk.len() as u64;
            spool.write(&chunk).await?;
        }
        if got != end - start {
            return Err(s3_error!(
                InternalError,
                "reading the copy source ended after {got} of {} bytes",
                end - start
            ));
        }
        let spooled = spool.finish().await?;
        let (tag, ms) = self
            .store_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                input.part_number,
                spooled,
            )
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(timestamp(ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let (_, up) = self.upload(&input.bucket, &input.upload_id).await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.map_or(1000, |m| m.clamp(0, 1000)) as usize;
        let mut parts = Vec::new();
        let mut truncated = false;
        for r in self.parts(&input.bucket, &input.upload_id).await? {
            let Some(n) = r.key.rsplit('/').next().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if n <= marker {
                continue;
            }
            if parts.len() == max {
                truncated = true;
                break;
            }
            let e = r.entry.clone().unwrap_or_default();
            parts.push(Part {
                part_number: Some(n),
                size: Some(e.size as i64),
                e_tag: Some(etag(&e.etag)),
                last_modified: Some(timestamp(r.version.ms)),
                ..Default::default()
            });
        }
        let next = parts.last().and_then(|p: &Part| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(up.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            return Err(conditional_write());
        }
        let (_, up) = self.upload_record(&input.bucket, &input.upload_id).await?;
        if up.key != input.key {
            return Err(s3_error!(NoSuchUpload));
        }
        if let Some(tag) = &up.completed {
            // A retried completion: the object is named already.
            return Ok(S3Response::new(CompleteMultipartUploadOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                e_tag: Some(etag(tag)),
                ..Default::default()
            }));
        }
        let wanted = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if wanted.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts"));
        }
        let stored: std::collections::HashMap<i32, NameEntry> = self
            .parts(&input.bucket, &input.upload_id)
            .await?
            .into_iter()
            .filter_map(|r| {
                let n = r.key.rsplit('/').next()?.parse::<i32>().ok()?;
                Some((n, r.entry?))
            })
            .collect();
        let mut chosen: Vec<NameEntry> = Vec::with_capacity(wanted.len());
        let mut last = 0;
        for (i, p) in wanted.iter().enumerate() {
            let n = p.part_number.unwrap_or(0);
            if n <= last {
                return Err(s3_error!(InvalidPartOrder));
            }
            last = n;
            let e = stored.get(&n).ok_or_else(|| s3_error!(InvalidPart))?;
            if let Some(ETag::Strong(t) | ETag::Weak(t)) = &p.e_tag {
                if t.trim_matches('"') != e.etag {
                    return Err(s3_error!(InvalidPart, "part {n}: the ETag does not match"));
                }
            }
            if i + 1 < wanted.len() && e.size < MIN_PART {
                return Err(s3_error!(EntityTooSmall, "part {n} is smaller than 5 MiB"));
            }
            chosen.push(e.clone());
        }
        // Reading and storing the whole can outlast a client's read
        // timeout: s3s sends whitespace while this future runs.
        let g = self.clone();
        let future = Box::pin(async move {
            g.finish_upload(input.bucket, input.key, input.upload_id, up, chosen)
                .await
        });
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            future: Some(future),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.upload(&input.bucket, &input.upload_id).await?;
        self.drop_upload(&input.bucket, &input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        for r in names::list_all(&self.shared, &uploads_ns(&input.bucket), "", 100_000)
            .await
            .map_err(name_err)?
        {
            if r.key.contains('/') {
                continue;
            }
            let Some(up) = r
                .entry
                .as_ref()
                .and_then(|e| e.blob.as_deref())
                .and_then(|b| ciborium::from_reader::<Upload, _>(b).ok())
            else {
                continue;
            };
            if up.completed.is_some() || !up.key.starts_with(&prefix) {
                continue;
            }
            uploads.push(MultipartUpload {
                key: Some(up.key),
                upload_id: Some(r.key.clone()),
                initiated: Some(timestamp(up.created_ms)),
                ..Default::default()
            });
        }
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

/// Aborts uploads untouched for longer than the configured expiry: each
/// node looks at the upload records it holds and aborts those of which it
/// is the first live replica (so one node does it, whichever is up).
pub(crate) async fn expire_uploads_loop(g: Gateway) {
    let every = (g.cfg.upload_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = expire_uploads(&g).await {
            tracing::debug!(error = ?e, "expiring multipart uploads failed");
        }
    }
}

async fn expire_uploads(g: &Gateway) -> S3Result<()> {
    let now = now_ms();
    let expiry = g.cfg.upload_expiry.as_millis() as u64;
    let namespaces = g.shared.names.namespaces().map_err(name_err)?;
    for ns in namespaces {
        let Some(bucket) = ns.strip_prefix(".uploads/") else {
            continue;
        };
        let view = g.shared.membership().view();
        if names::ranking(&view, &ns).first() != Some(&g.shared.local) {
            continue;
        }
        let (records, _) = g
            .shared
            .names
            .list(&ns, "", None, MAX_RECORDS_PER_MESSAGE)
            .map_err(name_err)?;
        for r in records {
            if r.key.contains('/') || r.is_tombstone() {
                continue;
            }
            if now.saturating_sub(r.version.ms) > expiry {
                tracing::info!(bucket, upload = %r.key, "aborting an abandoned multipart upload");
                g.drop_upload(bucket, &r.key).await?;
            }
        }
    }
    Ok(())
}

fn names_data_err(e: NameError) -> DataError {
    match e.kind() {
        ErrorKind::BadRequest => DataError::BadRequest(e.to_string()),
        _ => DataError::Internal(e.to_string()),
    }
}

fn refs_data_err(e: RefError) -> DataError {
    match e {
        RefError::Names(e) => names_data_err(e),
        RefError::Data(e) => e,
        RefError::Invalid(m) => DataError::BadRequest(m),
        e @ RefError::Condemned(_) => DataError::Internal(e.to_string()),
    }
}

fn check_bucket_name(bucket: &str) -> Result<(), DataError> {
    if !s3s::path::check_bucket_name(bucket) {
        return Err(DataError::BadRequest(format!(
            "{bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, dots and hyphens)"
        )));
    }
    Ok(())
}

/// `dynostore put --name BUCKET/KEY`: names a stored object, creating the
/// bucket when absent.
pub(crate) async fn name_object(
    shared: &Arc<Shared>,
    bucket: &str,
    key: &str,
    object: ObjectId,
    size: u64,
    etag: String,
    content_type: Option<String>,
) -> Result<(), DataError> {
    check_bucket_name(bucket)?;
    if key.is_empty() {
        return Err(DataError::BadRequest("an empty key".into()));
    }
    let m = datapath::require_manifest(shared, object).await?;
    if m.size != size {
        return Err(DataError::BadRequest(format!(
            "object {} has {} bytes, not {size}",
            object.short(),
            m.size
        )));
    }
    let bucket_live = names::get(shared, BUCKETS_NS, bucket)
        .await
        .map_err(names_data_err)?
        .is_some_and(|r| !r.is_tombstone());
    if !bucket_live {
        refs::write_name(
            shared,
            BUCKETS_NS,
            bucket,
            Some(NameEntry::default()),
            Basis::Lookup,
        )
        .await
        .map_err(refs_data_err)?;
    }
    let basis = match m.meta.collectable {
        true => Basis::Generation(m.generation),
        false => Basis::Kept,
    };
    refs::write_name(
        shared,
        bucket,
        key,
        Some(NameEntry {
            object: Some(object),
            size,
            etag,
            content_type,
            ..NameEntry::default()
        }),
        basis,
    )
    .await
    .map_err(refs_data_err)?;
    Ok(())
}

/// `dynostore rm BUCKET/KEY`: deletes a name (nothing to do when there is
/// no live one).
pub(crate) async fn unname_object(
    shared: &Arc<Shared>,
    bucket: &str,
    key: &str,
) -> Result<(), DataError> {
    check_bucket_name(bucket)?;
    let live = names::get(shared, bucket, key)
        .await
        .map_err(names_data_err)?
        .is_some_and(|r| !r.is_tombstone());
    if live {
        refs::write_name(shared, bucket, key, None, Basis::Lookup)
            .await
            .map_err(refs_data_err)?;
    }
    Ok(())
}

/// `dynostore get BUCKET/KEY`: the object a name points at, or the pieces
/// of a multipart object stored as its parts.
pub(crate) async fn resolve(
    shared: &Arc<Shared>,
    bucket: &str,
    key: &str,
) -> Result<ClientResponse, DataError> {
    let r = names::get(shared, bucket, key)
        .await
        .map_err(names_data_err)?
        .and_then(|r| r.entry);
    match r {
        Some(NameEntry {
            object: Some(object),
            size,
            ..
        }) => Ok(ClientResponse::Resolved { object, size }),
        Some(e) if !e.pieces.is_empty() => Ok(ClientResponse::ResolvedPieces {
            pieces: e.pieces,
            size: e.size,
        }),
        _ => Err(DataError::BadRequest(format!(
            "no object is named {bucket}/{key}"
        ))),
    }
}

/// `dynostore ls BUCKET[/PREFIX]`: one page of live names.
pub(crate) async fn list_names(
    shared: &Arc<Shared>,
    bucket: &str,
    prefix: &str,
    after: Option<String>,
) -> Result<(Vec<NameRecord>, bool), DataError> {
    check_bucket_name(bucket)?;
    let (page, more) = names::list_page(
        shared,
        bucket,
        prefix,
        after.as_deref(),
        MAX_RECORDS_PER_MESSAGE as u32,
    )
    .await
    .map_err(names_data_err)?;
    let last = page.last().map(|r| r.key.clone());
    let live: Vec<NameRecord> = page.into_iter().filter(|r| !r.is_tombstone()).collect();
    // A page of tombstones only still says where to go on.
    let truncated = more && last.is_some();
    if live.is_empty() && truncated {
        return Box::pin(list_names(shared, bucket, prefix, last)).await;
    }
    Ok((live, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_number_reads_its_part_or_the_whole_of_a_one_piece_object() {
        let whole = NameEntry {
            size: 10,
            ..NameEntry::default()
        };
        assert_eq!(part_range(&whole, 1).unwrap(), ((0, 10), None));
        assert!(part_range(&whole, 2).is_err());
        assert!(part_range(&whole, 0).is_err());
        let multi = NameEntry {
            size: 13,
            parts: vec![5, 5, 3],
            ..NameEntry::default()
        };
        assert_eq!(part_range(&multi, 1).unwrap(), ((0, 5), Some(3)));
        assert_eq!(part_range(&multi, 3).unwrap(), ((10, 13), Some(3)));
        assert!(part_range(&multi, 4).is_err());
        assert!(part_range(&multi, 10_001).is_err());
    }

    #[test]
    fn copy_ranges_are_inclusive_and_within_the_object() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), (5, 6));
        for (r, size) in [
            ("bytes=0-10", 10),
            ("bytes=6-5", 10),
            ("bytes=0-0", 0),
            ("0-9", 10),
            ("bytes=a-9", 10),
            ("bytes=-9", 10),
        ] {
            assert!(copy_range(r, size).is_err(), "{r} of {size}");
        }
    }

    #[test]
    fn continuation_tokens_round_trip() {
        for s in ["", "a/b", "ünï cödé/ x"] {
            assert_eq!(after_of(&token_of(s)).unwrap(), s);
        }
        assert!(after_of("zz").is_err());
    }
}
