//! Client-side encryption: age v1 files (X25519 recipients,
//! ChaCha20-Poly1305 in 64 KiB chunks) made and opened by the CLI, so that
//! nodes only ever hold ciphertext.
//!
//! - **Put** encrypts the file to a 0600 temporary file first (the put
//!   header carries the object's ID, the BLAKE3 of the ciphertext, before
//!   the first byte is sent), then stores that file as any other. Nodes
//!   verify shards exactly as for plaintext objects; they never see a key.
//! - **Get** streams the ciphertext from the entry peer through a pipe to
//!   a blocking thread that decrypts into `FILE.partial` while the async
//!   side hashes every byte against the ID. The partial file is renamed
//!   only when both the ID matched and age authenticated every chunk
//!   (including the last-chunk flag, so truncation fails); on any failure
//!   it is removed.
//! - **Share** adds a recipient without re-uploading: it unwraps the file
//!   key from the object's age header with the sharer's identity, wraps it
//!   for the new recipients in a new header (with its HMAC under the same
//!   file key) and stores a small *share object*: [`SHARE_MAGIC`] followed
//!   by a CBOR [`ShareRecord`] (target ID, length of the target's header,
//!   the new header). A get of the share fetches the target, verifies its
//!   ID, drops its header and decrypts the new header + the target's
//!   payload: a standard age file.
//!
//! The age header text and its MAC are written here (the `age` crate does
//! not expose them): `HMAC-SHA256(HKDF-SHA256(file key, salt "", info
//! "header"), header up to and including "---")`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use age::x25519;
use age_core::format::{FileKey, Stanza};
use base64::Engine as _;
use hmac::Mac as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use dynostore_protocol::wire::PutReceipt;
use dynostore_protocol::ObjectId;

use crate::client::Client;
use crate::objects::{self, NoProgress, ObjectError, Output, Progress, PutParams, Sink};

/// An age X25519 recipient (public key, `age1...`).
pub type Recipient = x25519::Recipient;

/// The first bytes of every age v1 file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// The first bytes of a share object.
pub const SHARE_MAGIC: &[u8] = b"dynostore-share/v1\n";
/// Largest age header read or written (a header is one line per stanza).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest share object accepted (magic + CBOR record with one header).
pub const MAX_SHARE_BYTES: usize = MAX_HEADER_BYTES + 4096;
/// Bytes buffered between the network and the decrypting thread.
const PIPE_BYTES: usize = 1 << 20;
/// Read/write buffer of the decrypting and encrypting threads.
const IO_BUF: usize = 1 << 20;

/// Failures of encryption, decryption and sharing, as the user sees them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0} already exists (keygen never overwrites a key)")]
    Exists(PathBuf),
    #[error("bad recipient {value:?}: {reason} (expected an X25519 public key, age1...)")]
    Recipient { value: String, reason: String },
    #[error("no recipients to encrypt to")]
    NoRecipients,
    #[error("bad identity file {path}: {reason}")]
    Identity { path: String, reason: String },
    #[error("wrong identity: no identity in {identity} is a recipient of object {object}; nothing was written")]
    WrongIdentity { identity: String, object: ObjectId },
    #[error("object {0} is not encrypted (neither an age file nor a share); get it without -i")]
    NotEncrypted(ObjectId),
    #[error("object {object} failed decryption: {reason}; nothing was kept")]
    Decrypt { object: ObjectId, reason: String },
    #[error("bad age header in object {object}: {reason}")]
    Header { object: ObjectId, reason: String },
    #[error("object {object} is not a valid share: {reason}")]
    BadShare { object: ObjectId, reason: String },
    #[error("the requested range ends at {end}, the plaintext has {size} bytes")]
    Range { end: u64, size: u64 },
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("the pipe to the decrypting thread broke: {0}")]
    Pipe(io::Error),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Identities loaded from one identity file, with the file's name for errors.
pub struct Identities {
    label: String,
    ids: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("file", &self.label)
            .field("count", &self.ids.len())
            .finish()
    }
}

