use std::path::Path;

use super::*;
use crate::container::s3s::S3sServer;
use crate::container::spec::DirSpec;
use crate::container::suite::blob;
use crate::container::{shard_path, ByteSize};

fn shard(seed: u64, len: usize) -> (ShardId, Bytes) {
    let b = blob(seed, len);
    (ShardId::of(&b), b)
}

fn named_dir(name: &str, path: &Path, quota_bytes: u64) -> ContainerSpec {
    ContainerSpec::Dir(DirSpec {
        name: Some(name.to_string()),
        path: path.to_path_buf(),
        quota: ByteSize(quota_bytes),
    })
}

#[tokio::test]
async fn put_verifies_the_hash_and_stores_nothing_on_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [named_dir("disk0", &dir.path().join("d0"), 1 << 20)];
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let claimed = ShardId::of(b"what the sender promised");
    let err = store
        .put(claimed, Bytes::from_static(b"what it sent"))
        .await
        .unwrap_err();
    match &err {
        StoreError::HashMismatch { shard, actual } => {
            assert_eq!(*shard, claimed);
            assert_eq!(*actual, ShardId::of(b"what it sent"));
        }
        other => panic!("expected HashMismatch, got {other}"),
    }
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert!(err.to_string().contains(&claimed.to_string()));
    assert!(!store.has(&claimed).await.unwrap());
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.shard_count(), 0);
    assert_eq!(store.totals().await.used_bytes, 0);
    assert!(matches!(
        store.get(&claimed).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn put_get_delete_and_idempotence() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [named_dir("disk0", &dir.path().join("d0"), 1 << 20)];
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let (id, bytes) = shard(1, 5000);
    store.put(id, bytes.clone()).await.unwrap();
    store.put(id, bytes.clone()).await.unwrap();
    assert_eq!(store.shard_count(), 1);
    assert_eq!(store.totals().await.used_bytes, 5000);
    assert_eq!(store.get(&id).await.unwrap(), bytes);
    assert!(store.has(&id).await.unwrap());
    assert_eq!(store.container_of(&id).unwrap().as_deref(), Some("disk0"));
    assert_eq!(store.list().unwrap(), vec![id]);

    assert!(store.delete(&id).await.unwrap());
    assert!(!store.delete(&id).await.unwrap());
    let err = store.get(&id).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { shard } if shard == id));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(store.totals().await.used_bytes, 0);
    assert!(!dir.path().join("d0").join(shard_path(&id)).exists());

    // A large shard goes through the blocking-pool hash path.
    let (big, big_bytes) = shard(2, 300 << 10);
    store.put(big, big_bytes.clone()).await.unwrap();
    assert_eq!(store.get(&big).await.unwrap(), big_bytes);
    let (_, too_big) = shard(3, MAX_SHARD_BYTES + 1);
    assert!(matches!(
        store.put(ShardId::of(&too_big), too_big).await,
        Err(StoreError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn corrupted_shard_is_refused_named_and_repairable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d0");
    let specs = [named_dir("disk0", &root, 1 << 20)];
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let (a, a_bytes) = shard(1, 4096);
    let (b, b_bytes) = shard(2, 4096);
    store.put(a, a_bytes.clone()).await.unwrap();
    store.put(b, b_bytes.clone()).await.unwrap();

    // Flip one byte of a's file on disk.
    let file = root.join(shard_path(&a));
    let mut tampered = std::fs::read(&file).unwrap();
    tampered[100] ^= 0x01;
    std::fs::write(&file, &tampered).unwrap();

    let err = store.get(&a).await.unwrap_err();
    match &err {
        StoreError::Integrity {
            shard,
            container,
            expected,
            actual,
        } => {
            assert_eq!(*shard, a);
            assert_eq!(container, "disk0");
            assert_eq!(*expected, a);
            assert_eq!(*actual, ShardId::of(&tampered));
        }
        other => panic!("expected Integrity, got {other}"),
    }
    assert_eq!(err.kind(), ErrorKind::Integrity);
    let text = err.to_string();
    assert!(
        text.contains(&a.to_string()) && text.contains("disk0"),
        "{text}"
    );
    assert_eq!(store.corrupt_shards(), vec![a]);
    assert_eq!(store.corrupt_total(), 1);
    assert!(!store.has(&a).await.unwrap());
    // A second read fails again; it never returns the bad bytes.
    assert!(matches!(
        store.get(&a).await,
        Err(StoreError::Integrity { .. })
    ));
    assert_eq!(store.corrupt_total(), 2);

    // The other shard is unaffected.
    assert_eq!(store.get(&b).await.unwrap(), b_bytes);
    assert!(store.has(&b).await.unwrap());

    // A truncated copy is caught too.
    std::fs::write(root.join(shard_path(&b)), &b_bytes[..100]).unwrap();
    assert!(matches!(
        store.get(&b).await,
        Err(StoreError::Integrity { shard, .. }) if shard == b
    ));

    // Putting good bytes replaces the bad copy.
    store.put(a, a_bytes.clone()).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap(), a_bytes);
    assert!(store.has(&a).await.unwrap());
    assert_eq!(store.corrupt_shards(), vec![b]);
    assert_eq!(store.shard_count(), 2);
}

#[tokio::test]
async fn shards_spread_by_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        named_dir("big", &dir.path().join("big"), 3 << 20),
        named_dir("small", &dir.path().join("small"), 1 << 20),
    ];
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let n = 400;
    let mut in_big = 0;
    for i in 0..n {
        let (id, bytes) = shard(i, 2048);
        store.put(id, bytes).await.unwrap();
        match store.container_of(&id).unwrap().as_deref() {
            Some("big") => in_big += 1,
            Some("small") => {}
            other => panic!("{other:?}"),
        }
    }
    // Free space starts 3:1 and both fill in proportion, so about 3/4 of
    // the shards land in "big" (binomial sd ~ 0.022).
    let share = f64::from(in_big) / n as f64;
    assert!((0.66..=0.84).contains(&share), "share in big = {share}");
    let t = store.totals().await;
    assert_eq!(t.used_bytes, n * 2048);
    assert_eq!(t.capacity_bytes, 4 << 20);
    assert_eq!(t.free_bytes, (4 << 20) - n * 2048);
    assert_eq!(t.n_shards, n);

    let reports = store.reports().await;
    assert_eq!(reports.len(), 2);
    assert_eq!(
        (reports[0].name.as_str(), reports[0].kind.as_str()),
        ("big", "fs")
    );
    assert_eq!(reports[0].capacity_bytes, 3 << 20);
    assert_eq!(reports[0].free_bytes + reports[1].free_bytes, t.free_bytes);
}

