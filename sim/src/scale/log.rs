//! The event log: every decision of a run (placements, refusals,
//! checkpoints, moved shards, failures, repairs, losses), in the order the
//! run makes them, folded into one BLAKE3 hash.
//!
//! An event is a short tag and a list of integers. Its canonical encoding is
//! `len(tag) tag count field...` with every number little-endian `u64`;
//! the hash is BLAKE3 of the concatenated encodings. Two runs with equal
//! hashes made the same decisions in the same order; a run prints the hash
//! so that runs can be compared at a glance. With `--event-log PATH` the
//! same events are also written as text, one per line (`tag f1 f2 ...`), for
//! diffing two runs that disagree.
//!
//! Only integers go in: fractions are logged in parts per million, so the
//! hash does not depend on float formatting.
//!
//! Work that runs in parallel (the durability runs, the baseline re-runs)
//! logs into a *child* log each; the parent then absorbs the children in a
//! fixed order, recording one event per child with its event count and its
//! hash (four `u64` words). The text copy of a child goes to
//! `PATH.NAME` while it runs and is appended to `PATH` when absorbed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Accumulates the hash (and optionally a text copy) of the event log.
#[derive(Debug)]
pub struct EventLog {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    events: u64,
    text: Option<BufWriter<File>>,
    text_path: Option<PathBuf>,
    text_error: Option<std::io::Error>,
}

const FLUSH_BYTES: usize = 1 << 16;

impl EventLog {
    pub fn new() -> Self {
        EventLog {
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(FLUSH_BYTES + 1024),
            events: 0,
            text: None,
            text_path: None,
            text_error: None,
        }
    }

    /// Also writes every event as a text line to `path`.
    pub fn with_text(path: &Path) -> std::io::Result<Self> {
        let mut log = Self::new();
        log.text = Some(BufWriter::new(File::create(path)?));
        log.text_path = Some(path.to_path_buf());
        Ok(log)
    }

    /// A log for work that runs beside other work; see [`EventLog::absorb`].
    pub fn child(&self, name: &str) -> EventLog {
        let Some(path) = &self.text_path else {
            return EventLog::new();
        };
        let mut p = OsString::from(path.as_os_str());
        p.push(".");
        p.push(name);
        let p = PathBuf::from(p);
        match EventLog::with_text(&p) {
            Ok(log) => log,
            Err(e) => {
                let mut log = EventLog::new();
                log.text_error = Some(e);
                log
            }
        }
    }

    /// Records `child` as one event (`head`, its event count, its hash) and
    /// appends its text copy, if any.
    pub fn absorb(&mut self, tag: &str, head: &[u64], mut child: EventLog) {
        let hash = child.hash();
        let mut fields = head.to_vec();
        fields.push(child.events);
        fields.extend(
            hash.as_bytes()
                .chunks(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))),
        );
        if let Err(e) = child.finish() {
            self.text_error.get_or_insert(e);
        }
        if let (Some(w), Some(path)) = (self.text.as_mut(), child.text_path.take()) {
            let copied = File::open(&path).and_then(|mut f| std::io::copy(&mut f, w));
            let removed = std::fs::remove_file(&path);
            if let Err(e) = copied.and(removed) {
                self.text_error.get_or_insert(e);
            }
        }
        self.event(tag, &fields);
    }

    /// Records one event.
    pub fn event(&mut self, tag: &str, fields: &[u64]) {
        self.events += 1;
        self.buf.push(tag.len() as u8);
        self.buf.extend_from_slice(tag.as_bytes());
        self.buf
            .extend_from_slice(&(fields.len() as u64).to_le_bytes());
        for f in fields {
            self.buf.extend_from_slice(&f.to_le_bytes());
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
        if let Some(w) = self.text.as_mut() {
            let mut line = String::with_capacity(8 + 12 * fields.len());
            line.push_str(tag);
            for f in fields {
                line.push(' ');
                line.push_str(&f.to_string());
            }
            line.push('\n');
            if let Err(e) = w.write_all(line.as_bytes()) {
                self.text_error.get_or_insert(e);
                self.text = None;
            }
        }
    }

    /// Records an event whose last fields are node indices.
    pub fn event_with_nodes(&mut self, tag: &str, head: &[u64], nodes: &[u32]) {
        let mut fields = Vec::with_capacity(head.len() + nodes.len());
        fields.extend_from_slice(head);
        fields.extend(nodes.iter().map(|&x| u64::from(x)));
        self.event(tag, &fields);
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The hash of everything recorded so far.
    pub fn hash(&self) -> blake3::Hash {
        let mut h = self.hasher.clone();
        h.update(&self.buf);
        h.finalize()
    }

    /// [`EventLog::hash`] as hex.
    pub fn hash_hex(&self) -> String {
        self.hash().to_hex().to_string()
    }

    /// Flushes the text copy; reports the first write error, if any.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.text_error.take() {
            return Err(e);
        }
        if let Some(w) = self.text.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

/// `x` in parts per million, rounded.
pub fn ppm(x: f64) -> u64 {
    (x * 1e6).round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_and_order_not_buffering() {
        let mut a = EventLog::new();
        let mut b = EventLog::new();
        for i in 0..10_000u64 {
            a.event("x", &[i, i * 2]);
            b.event("x", &[i, i * 2]);
        }
        assert_eq!(a.hash_hex(), b.hash_hex());
        let mut c = EventLog::new();
        c.event("x", &[1, 0]);
        c.event("x", &[0, 0]);
        let mut d = EventLog::new();
        d.event("x", &[0, 0]);
        d.event("x", &[1, 0]);
        assert_ne!(c.hash_hex(), d.hash_hex());
        // Field boundaries are part of the encoding.
        let mut e = EventLog::new();
        e.event("xy", &[]);
        let mut f = EventLog::new();
        f.event("x", &[]);
        assert_ne!(e.hash_hex(), f.hash_hex());
    }

    #[test]
    fn children_are_absorbed_with_their_hash() {
        let mut a = EventLog::new();
        let mut c = a.child("x");
        c.event("y", &[1]);
        a.absorb("child", &[7], c);
        let mut b = EventLog::new();
        let mut d = b.child("x");
        d.event("y", &[2]);
        b.absorb("child", &[7], d);
        assert_eq!(a.events(), 1);
        assert_ne!(a.hash_hex(), b.hash_hex());
    }

    #[test]
    fn text_copy_includes_children_in_order() {
        let dir = std::env::temp_dir().join(format!("dynostore-sim-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.txt");
        let mut log = EventLog::with_text(&path).unwrap();
        log.event("a", &[1]);
        let mut c = log.child("part0");
        c.event("b", &[2, 3]);
        log.absorb("c", &[], c);
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a 1");
        assert_eq!(lines[1], "b 2 3");
        assert!(lines[2].starts_with("c 1 "));
        assert!(!dir.join("log.txt.part0").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