impl Identities {
    /// Reads an age identity file (ours from `keygen`, or `age-keygen`'s).
    pub fn load(path: &Path) -> Result<Identities, CryptError> {
        let label = path.display().to_string();
        let bad = |reason: String| CryptError::Identity {
            path: label.clone(),
            reason,
        };
        let file = age::IdentityFile::from_file(label.clone()).map_err(|e| bad(e.to_string()))?;
        let ids = file.into_identities().map_err(|e| bad(e.to_string()))?;
        if ids.is_empty() {
            return Err(bad("it holds no identity".into()));
        }
        Ok(Identities { label, ids })
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.ids.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }

    /// The file key of a header's stanzas, if one of these identities can
    /// unwrap one.
    fn unwrap(&self, stanzas: &[Stanza], object: ObjectId) -> Result<FileKey, CryptError> {
        for id in self.iter() {
            match id.unwrap_stanzas(stanzas) {
                Some(Ok(k)) => return Ok(k),
                Some(Err(e)) => {
                    return Err(CryptError::Decrypt {
                        object,
                        reason: e.to_string(),
                    })
                }
                None => {}
            }
        }
        Err(CryptError::WrongIdentity {
            identity: self.label.clone(),
            object,
        })
    }
}

/// Writes a new X25519 identity to `path` (mode 0600, never overwriting)
/// in age's format; returns its recipient (public key), `age1...`.
pub fn keygen(path: &Path) -> Result<String, CryptError> {
    let id = x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write_err = |source| CryptError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            CryptError::Exists(path.to_path_buf())
        } else {
            write_err(e)
        }
    })?;
    let text = format!(
        "# dynostore keygen (age X25519 identity)\n# public key: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(recipient)
}

/// Parses recipients given as `age1...` strings and as recipients files
/// (one per line; blank lines and `#` comments skipped).
pub fn parse_recipients(
    values: &[String],
    files: &[PathBuf],
) -> Result<Vec<x25519::Recipient>, CryptError> {
    let mut out = Vec::new();
    let mut parse = |v: &str| {
        x25519::Recipient::from_str(v)
            .map(|r| out.push(r))
            .map_err(|e| CryptError::Recipient {
                value: v.to_string(),
                reason: e.to_string(),
            })
    };
    for v in values {
        // DYNOSTORE_ENCRYPT_TO may hold several, comma- or space-separated.
        for part in v.split([',', ' ']).filter(|p| !p.is_empty()) {
            parse(part)?;
        }
    }
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|source| CryptError::Read {
            path: f.clone(),
            source,
        })?;
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                parse(line)?;
            }
        }
    }
    Ok(out)
}

/// Encrypts `src` to a new temporary file (0600, in the temporary
/// directory: `TMPDIR`), streaming; the file is deleted when dropped.
/// `done` counts the plaintext bytes encrypted so far.
pub fn encrypt_to_temp(
    src: &Path,
    recipients: &[x25519::Recipient],
    done: &AtomicU64,
) -> Result<tempfile::NamedTempFile, CryptError> {
    if recipients.is_empty() {
        return Err(CryptError::NoRecipients);
    }
    let read_err = |source| CryptError::Read {
        path: src.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(src).map_err(read_err)?;
    if meta.is_dir() {
        return Err(ObjectError::IsDirectory {
            path: src.to_path_buf(),
        }
        .into());
    }
    let input = std::fs::File::open(src).map_err(read_err)?;
    // tempfile creates its files with mode 0600.
    let tmp = tempfile::Builder::new()
        .prefix(".dynostore-encrypt-")
        .tempfile()
        .map_err(|source| CryptError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
    let tmp_err = |source| CryptError::Write {
        path: tmp.path().to_path_buf(),
        source,
    };
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| CryptError::Encrypt(e.to_string()))?;
    let mut w = enc
        .wrap_output(io::BufWriter::with_capacity(IO_BUF, tmp.as_file()))
        .map_err(tmp_err)?;
    let mut r = BufReader::with_capacity(IO_BUF, input);
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = r.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(tmp_err)?;
        done.fetch_add(n as u64, Ordering::Relaxed);
    }
    let mut out = w.finish().map_err(tmp_err)?;
    out.flush().map_err(tmp_err)?;
    drop(out);
    tmp.as_file().sync_data().map_err(tmp_err)?;
    Ok(tmp)
}