#[tokio::test]
async fn reopen_finds_shards_and_drops_what_memory_lost() {
    let dir = tempfile::tempdir().unwrap();
    // Small directories, so that shards spill into memory once they are
    // full (durable containers come first).
    let specs = [
        named_dir("d0", &dir.path().join("d0"), 8000),
        named_dir("d1", &dir.path().join("d1"), 8000),
        ContainerSpec::mem("ram", 1 << 20),
    ];
    let mut all = Vec::new();
    let mut in_ram = Vec::new();
    {
        let store = ShardStore::open(dir.path(), &specs).await.unwrap();
        for i in 0..30 {
            let (id, bytes) = shard(i, 1000 + i as usize);
            store.put(id, bytes.clone()).await.unwrap();
            if store.container_of(&id).unwrap().as_deref() == Some("ram") {
                in_ram.push(id);
            }
            all.push((id, bytes));
        }
        assert_eq!(store.shard_count(), 30);
    }
    assert!(!in_ram.is_empty() && in_ram.len() < 30, "{}", in_ram.len());

    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let report = store.open_report();
    assert_eq!(report.n_dropped, in_ram.len() as u64);
    assert_eq!(report.n_indexed, 30 - in_ram.len() as u64);
    assert_eq!((report.n_adopted, report.n_moved), (0, 0));
    assert_eq!(store.shard_count(), 30 - in_ram.len() as u64);
    let listed = store.list().unwrap();
    for (id, bytes) in &all {
        if in_ram.contains(id) {
            assert!(!listed.contains(id));
            assert!(!store.has(id).await.unwrap());
            assert!(matches!(
                store.get(id).await,
                Err(StoreError::NotFound { .. })
            ));
        } else {
            assert!(listed.contains(id));
            assert_eq!(&store.get(id).await.unwrap(), bytes);
        }
    }
}

