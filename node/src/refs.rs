//! Names that keep references, and reclaiming the objects no name refers
//! to any more (the rules are `protocol::names::refs`).
//!
//! [`write_name`] is the one way a name record is written: a record that
//! points at an object (or at the pieces of a multipart object stored as
//! its parts: every piece is referenced like an object) first writes its
//! reference in the object's references namespace and checks that no
//! collector condemned the generation it relies on; once the record is stored, the reference of
//! the version it replaced is retired. Every failure leaves a reference
//! behind rather than retire one too many: a leaked reference keeps bytes,
//! a missing one could lose an object a name still points at.
//!
//! [`reclaim_loop`] runs on every node: for each references namespace of
//! which it is the first replica, when every reference has been a
//! tombstone for the grace period and the object's stored generation is
//! collectable, it condemns that generation, waits, reads the references
//! again from more replicas than a write needs, and only if none came back
//! removes exactly that generation. A writer that overlaps sees either the
//! condemnation (and gives up, the client retries and writes the object
//! anew) or the collector sees its reference (and withdraws).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use dynostore_protocol::manifest::Generation;
use dynostore_protocol::names::refs::{self, Verdict};
use dynostore_protocol::names::{
    NameEntry, NameRecord, NameVersion, MAX_RECORDS_PER_MESSAGE, NAME_REPLICAS,
};
use dynostore_protocol::wire::ErrorKind;
use dynostore_protocol::ObjectId;

use crate::datapath::{self, DataError};
use crate::manifests::wall_ms;
use crate::names::{self, NameError};
use crate::shared::Shared;

/// Members asked when a collector reads references: more than a write
/// reaches, so that a reference written before the top of the ranking
/// moved is still found.
const READ_WIDTH: usize = NAME_REPLICAS + 2;
/// Another collector's condemnation of a referenced object older than this
/// many waits (plus a minute) is abandoned: its collector is gone.
const STALE_FACTOR: u64 = 10;
/// Objects (pieces) of one name referenced at once.
const PIECES_IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefError {
    #[error(transparent)]
    Names(#[from] NameError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("invalid name record: {0}")]
    Invalid(String),
    #[error("object {} is being reclaimed as unnamed: write it again", .0.short())]
    Condemned(ObjectId),
}

impl RefError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RefError::Names(e) => e.kind(),
            RefError::Data(e) => e.kind(),
            RefError::Invalid(_) => ErrorKind::BadRequest,
            RefError::Condemned(_) => ErrorKind::Unavailable,
        }
    }
}

/// What a name write relies on of the object it names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Basis {
    /// The generation a put just stored or found.
    Generation(Generation),
    /// Look the object's manifest up.
    Lookup,
    /// The object's stored generation is not collectable: no collector
    /// ever removes it, so no condemnation needs reading.
    Kept,
}