/// Encrypts `path` to `recipients` and stores the ciphertext.
pub async fn put_encrypted(
    client: &Client,
    path: &Path,
    params: &PutParams,
    recipients: &[x25519::Recipient],
    progress: &mut dyn Progress,
) -> Result<PutReceipt, CryptError> {
    let src = path.to_path_buf();
    let recipients = recipients.to_vec();
    // The encryption pass shows on the progress bar too (then the put's).
    if let Ok(m) = tokio::fs::metadata(path).await {
        progress.set_len(m.len());
    }
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let mut task =
        tokio::task::spawn_blocking(move || encrypt_to_temp(&src, &recipients, &counter));
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let tmp = loop {
        tokio::select! {
            r = &mut task => break r.map_err(|e| CryptError::Internal(e.to_string()))??,
            _ = tick.tick() => progress.advance(done.load(Ordering::Relaxed)),
        }
    };
    let r = objects::put_file(client, tmp.path(), params, progress).await?;
    drop(tmp);
    Ok(r)
}

/// What a get does with the object's bytes.
#[derive(Debug, Clone)]
pub enum GetMode {
    /// Decrypt with these identities (a share is followed to its target).
    Decrypt(Arc<Identities>),
    /// Write the age file as is (a share is followed and recombined: its
    /// header followed by the target's payload).
    Raw,
}

/// A plaintext byte range: `offset`, and `len` bytes (`None`: to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: Option<u64>,
}

/// Fetches an object (or the target of a share) and decrypts it (or writes
/// the age file) to `output`; returns the bytes written. A file output is
/// written as `FILE.partial` and renamed only when every check passed.
pub async fn get(
    client: &Client,
    object: ObjectId,
    output: &Output,
    mode: GetMode,
    range: Option<Range>,
    progress: &mut dyn Progress,
) -> Result<u64, CryptError> {
    let partial = match output {
        Output::Stdout => None,
        Output::File(dest) => Some(partial_path(dest)),
    };
    let action = match &mode {
        GetMode::Decrypt(ids) => Action::Decrypt(ids.clone(), range),
        GetMode::Raw => Action::Raw,
    };
    let job = Job {
        object,
        splice: None,
        detect_share: true,
        action: action.clone(),
        out: partial.clone(),
    };
    let written = match fetch_through(client, object, job, progress).await? {
        Done::Written(n) => n,
        Done::Share(bytes) => {
            let rec = ShareRecord::decode(object, &bytes)?;
            let job = Job {
                object: rec.target,
                splice: Some((rec.header.into_bytes(), rec.header_len)),
                detect_share: false,
                action,
                out: partial.clone(),
            };
            match fetch_through(client, rec.target, job, progress).await? {
                Done::Written(n) => n,
                _ => return Err(CryptError::Internal("unexpected share result".into())),
            }
        }
        Done::Header(_) => return Err(CryptError::Internal("unexpected header result".into())),
    };
    if let (Output::File(dest), Some(tmp)) = (output, partial) {
        if let Err(source) = tokio::fs::rename(&tmp, dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(CryptError::Write {
                path: dest.clone(),
                source,
            });
        }
    }
    Ok(written)
}

/// What `share` stored.
#[derive(Debug, Clone)]
pub struct ShareReceipt {
    pub receipt: PutReceipt,
    /// The object holding the payload (the original, also when sharing a share).
    pub target: ObjectId,
}