#[tokio::test]
async fn durable_containers_come_first_and_durable_copies_stay_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        ContainerSpec::mem("ram", 1 << 20),
        named_dir("disk", &dir.path().join("disk"), 5000),
    ];
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let slot = |id: ShardId, i: u16| ShardSlot {
        shard: id,
        owner: ShardRef {
            object: dynostore_protocol::ObjectId::of(b"o"),
            generation: Default::default(),
            segment: 0,
            index: i,
        },
    };
    // The directory takes shards while it has room, although memory has
    // 200 times more free space.
    let mut on_disk = Vec::new();
    for i in 0..4u16 {
        let (id, bytes) = shard(u64::from(i), 1000);
        store.put_durable(slot(id, i), bytes).await.unwrap();
        assert_eq!(store.container_of(&id).unwrap().as_deref(), Some("disk"));
        on_disk.push(id);
    }
    // Full for durable copies: refused, not kept in memory.
    let (id, bytes) = shard(10, 2000);
    let err = store
        .put_durable(slot(id, 9), bytes.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotDurable { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Full);
    assert!(!store.has(&id).await.unwrap());
    // Without the demand it spills into memory...
    store.put_for(slot(id, 9), bytes.clone()).await.unwrap();
    assert_eq!(store.container_of(&id).unwrap().as_deref(), Some("ram"));
    // ...and a writer that wants that copy durable is refused it.
    let err = store.put_durable(slot(id, 8), bytes).await.unwrap_err();
    assert!(matches!(err, StoreError::NotDurable { .. }), "{err}");
    // A durable copy already on disk is shared as usual.
    let (id0, bytes0) = shard(0, 1000);
    assert_eq!(id0, on_disk[0]);
    store.put_durable(slot(id0, 7), bytes0).await.unwrap();
    assert_eq!(store.owners(&id0).unwrap().len(), 2);
}

#[tokio::test]
async fn reopen_adopts_strays_and_forgets_vanished_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d0");
    let specs = [named_dir("d0", &root, 1 << 20)];
    let (kept, kept_bytes) = shard(1, 700);
    let (vanished, vanished_bytes) = shard(2, 800);
    {
        let store = ShardStore::open(dir.path(), &specs).await.unwrap();
        store.put(kept, kept_bytes.clone()).await.unwrap();
        store.put(vanished, vanished_bytes).await.unwrap();
    }
    // A shard written but never indexed (a crash before the flush), and
    // one removed behind the store's back.
    let (stray, stray_bytes) = shard(3, 900);
    let stray_file = root.join(shard_path(&stray));
    std::fs::create_dir_all(stray_file.parent().unwrap()).unwrap();
    std::fs::write(&stray_file, &stray_bytes).unwrap();
    std::fs::remove_file(root.join(shard_path(&vanished))).unwrap();

    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    let r = store.open_report();
    assert_eq!((r.n_indexed, r.n_adopted, r.n_dropped), (1, 1, 1));
    assert_eq!(store.get(&stray).await.unwrap(), stray_bytes);
    assert_eq!(store.get(&kept).await.unwrap(), kept_bytes);
    assert!(!store.has(&vanished).await.unwrap());
    assert_eq!(store.totals().await.used_bytes, 700 + 900);
}

#[tokio::test]
async fn renamed_container_records_follow_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d0");
    let (id, bytes) = shard(1, 100);
    {
        let store = ShardStore::open(dir.path(), &[named_dir("old", &root, 1 << 20)])
            .await
            .unwrap();
        store.put(id, bytes.clone()).await.unwrap();
    }
    let store = ShardStore::open(dir.path(), &[named_dir("new", &root, 1 << 20)])
        .await
        .unwrap();
    assert_eq!(store.open_report().n_moved, 1);
    assert_eq!(store.container_of(&id).unwrap().as_deref(), Some("new"));
    assert_eq!(store.get(&id).await.unwrap(), bytes);
}

#[tokio::test]
async fn data_missing_at_read_time_is_not_found_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d0");
    let store = ShardStore::open(dir.path(), &[named_dir("d0", &root, 1 << 20)])
        .await
        .unwrap();
    let (id, bytes) = shard(1, 100);
    store.put(id, bytes).await.unwrap();
    std::fs::remove_file(root.join(shard_path(&id))).unwrap();
    assert!(matches!(
        store.get(&id).await,
        Err(StoreError::NotFound { shard }) if shard == id
    ));
    assert!(!store.has(&id).await.unwrap());
    assert_eq!(store.shard_count(), 0);
}