/// Writes `entry` (or, with `None`, a tombstone) under `ns`/`key` above
/// any version seen, keeping references (see the module header).
pub(crate) async fn write_name(
    shared: &Arc<Shared>,
    ns: &str,
    key: &str,
    entry: Option<NameEntry>,
    basis: Basis,
) -> Result<NameVersion, RefError> {
    let seen = names::get(shared, ns, key).await?;
    let version = NameVersion::next(
        wall_ms(),
        shared.local.clone(),
        seen.as_ref().map(|r| &r.version),
    );
    // The object, or the pieces of an object stored as its parts, each
    // referenced like a whole object (a piece's generation looked up).
    let whole = entry.as_ref().and_then(|e| e.object);
    let objects = entry.as_ref().map(|e| e.objects()).unwrap_or_default();
    let record = NameRecord {
        ns: ns.to_string(),
        key: key.to_string(),
        version: version.clone(),
        entry,
    };
    record.check().map_err(RefError::Invalid)?;
    if !objects.is_empty() && shared.fault_ref_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(shared.fault_ref_delay_ms)).await;
    }
    let writes: Vec<_> = objects
        .iter()
        .map(|&o| {
            let basis = if whole == Some(o) {
                basis
            } else {
                Basis::Lookup
            };
            let (shared, ns, key, version) = (
                shared.clone(),
                ns.to_string(),
                key.to_string(),
                version.clone(),
            );
            async move { (o, reference(&shared, &ns, &key, &version, o, basis).await) }
        })
        .collect();
    let results: Vec<(ObjectId, Result<(), RefError>)> = futures::stream::iter(writes)
        .buffer_unordered(PIECES_IN_FLIGHT)
        .collect()
        .await;
    if results.iter().any(|(_, r)| r.is_err()) {
        // The name is not written, so every reference of this version goes
        // (`reference` retired its own failed one; the others go here).
        let mut first = None;
        for (o, r) in results {
            match r {
                Ok(()) => retire(shared, ns, key, &version, o).await,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
    }
    // A failed write may still have reached a replica and come back
    // through anti-entropy, so its reference stays.
    names::put(shared, vec![record]).await?;
    if let Some(old) = seen {
        for o in old.entry.as_ref().map(|e| e.objects()).unwrap_or_default() {
            retire(shared, ns, key, &old.version, o).await;
        }
    }
    Ok(version)
}

/// Writes the reference of `ns`/`key` at `version` to `object`, then reads
/// the condemnations: one that reaches the generation the name relies on
/// means the write gives up (its reference retired: the name was not
/// written).
async fn reference(
    shared: &Arc<Shared>,
    ns: &str,
    key: &str,
    version: &NameVersion,
    object: ObjectId,
    basis: Basis,
) -> Result<(), RefError> {
    let rns = refs::refs_namespace(&object);
    names::put(
        shared,
        vec![NameRecord {
            ns: rns.clone(),
            key: refs::ref_key(&object, ns, key, version),
            version: version.clone(),
            entry: Some(NameEntry::default()),
        }],
    )
    .await?;
    let checked = async {
        let generation = match basis {
            Basis::Kept => return Ok(()),
            Basis::Generation(g) => g,
            Basis::Lookup => {
                let m = datapath::require_manifest(shared, object).await?;
                if !m.meta.collectable {
                    // Never collected, whatever references say.
                    return Ok(());
                }
                m.generation
            }
        };
        let condemnations = format!("{}{}", refs::object_prefix(&object), refs::CONDEMN_PREFIX);
        let (records, _) = names::list_page(
            shared,
            &rns,
            &condemnations,
            None,
            MAX_RECORDS_PER_MESSAGE as u32,
        )
        .await?;
        if refs::condemned(&records, generation) {
            shared.metrics.reclaim("refused");
            return Err(RefError::Condemned(object));
        }
        Ok(())
    }
    .await;
    if checked.is_err() {
        retire(shared, ns, key, version, object).await;
    }
    checked
}

/// Pins `object` ([`refs::pin_key`]): a put acknowledged by ID writes it
/// before the acknowledgement, so that no collector ever takes the object,
/// whichever generation of it is stored later.
pub(crate) async fn pin(shared: &Arc<Shared>, object: ObjectId) -> Result<(), NameError> {
    names::put(
        shared,
        vec![NameRecord {
            ns: refs::refs_namespace(&object),
            key: refs::pin_key(&object),
            version: NameVersion {
                ms: wall_ms(),
                writer: shared.local.clone(),
            },
            entry: Some(NameEntry::default()),
        }],
    )
    .await
    .map(|_| ())
}

/// Retires the reference of `ns`/`key` at `version` to `object` (a
/// tombstone above the reference's own version). A failure only leaks.
async fn retire(
    shared: &Arc<Shared>,
    ns: &str,
    key: &str,
    version: &NameVersion,
    object: ObjectId,
) {
    let record = NameRecord {
        ns: refs::refs_namespace(&object),
        key: refs::ref_key(&object, ns, key, version),
        version: NameVersion {
            ms: wall_ms().max(version.ms.saturating_add(1)),
            writer: shared.local.clone(),
        },
        entry: None,
    };
    if let Err(e) = names::put(shared, vec![record]).await {
        tracing::warn!(object = %object.short(), error = %e, "a retired name's reference stays: its object's bytes are kept");
    }
}

/// Every record (tombstones included) of `object` in its references
/// namespace, read from [`READ_WIDTH`] members with [`NAME_REPLICAS`]
/// answers required.
async fn read_all(shared: &Arc<Shared>, object: &ObjectId) -> Result<Vec<NameRecord>, NameError> {
    let ns = refs::refs_namespace(object);
    let prefix = refs::object_prefix(object);
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = names::list_page_wide(
            shared,
            &ns,
            &prefix,
            after.as_deref(),
            MAX_RECORDS_PER_MESSAGE as u32,
            READ_WIDTH,
            NAME_REPLICAS,
        )
        .await?;
        after = page.last().map(|r| r.key.clone());
        out.extend(page);
        if !more || after.is_none() {
            return Ok(out);
        }
    }
}