/// Gives `recipients` access to `object` (an encrypted object or a share)
/// without re-uploading it: stores a share object and returns its receipt.
pub async fn share(
    client: &Client,
    object: ObjectId,
    identities: &Identities,
    recipients: &[x25519::Recipient],
    params: &PutParams,
) -> Result<ShareReceipt, CryptError> {
    if recipients.is_empty() {
        return Err(CryptError::NoRecipients);
    }
    let job = Job {
        object,
        splice: None,
        detect_share: true,
        action: Action::Header,
        out: None,
    };
    let (target, header, header_len) =
        match fetch_through(client, object, job, &mut NoProgress).await? {
            Done::Header(h) => {
                let len = h.len() as u64;
                (object, h, len)
            }
            Done::Share(bytes) => {
                let rec = ShareRecord::decode(object, &bytes)?;
                (rec.target, rec.header.into_bytes(), rec.header_len)
            }
            Done::Written(_) => return Err(CryptError::Internal("unexpected write".into())),
        };
    let parsed = parse_header(&header).map_err(|reason| CryptError::Header { object, reason })?;
    let file_key = identities.unwrap(&parsed.stanzas, object)?;
    if !parsed.mac_ok(&header, &file_key) {
        return Err(CryptError::Header {
            object,
            reason: "its MAC does not match the file key".into(),
        });
    }
    let mut stanzas = Vec::new();
    for r in recipients {
        let (mut s, _labels) = age::Recipient::wrap_file_key(r, &file_key)
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        stanzas.append(&mut s);
    }
    let new_header = write_header(&stanzas, &file_key);
    let rec = ShareRecord {
        target,
        header_len,
        header: String::from_utf8(new_header)
            .map_err(|e| CryptError::Internal(format!("header not ASCII: {e}")))?,
    };
    let bytes = rec.encode()?;
    let mut params = params.clone();
    if params.name.is_none() {
        params.name = Some(format!("share of {}", target.short()));
    }
    let receipt = {
        let mut tmp = tempfile::Builder::new()
            .prefix(".dynostore-share-")
            .tempfile()
            .map_err(|source| CryptError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.flush())
            .map_err(|source| CryptError::Write {
                path: tmp.path().to_path_buf(),
                source,
            })?;
        objects::put_file(client, tmp.path(), &params, &mut NoProgress).await?
    };
    Ok(ShareReceipt { receipt, target })
}

/// A share object's content (after [`SHARE_MAGIC`]), CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    /// The encrypted object whose payload this share opens.
    pub target: ObjectId,
    /// The length of the target's own age header (skipped on read).
    pub header_len: u64,
    /// The new age header: stanzas for the new recipients, MAC under the
    /// target's file key.
    pub header: String,
}

impl ShareRecord {
    pub fn encode(&self) -> Result<Vec<u8>, CryptError> {
        let mut out = SHARE_MAGIC.to_vec();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| CryptError::Internal(format!("cannot encode a share: {e}")))?;
        Ok(out)
    }

    /// Decodes and checks a share object's bytes; never panics.
    pub fn decode(object: ObjectId, bytes: &[u8]) -> Result<ShareRecord, CryptError> {
        let bad = |reason: String| CryptError::BadShare { object, reason };
        if bytes.len() > MAX_SHARE_BYTES {
            return Err(bad(format!("{} bytes, over the limit", bytes.len())));
        }
        let body = bytes
            .strip_prefix(SHARE_MAGIC)
            .ok_or_else(|| bad("no share magic".into()))?;
        let rec: ShareRecord = ciborium::from_reader(body).map_err(|e| bad(e.to_string()))?;
        if rec.header_len == 0 || rec.header_len > MAX_HEADER_BYTES as u64 {
            return Err(bad(format!("target header length {}", rec.header_len)));
        }
        let h = parse_header(rec.header.as_bytes()).map_err(bad)?;
        if h.len != rec.header.len() {
            return Err(bad("bytes after the header".into()));
        }
        Ok(rec)
    }
}

/// A parsed age v1 header.
#[derive(Debug)]
struct Header {
    stanzas: Vec<Stanza>,
    mac: Vec<u8>,
    /// Bytes covered by the MAC: up to and including "---".
    mac_input: usize,
    /// Total length, through the final newline.
    len: usize,
}