#[tokio::test]
async fn full_store_refuses() {
    let c = crate::container::open(&ContainerSpec::mem("ram", 10 << 10))
        .await
        .unwrap();
    let store = ShardStore::from_parts(Arc::new(MemIndex::new()), vec![c])
        .await
        .unwrap();
    let (a, a_bytes) = shard(1, 8 << 10);
    let (b, b_bytes) = shard(2, 8 << 10);
    store.put(a, a_bytes).await.unwrap();
    let err = store.put(b, b_bytes).await.unwrap_err();
    match &err {
        StoreError::Full {
            shard,
            needed_bytes,
            free_bytes,
        } => {
            assert_eq!(*shard, b);
            assert_eq!((*needed_bytes, *free_bytes), (8 << 10, 2 << 10));
        }
        other => panic!("expected Full, got {other}"),
    }
    assert_eq!(err.kind(), ErrorKind::Full);
    assert!(!store.has(&b).await.unwrap());
    assert_eq!(store.list().unwrap(), vec![a]);
    // What still fits goes in.
    let (small, small_bytes) = shard(3, 2 << 10);
    store.put(small, small_bytes).await.unwrap();
    assert_eq!(store.totals().await.free_bytes, 0);
}

#[tokio::test]
async fn concurrent_puts_of_the_same_and_other_shards() {
    let c = crate::container::open(&ContainerSpec::mem("ram", 1 << 20))
        .await
        .unwrap();
    let store = ShardStore::from_parts(Arc::new(MemIndex::new()), vec![c])
        .await
        .unwrap();
    let shards: Vec<(ShardId, Bytes)> = (0..16).map(|i| shard(i, 1000)).collect();
    let puts = shards
        .iter()
        .chain(shards.iter())
        .map(|(id, b)| store.put(*id, b.clone()));
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    assert_eq!(store.shard_count(), 16);
    assert_eq!(store.totals().await.used_bytes, 16 * 1000);
}

#[tokio::test]
async fn configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        named_dir("same", &dir.path().join("a"), 1 << 20),
        named_dir("same", &dir.path().join("b"), 1 << 20),
    ];
    let err = ShardStore::open(dir.path(), &specs).await.unwrap_err();
    assert!(matches!(err, StoreError::Config { .. }), "{err}");
    assert!(err.to_string().contains("same"));
    let err = ShardStore::open(dir.path(), &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Config { .. }), "{err}");
}

#[tokio::test]
async fn kv_trees_are_durable_with_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [ContainerSpec::mem("ram", 1 << 20)];
    {
        let store = ShardStore::open(dir.path(), &specs).await.unwrap();
        let t = store.kv_tree("manifests/1").unwrap();
        t.insert(b"obj", b"manifest bytes").unwrap();
        store.flush().await.unwrap();
        assert!(store.kv_tree("shards/1").is_err());
    }
    let store = ShardStore::open(dir.path(), &specs).await.unwrap();
    assert_eq!(
        store.kv_tree("manifests/1").unwrap().get(b"obj").unwrap(),
        Some(b"manifest bytes".to_vec())
    );
}

#[tokio::test]
async fn store_over_s3_verifies_reads() {
    let server = S3sServer::start(&["shards"]);
    let dir = tempfile::tempdir().unwrap();
    let spec = server.spec("shards", "", 1 << 20);
    let name = spec.name();
    let store = ShardStore::open(dir.path(), std::slice::from_ref(&spec))
        .await
        .unwrap();
    let (a, a_bytes) = shard(1, 3000);
    let (b, b_bytes) = shard(2, 3000);
    store.put(a, a_bytes.clone()).await.unwrap();
    store.put(b, b_bytes.clone()).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap(), a_bytes);
    assert_eq!(store.reports().await[0].kind, "s3");

    // Tamper with the object behind the server's back.
    let file = server.bucket_dir("shards").join(shard_path(&a));
    let mut tampered = std::fs::read(&file).unwrap();
    tampered[0] ^= 0xff;
    std::fs::write(&file, &tampered).unwrap();
    let err = store.get(&a).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Integrity { shard, container, .. } if *shard == a && *container == name),
        "{err}"
    );
    assert_eq!(store.get(&b).await.unwrap(), b_bytes);
    drop(store);

    // Reopen: the bucket's listing agrees with the index.
    let store = ShardStore::open(dir.path(), &[spec]).await.unwrap();
    assert_eq!(store.open_report().n_indexed, 2);
    assert_eq!(store.get(&b).await.unwrap(), b_bytes);
}