/// The outcome of looking at one object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    /// Nothing to do until its references change.
    Settled,
    /// Look again next round.
    Later,
    /// Condemned: `generation` goes unless a reference comes back.
    Condemned(Generation),
}

/// Reclaims unnamed objects forever (see the module header).
pub(crate) async fn reclaim_loop(shared: Arc<Shared>, grace: Duration, wait: Duration) {
    let every = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    // Objects settled, by the digest of their local records then.
    let mut settled: HashMap<ObjectId, [u8; 32]> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = reclaim_once(&shared, grace, wait, &mut settled).await {
            tracing::debug!(error = %e, "reclaiming unnamed objects failed");
        }
    }
}

/// Each object with records in the references namespaces of which this
/// node is the first replica, with the digest of its local records.
fn local_objects(shared: &Arc<Shared>) -> Result<Vec<(ObjectId, [u8; 32])>, NameError> {
    let view = shared.membership().view();
    let mut out: Vec<(ObjectId, [u8; 32])> = Vec::new();
    for ns in shared.names.namespaces()? {
        if !refs::is_refs_namespace(&ns)
            || names::ranking(&view, &ns).first() != Some(&shared.local)
        {
            continue;
        }
        let mut current: Option<(ObjectId, blake3::Hasher)> = None;
        let mut after: Option<String> = None;
        loop {
            let (page, more) =
                shared
                    .names
                    .list(&ns, "", after.as_deref(), MAX_RECORDS_PER_MESSAGE)?;
            after = page.last().map(|r| r.key.clone());
            for r in page {
                let Some(object) = refs::object_of_key(&r.key) else {
                    continue;
                };
                if current.as_ref().is_none_or(|(o, _)| *o != object) {
                    if let Some((o, h)) = current.take() {
                        out.push((o, *h.finalize().as_bytes()));
                    }
                    current = Some((object, blake3::Hasher::new()));
                }
                if let Some((_, h)) = current.as_mut() {
                    h.update(r.key.as_bytes());
                    h.update(&r.version.ms.to_le_bytes());
                    h.update(r.version.writer.as_bytes());
                    h.update(&[u8::from(r.is_tombstone())]);
                }
            }
            if !more || after.is_none() {
                break;
            }
        }
        if let Some((o, h)) = current {
            out.push((o, *h.finalize().as_bytes()));
        }
    }
    Ok(out)
}

/// One round: condemns every ripe object of which this node is the first
/// references replica, waits once, then removes or withdraws each.
async fn reclaim_once(
    shared: &Arc<Shared>,
    grace: Duration,
    wait: Duration,
    settled: &mut HashMap<ObjectId, [u8; 32]>,
) -> Result<(), NameError> {
    let mut condemned: Vec<(ObjectId, Generation)> = Vec::new();
    let objects = local_objects(shared)?;
    // Forget objects whose records this node no longer holds first.
    let held: std::collections::HashSet<ObjectId> = objects.iter().map(|(o, _)| *o).collect();
    settled.retain(|o, _| held.contains(o));
    for (object, digest) in objects {
        if settled.get(&object) == Some(&digest) {
            continue;
        }
        match look(shared, object, grace, wait).await {
            Ok(Look::Settled) => {
                settled.insert(object, digest);
            }
            Ok(Look::Later) => {}
            Ok(Look::Condemned(g)) => condemned.push((object, g)),
            Err(e) => {
                tracing::debug!(object = %object.short(), error = %e, "an unnamed object's references could not be judged")
            }
        }
    }
    if condemned.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(wait).await;
    for (object, generation) in condemned {
        if let Err(e) = finish(shared, object, generation).await {
            tracing::info!(object = %object.short(), error = %e, "a condemned object was neither removed nor withdrawn: next round");
        }
    }
    Ok(())
}