impl Header {
    fn mac_ok(&self, bytes: &[u8], file_key: &FileKey) -> bool {
        let mut m = header_mac(file_key);
        m.update(&bytes[..self.mac_input]);
        m.verify_slice(&self.mac).is_ok()
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn header_mac(file_key: &FileKey) -> HmacSha256 {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&[]), file_key.expose_secret());
    let mut key = [0u8; 32];
    hk.expand(b"header", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    <HmacSha256 as hmac::Mac>::new_from_slice(&key).expect("HMAC takes any key length")
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// The line at `pos` (without its newline) and the position after it.
fn line_at(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), String> {
    let rest = bytes.get(pos..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("the header ends early")?;
    Ok((&rest[..end], pos + end + 1))
}

/// Parses an age v1 header at the start of `bytes` (strictly: canonical
/// base64, bodies wrapped at 64 columns); never panics.
fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER_BYTES)];
    if !bytes.starts_with(AGE_MAGIC) {
        return Err("not an age v1 file".into());
    }
    let mut pos = AGE_MAGIC.len();
    let mut stanzas = Vec::new();
    loop {
        let start = pos;
        let (line, next) = line_at(bytes, pos)?;
        pos = next;
        let text = std::str::from_utf8(line).map_err(|_| "a header line is not ASCII")?;
        if let Some(mac) = text.strip_prefix("--- ") {
            let mac = B64.decode(mac).map_err(|e| format!("bad MAC: {e}"))?;
            if mac.len() != 32 {
                return Err("bad MAC length".into());
            }
            return Ok(Header {
                stanzas,
                mac,
                mac_input: start + 3,
                len: pos,
            });
        }
        let args = text
            .strip_prefix("-> ")
            .ok_or("a header line is malformed")?;
        let mut args = args.split(' ').map(str::to_string);
        let tag = args
            .next()
            .filter(|t| !t.is_empty())
            .ok_or("empty stanza tag")?;
        let args: Vec<String> = args.collect();
        if args.iter().any(String::is_empty) {
            return Err("empty stanza argument".into());
        }
        let mut body_b64 = String::new();
        loop {
            let (l, next) = line_at(bytes, pos)?;
            pos = next;
            if l.len() > 64 {
                return Err("a stanza body line is over 64 columns".into());
            }
            body_b64.push_str(std::str::from_utf8(l).map_err(|_| "bad stanza body")?);
            if l.len() < 64 {
                break;
            }
        }
        let body = B64
            .decode(&body_b64)
            .map_err(|e| format!("bad stanza body: {e}"))?;
        stanzas.push(Stanza { tag, args, body });
    }
}

/// Writes an age v1 header for `stanzas` with its MAC under `file_key`.
fn write_header(stanzas: &[Stanza], file_key: &FileKey) -> Vec<u8> {
    let mut out = AGE_MAGIC.to_vec();
    for s in stanzas {
        out.extend_from_slice(b"-> ");
        out.extend_from_slice(s.tag.as_bytes());
        for a in &s.args {
            out.push(b' ');
            out.extend_from_slice(a.as_bytes());
        }
        out.push(b'\n');
        let body = B64.encode(&s.body);
        for chunk in body.as_bytes().chunks(64) {
            out.extend_from_slice(chunk);
            out.push(b'\n');
        }
        if body.len() % 64 == 0 {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"---");
    let mut m = header_mac(file_key);
    m.update(&out);
    let mac = m.finalize().into_bytes();
    out.push(b' ');
    out.extend_from_slice(B64.encode(mac).as_bytes());
    out.push(b'\n');
    out
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

/// What the thread does with the bytes it reads.
#[derive(Debug, Clone)]
enum Action {
    Decrypt(Arc<Identities>, Option<Range>),
    Raw,
    /// Keep the age header only (for `share`).
    Header,
}

#[derive(Debug)]
struct Job {
    object: ObjectId,
    /// Read `.0` first, then the object's bytes after its first `.1`.
    splice: Option<(Vec<u8>, u64)>,
    /// Recognise a share object (its bytes are returned, nothing written).
    detect_share: bool,
    action: Action,
    /// The partial file to write (`None`: standard output).
    out: Option<PathBuf>,
}

#[derive(Debug)]
enum Done {
    Written(u64),
    Share(Vec<u8>),
    Header(Vec<u8>),
}

/// Fetches `object` into a blocking thread that runs `job`; fails unless
/// both the fetch (the object's ID) and the job succeeded. Removes the
/// partial output on failure.
async fn fetch_through(
    client: &Client,
    object: ObjectId,
    job: Job,
    progress: &mut dyn Progress,
) -> Result<Done, CryptError> {
    let (w, r) = tokio::io::duplex(PIPE_BYTES);
    let handle = tokio::runtime::Handle::current();
    let partial = job.out.clone();
    let thread =
        tokio::task::spawn_blocking(move || run_job(BlockingRead { handle, inner: r }, job));
    let mut sink: Sink = Box::new(w);
    let fetched = objects::get_into(client, object, &mut sink, progress).await;
    // EOF for the thread.
    drop(sink);
    let done = thread
        .await
        .map_err(|e| CryptError::Internal(format!("the decrypting thread failed: {e}")));
    let result = match (fetched, done) {
        (_, Err(e)) => Err(e),
        // The pipe broke because the thread stopped reading (a wrong
        // identity, a chunk that failed authentication): its error is the
        // cause. Any other fetch failure (unknown object, too few shards,
        // wrong bytes) is the cause of whatever the thread saw.
        (Err(ObjectError::WriteFile { .. }), Ok(Err(e))) => Err(e),
        (Err(e), _) => Err(e.into()),
        (Ok(_), Ok(r)) => r,
    };
    if result.is_err() {
        if let Some(p) = partial {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
    result
}

/// The pipe's read half as a blocking reader (used on a blocking thread).
struct BlockingRead {
    handle: tokio::runtime::Handle,
    inner: tokio::io::DuplexStream,
}

impl Read for BlockingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.handle.block_on(self.inner.read(buf))
    }
}

/// Reads exactly `n` bytes or to EOF; returns how many.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn run_job(mut input: BlockingRead, job: Job) -> Result<Done, CryptError> {
    let object = job.object;
    let pipe = CryptError::Pipe;
    let mut head = Vec::new();
    if let Some((header, skip)) = &job.splice {
        // The target's own header: checked to be an age header of exactly
        // that length, then replaced by the share's.
        let mut old = vec![
            0u8;
            usize::try_from(*skip)
                .unwrap_or(usize::MAX)
                .min(MAX_HEADER_BYTES)
        ];
        let got = read_up_to(&mut input, &mut old).map_err(pipe)?;
        let h =
            parse_header(&old[..got]).map_err(|reason| CryptError::Header { object, reason })?;
        if h.len as u64 != *skip {
            return Err(CryptError::BadShare {
                object,
                reason: format!(
                    "the target's header is {} bytes, the share says {skip}",
                    h.len
                ),
            });
        }
        head.extend_from_slice(header);
    } else if job.detect_share {
        let mut peek = vec![0u8; SHARE_MAGIC.len()];
        let got = read_up_to(&mut input, &mut peek).map_err(pipe)?;
        peek.truncate(got);
        if peek == SHARE_MAGIC {
            let mut all = peek;
            let limit = (MAX_SHARE_BYTES + 1 - all.len()) as u64;
            (&mut input)
                .take(limit)
                .read_to_end(&mut all)
                .map_err(pipe)?;
            if all.len() > MAX_SHARE_BYTES {
                return Err(CryptError::BadShare {
                    object,
                    reason: "over the size limit of a share".into(),
                });
            }
            return Ok(Done::Share(all));
        }
        head = peek;
    }
    let reader = BufReader::with_capacity(IO_BUF, Read::chain(io::Cursor::new(head), input));
    match job.action {
        Action::Header => {
            let mut reader = reader;
            let header = read_header(&mut reader, object)?;
            io::copy(&mut reader, &mut io::sink()).map_err(pipe)?;
            Ok(Done::Header(header))
        }
        Action::Raw => {
            let mut reader = reader;
            let mut out = open_out(job.out.as_deref())?;
            let n = copy(&mut reader, &mut out, job.out.as_deref(), pipe)?;
            finish_out(out, job.out.as_deref())?;
            Ok(Done::Written(n))
        }
        Action::Decrypt(ids, range) => {
            let dec =
                age::Decryptor::new_buffered(reader).map_err(|e| decrypt_err(object, e, &ids))?;
            let mut plain = dec
                .decrypt(ids.iter())
                .map_err(|e| decrypt_err(object, e, &ids))?;
            let stream_err = |e: io::Error| CryptError::Decrypt {
                object,
                reason: e.to_string(),
            };
            let mut out = open_out(job.out.as_deref())?;
            let n = match range {
                None => copy(&mut plain, &mut out, job.out.as_deref(), stream_err)?,
                Some(r) => {
                    let skipped = io::copy(&mut (&mut plain).take(r.offset), &mut io::sink())
                        .map_err(stream_err)?;
                    let n = match r.len {
                        Some(len) => copy(
                            &mut (&mut plain).take(len),
                            &mut out,
                            job.out.as_deref(),
                            stream_err,
                        )?,
                        None => copy(&mut plain, &mut out, job.out.as_deref(), stream_err)?,
                    };
                    // The rest is still authenticated (and the whole
                    // ciphertext hashed by the fetch).
                    let rest = io::copy(&mut plain, &mut io::sink()).map_err(stream_err)?;
                    let want = r.offset + r.len.unwrap_or(0);
                    if skipped < r.offset || r.len.is_some_and(|l| n < l) {
                        return Err(CryptError::Range {
                            end: want,
                            size: skipped + n + rest,
                        });
                    }
                    n
                }
            };
            finish_out(out, job.out.as_deref())?;
            Ok(Done::Written(n))
        }
    }
}

fn decrypt_err(object: ObjectId, e: age::DecryptError, ids: &Identities) -> CryptError {
    match e {
        age::DecryptError::NoMatchingKeys => CryptError::WrongIdentity {
            identity: ids.label.clone(),
            object,
        },
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            CryptError::NotEncrypted(object)
        }
        age::DecryptError::Io(e) => CryptError::Pipe(e),
        other => CryptError::Decrypt {
            object,
            reason: other.to_string(),
        },
    }
}