/// Judges one object; condemns it when it is ripe and collectable.
async fn look(
    shared: &Arc<Shared>,
    object: ObjectId,
    grace: Duration,
    wait: Duration,
) -> Result<Look, RefError> {
    let ns = &refs::refs_namespace(&object);
    let records = read_all(shared, &object).await?;
    let verdict = refs::verdict(&records);
    if verdict == Verdict::Referenced {
        // A condemnation left live over a referenced object (a withdrawal
        // that failed, or a collector that died between condemning and
        // finishing) would refuse every writer that finds the object:
        // withdraw this node's own, and others' once no collector can
        // still be finishing them.
        let mine = refs::condemn_key(&object, &shared.local);
        let abandoned = wall_ms().saturating_sub(STALE_FACTOR * wait.as_millis() as u64 + 60_000);
        for r in records.iter().filter(|r| {
            refs::is_condemnation(&r.key)
                && !r.is_tombstone()
                && (r.key == mine || r.version.ms < abandoned)
        }) {
            write_name(shared, ns, &r.key, None, Basis::Lookup).await?;
            shared.metrics.reclaim("withdrawn");
        }
    }
    if !refs::ripe(&verdict, wall_ms(), grace.as_millis() as u64) {
        return Ok(match verdict {
            Verdict::Unreferenced { .. } => Look::Later,
            Verdict::Referenced | Verdict::Unknown => Look::Settled,
        });
    }
    let m = match datapath::require_manifest(shared, object).await {
        Ok(m) => m,
        Err(DataError::UnknownObject(_)) => return Ok(Look::Settled),
        Err(e) => return Err(e.into()),
    };
    if !m.meta.collectable {
        return Ok(Look::Settled);
    }
    write_name(
        shared,
        ns,
        &refs::condemn_key(&object, &shared.local),
        Some(NameEntry {
            blob: Some(refs::condemn_blob(m.generation)),
            ..NameEntry::default()
        }),
        Basis::Lookup,
    )
    .await?;
    shared.metrics.reclaim("condemned");
    tracing::info!(object = %object.short(), generation = %m.generation, "condemned an object no name refers to");
    Ok(Look::Condemned(m.generation))
}

/// After the wait: removes the condemned generation if no reference came
/// back, else withdraws the condemnation.
async fn finish(
    shared: &Arc<Shared>,
    object: ObjectId,
    generation: Generation,
) -> Result<(), RefError> {
    let ns = &refs::refs_namespace(&object);
    let unreferenced = match read_all(shared, &object).await {
        Ok(r) => matches!(refs::verdict(&r), Verdict::Unreferenced { .. }),
        Err(e) => {
            tracing::info!(object = %object.short(), error = %e, "references unreadable after condemning: withdrawing");
            false
        }
    };
    if !unreferenced {
        // Withdrawn: writers that met the condemnation gave up (their
        // clients retry), the one whose reference came back goes on.
        write_name(
            shared,
            ns,
            &refs::condemn_key(&object, &shared.local),
            None,
            Basis::Lookup,
        )
        .await?;
        shared.metrics.reclaim("withdrawn");
        return Ok(());
    }
    // The condemnation stays: a writer that found this generation before
    // it went must still give up.
    if datapath::remove_collectable(shared, object, generation).await? {
        shared.metrics.reclaim("removed");
        tracing::info!(object = %object.short(), %generation, "reclaimed an object no name refers to");
    }
    Ok(())
}