/// Reads one age header (through its MAC line) from `r`.
fn read_header(r: &mut impl BufRead, object: ObjectId) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let limit = (MAX_HEADER_BYTES - out.len()) as u64;
        let n = r
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut out)
            .map_err(CryptError::Pipe)?;
        let line = &out[before..];
        if n == 0 || !line.ends_with(b"\n") {
            return Err(if before == 0 {
                CryptError::NotEncrypted(object)
            } else {
                CryptError::Header {
                    object,
                    reason: "no end of header within the size limit".into(),
                }
            });
        }
        if before == 0 && line != AGE_MAGIC {
            return Err(CryptError::NotEncrypted(object));
        }
        if line.starts_with(b"--- ") {
            parse_header(&out).map_err(|reason| CryptError::Header { object, reason })?;
            return Ok(out);
        }
    }
}

type Out = io::BufWriter<Box<dyn Write>>;

fn open_out(path: Option<&Path>) -> Result<Out, CryptError> {
    let w: Box<dyn Write> = match path {
        None => Box::new(io::stdout()),
        Some(p) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            // Plaintext of an encrypted object: readable by its owner only.
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            Box::new(opts.open(p).map_err(|source| CryptError::Write {
                path: p.to_path_buf(),
                source,
            })?)
        }
    };
    Ok(io::BufWriter::with_capacity(IO_BUF, w))
}

fn finish_out(mut out: Out, path: Option<&Path>) -> Result<(), CryptError> {
    out.flush().map_err(|source| CryptError::Write {
        path: path.map_or_else(|| PathBuf::from("-"), Path::to_path_buf),
        source,
    })
}

/// Copies `r` to `w`, telling read errors (`read_err`) from write errors.
fn copy(
    r: &mut impl Read,
    w: &mut Out,
    path: Option<&Path>,
    read_err: impl Fn(io::Error) -> CryptError,
) -> Result<u64, CryptError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let got = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        w.write_all(&buf[..got])
            .map_err(|source| CryptError::Write {
                path: path.map_or_else(|| PathBuf::from("-"), Path::to_path_buf),
                source,
            })?;
        n += got as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(plain: &[u8], to: &[x25519::Recipient]) -> Vec<u8> {
        let enc =
            age::Encryptor::with_recipients(to.iter().map(|r| r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    fn decrypt(file: &[u8], id: &x25519::Identity) -> Result<Vec<u8>, String> {
        let d = age::Decryptor::new_buffered(file).map_err(|e| e.to_string())?;
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn header_round_trips_and_the_mac_checks() {
        let a = x25519::Identity::generate();
        let file = encrypt(b"hello", &[a.to_public()]);
        let h = parse_header(&file).unwrap();
        assert_eq!(&file[h.len - 1..h.len], b"\n");
        let ids = Identities {
            label: "a".into(),
            ids: vec![Box::new(a.clone())],
        };
        let object = ObjectId::from_hash(blake3::hash(&file));
        let fk = ids.unwrap(&h.stanzas, object).unwrap();
        assert!(h.mac_ok(&file, &fk));
        // Our writer reproduces the crate's header byte for byte.
        assert_eq!(write_header(&h.stanzas, &fk), file[..h.len].to_vec());
        // A flipped byte in a stanza breaks the MAC.
        let mut bad = file[..h.len].to_vec();
        bad[AGE_MAGIC.len() + 3] ^= 1;
        let hb = parse_header(&bad);
        assert!(hb.map_or(true, |hb| !hb.mac_ok(&bad, &fk)));
    }

    #[test]
    fn a_new_header_with_the_old_payload_decrypts_for_the_new_recipient() {
        let (a, b, c) = (
            x25519::Identity::generate(),
            x25519::Identity::generate(),
            x25519::Identity::generate(),
        );
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let file = encrypt(&plain, &[a.to_public()]);
        let h = parse_header(&file).unwrap();
        let ids = Identities {
            label: "a".into(),
            ids: vec![Box::new(a.clone())],
        };
        let object = ObjectId::from_hash(blake3::hash(&file));
        let fk = ids.unwrap(&h.stanzas, object).unwrap();
        let (stanzas, _) = age::Recipient::wrap_file_key(&b.to_public(), &fk).unwrap();
        let mut shared = write_header(&stanzas, &fk);
        shared.extend_from_slice(&file[h.len..]);
        assert_eq!(decrypt(&shared, &b).unwrap(), plain);
        assert!(decrypt(&shared, &a).is_err(), "a is not in the new header");
        assert!(decrypt(&shared, &c).is_err());
        // b cannot unwrap the original.
        let idb = Identities {
            label: "b".into(),
            ids: vec![Box::new(b)],
        };
        assert!(matches!(
            idb.unwrap(&h.stanzas, object),
            Err(CryptError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn share_records_round_trip_and_garbage_is_refused() {
        let a = x25519::Identity::generate();
        let file = encrypt(b"x", &[a.to_public()]);
        let h = parse_header(&file).unwrap();
        let object = ObjectId::from_hash(blake3::hash(b"share"));
        let rec = ShareRecord {
            target: ObjectId::from_hash(blake3::hash(&file)),
            header_len: h.len as u64,
            header: String::from_utf8(file[..h.len].to_vec()).unwrap(),
        };
        let bytes = rec.encode().unwrap();
        assert_eq!(ShareRecord::decode(object, &bytes).unwrap(), rec);
        for cut in 0..bytes.len() {
            assert!(
                ShareRecord::decode(object, &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut big = bytes.clone();
        big.resize(MAX_SHARE_BYTES + 1, 0);
        assert!(ShareRecord::decode(object, &big).is_err());
    }

    #[test]
    fn header_parser_never_panics_on_truncations_and_flips() {
        let a = x25519::Identity::generate();
        let file = encrypt(
            b"abc",
            &[a.to_public(), x25519::Identity::generate().to_public()],
        );
        let h = parse_header(&file).unwrap();
        for cut in 0..h.len {
            assert!(parse_header(&file[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..h.len {
            let mut f = file.clone();
            f[i] ^= 0x55;
            let _ = parse_header(&f);
        }
    }

    proptest::proptest! {
        /// The two decoders of untrusted bytes never panic, whatever follows
        /// their magic.
        #[test]
        fn decoders_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
                                lines in proptest::collection::vec("[-> a-zA-Z0-9+/=]{0,70}", 0..8)) {
            let object = ObjectId::from_hash(blake3::hash(b"p"));
            let mut text = AGE_MAGIC.to_vec();
            for l in &lines {
                text.extend_from_slice(l.as_bytes());
                text.push(b'\n');
            }
            let _ = parse_header(&text);
            let mut a = AGE_MAGIC.to_vec();
            a.extend_from_slice(&tail);
            let _ = parse_header(&a);
            let _ = parse_header(&tail);
            let mut sh = SHARE_MAGIC.to_vec();
            sh.extend_from_slice(&tail);
            let _ = ShareRecord::decode(object, &sh);
            let _ = ShareRecord::decode(object, &tail);
        }
    }

    #[test]
    fn keygen_writes_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("me.key");
        let r = keygen(&p).unwrap();
        assert!(r.starts_with("age1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(keygen(&p), Err(CryptError::Exists(_))));
        let ids = Identities::load(&p).unwrap();
        assert_eq!(ids.ids.len(), 1);
        let parsed = parse_recipients(std::slice::from_ref(&r), &[]).unwrap();
        assert_eq!(parsed.len(), 1);
        assert!(parse_recipients(&["age1nope".into()], &[]).is_err());
    }
}
