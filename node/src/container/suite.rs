//! The behaviour every [`DataContainer`] must show, as one async function
//! ([`run`]) run against each backend: filesystem, memory and a real S3
//! server (`s3s-fs`).

use bytes::Bytes;
use dynostore_protocol::ids::ShardId;

use super::{ContainerError, ContainerStat, DataContainer, ListedShard};

/// Quota of the container handed to [`run`].
pub(crate) const SUITE_QUOTA: u64 = 64 * 1024;

/// `len` deterministic pseudo-random bytes.
pub(crate) fn blob(seed: u64, len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(b"dynostore test blob");
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    Bytes::from(out)
}

async fn stat(c: &dyn DataContainer) -> ContainerStat {
    c.stat().await.expect("stat")
}

async fn sorted_list(c: &dyn DataContainer) -> Vec<ListedShard> {
    let mut l = c.list().await.expect("list");
    l.sort();
    l
}

fn listed(items: &[(&ShardId, usize)]) -> Vec<ListedShard> {
    let mut v: Vec<ListedShard> = items
        .iter()
        .map(|(s, n)| ListedShard {
            shard: **s,
            size_bytes: *n as u64,
        })
        .collect();
    v.sort();
    v
}

fn assert_not_found(r: Result<Bytes, ContainerError>, c: &dyn DataContainer, want: &ShardId) {
    match r {
        Err(ContainerError::NotFound { container, shard }) => {
            assert_eq!(container, c.name());
            assert_eq!(&shard, want);
        }
        Err(other) => panic!("expected NotFound, got {other}"),
        Ok(b) => panic!("expected NotFound, got {} bytes", b.len()),
    }
}

fn assert_full(r: Result<(), ContainerError>, c: &dyn DataContainer, needed: u64, free: u64) {
    let e = match r {
        Err(e) => e,
        Ok(()) => panic!("expected Full, the put succeeded"),
    };
    let ContainerError::Full {
        container,
        needed_bytes,
        free_bytes,
    } = &e
    else {
        panic!("expected Full, got {e}")
    };
    assert_eq!(container, c.name());
    assert_eq!((*needed_bytes, *free_bytes), (needed, free), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(c.name()) && text.contains(&format!("{needed} bytes needed")),
        "{text}"
    );
}

/// Runs the suite on an empty container whose quota is [`SUITE_QUOTA`]
/// bytes. Leaves it empty.
pub(crate) async fn run(c: &dyn DataContainer) {
    let q = SUITE_QUOTA;
    assert!(!c.name().is_empty());
    assert_eq!(
        stat(c).await,
        ContainerStat {
            capacity_bytes: q,
            used_bytes: 0,
            free_bytes: q
        }
    );
    assert!(sorted_list(c).await.is_empty());

    // Round trip.
    let a = blob(1, 1000);
    let ida = ShardId::of(&a);
    c.put(&ida, a.clone()).await.expect("put a");
    assert_eq!(c.get(&ida).await.expect("get a"), a);
    let s = stat(c).await;
    assert_eq!((s.used_bytes, s.free_bytes), (1000, q - 1000));

    // A missing key is NotFound, naming the container and the shard.
    let missing = ShardId::of(b"never stored");
    assert_not_found(c.get(&missing).await, c, &missing);
    assert!(!c.delete(&missing).await.expect("delete missing"));

    // Putting the same key again changes nothing.
    c.put(&ida, a.clone()).await.expect("put a again");
    assert_eq!(c.get(&ida).await.expect("get a"), a);
    assert_eq!(stat(c).await.used_bytes, 1000);
    assert_eq!(sorted_list(c).await, listed(&[(&ida, 1000)]));

    // A second shard; list shows both with their sizes.
    let b = blob(2, 3000);
    let idb = ShardId::of(&b);
    c.put(&idb, b.clone()).await.expect("put b");
    assert_eq!(sorted_list(c).await, listed(&[(&ida, 1000), (&idb, 3000)]));
    assert_eq!(stat(c).await.used_bytes, 4000);

    // Overwriting with another size moves `used` by the difference.
    let a2 = blob(3, 1500);
    c.put(&ida, a2.clone()).await.expect("overwrite a");
    assert_eq!(c.get(&ida).await.expect("get a2"), a2);
    assert_eq!(stat(c).await.used_bytes, 4500);
    c.put(&ida, a.clone()).await.expect("restore a");
    assert_eq!(stat(c).await.used_bytes, 4000);

    // Delete.
    assert!(c.delete(&ida).await.expect("delete a"));
    assert!(!c.delete(&ida).await.expect("delete a twice"));
    assert_not_found(c.get(&ida).await, c, &ida);
    let s = stat(c).await;
    assert_eq!((s.used_bytes, s.free_bytes), (3000, q - 3000));
    assert_eq!(sorted_list(c).await, listed(&[(&idb, 3000)]));

    // A put one byte over the free space is refused and leaves nothing.
    let free = s.free_bytes;
    let big = blob(4, free as usize + 1);
    let idbig = ShardId::of(&big);
    assert_full(c.put(&idbig, big).await, c, free + 1, free);
    assert_not_found(c.get(&idbig).await, c, &idbig);
    assert_eq!(stat(c).await, s);
    assert_eq!(sorted_list(c).await, listed(&[(&idb, 3000)]));

    // Exactly the free space fits; then not one byte more.
    let fit = blob(5, free as usize);
    let idfit = ShardId::of(&fit);
    c.put(&idfit, fit.clone()).await.expect("put to the brim");
    let s = stat(c).await;
    assert_eq!((s.used_bytes, s.free_bytes), (q, 0));
    let one = blob(6, 1);
    let idone = ShardId::of(&one);
    assert_full(c.put(&idone, one).await, c, 1, 0);
    assert_not_found(c.get(&idone).await, c, &idone);
    // Rewriting a stored key in place needs no room; growing it does.
    c.put(&idfit, fit.clone()).await.expect("rewrite when full");
    assert_full(c.put(&idb, blob(7, 3001)).await, c, 1, 0);
    assert_eq!(c.get(&idb).await.expect("b intact"), b);

    // Empty it again.
    assert!(c.delete(&idfit).await.expect("delete fit"));
    assert!(c.delete(&idb).await.expect("delete b"));
    assert_eq!(
        stat(c).await,
        ContainerStat {
            capacity_bytes: q,
            used_bytes: 0,
            free_bytes: q
        }
    );
    assert!(sorted_list(c).await.is_empty());

    // A zero-length shard is a shard.
    let empty = ShardId::of(b"");
    c.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(c.get(&empty).await.expect("get empty").is_empty());
    assert_eq!(sorted_list(c).await, listed(&[(&empty, 0)]));
    assert!(c.delete(&empty).await.expect("delete empty"));

    // Concurrent puts cannot overshoot the quota together: of 16 puts of a
    // tenth of the quota each, exactly 10 fit.
    let tenth = (q / 10) as usize;
    let blobs: Vec<Bytes> = (0..16).map(|i| blob(100 + i, tenth)).collect();
    let ids: Vec<ShardId> = blobs.iter().map(|b| ShardId::of(b)).collect();
    let results =
        futures::future::join_all(ids.iter().zip(&blobs).map(|(id, b)| c.put(id, b.clone()))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(ContainerError::Full { .. })))
        .count();
    assert_eq!((ok, full), (10, 6), "{results:?}");
    let s = stat(c).await;
    assert_eq!(s.used_bytes, 10 * tenth as u64);
    assert_eq!(s.free_bytes, q - 10 * tenth as u64);
    assert_eq!(sorted_list(c).await.len(), 10);
    for (id, r) in ids.iter().zip(&results) {
        if r.is_ok() {
            assert!(c.delete(id).await.expect("delete"));
        }
    }
    assert_eq!(stat(c).await.used_bytes, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::s3s::S3sServer;
    use crate::container::{
        open, parse_shard_path, shard_path, ContainerKind, ContainerSpec, OpendalContainer,
    };

    #[test]
    fn shard_paths() {
        let id = ShardId::of(b"x");
        let p = shard_path(&id);
        let hex = id.to_string();
        assert_eq!(p, format!("{}/{}/{hex}", &hex[..2], &hex[2..4]));
        assert_eq!(parse_shard_path(&p), Some(id));
        assert_eq!(parse_shard_path(&format!("/{p}")), Some(id));
        assert_eq!(parse_shard_path(&hex), None);
        assert_eq!(parse_shard_path(&p.to_uppercase()), None);
        assert_eq!(parse_shard_path(&format!("{p}.tmp")), None);
        assert_eq!(parse_shard_path(&format!("00/00/{hex}")), None);
        assert_eq!(parse_shard_path(&format!(".staging/{p}")), None);
    }

    #[tokio::test]
    async fn suite_fs() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ContainerSpec::dir(dir.path().join("shards"), SUITE_QUOTA);
        let c = open(&spec).await.unwrap();
        assert_eq!(c.kind(), ContainerKind::Fs);
        run(c.as_ref()).await;
    }

    #[tokio::test]
    async fn suite_memory() {
        let c = open(&ContainerSpec::mem("m0", SUITE_QUOTA)).await.unwrap();
        assert_eq!((c.name(), c.kind()), ("m0", ContainerKind::Memory));
        run(c.as_ref()).await;
    }

    #[tokio::test]
    async fn suite_s3() {
        let server = S3sServer::start(&["shards", "other"]);
        let spec = server.spec("shards", "", SUITE_QUOTA);
        let c = open(&spec).await.unwrap();
        assert_eq!(c.kind(), ContainerKind::S3);
        assert_eq!(c.name(), format!("s3:{}/shards", server.endpoint()));
        run(c.as_ref()).await;

        // With a key prefix, and the objects really are in the bucket.
        let c = open(&server.spec("other", "node-a/v1", SUITE_QUOTA))
            .await
            .unwrap();
        run(c.as_ref()).await;
        let x = blob(9, 10);
        let id = ShardId::of(&x);
        c.put(&id, x).await.unwrap();
        let on_disk = server
            .bucket_dir("other")
            .join("node-a/v1")
            .join(shard_path(&id));
        assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), 10);
    }

    #[tokio::test]
    async fn s3_missing_bucket_fails_at_open() {
        let server = S3sServer::start(&[]);
        let err = open(&server.spec("absent", "", SUITE_QUOTA))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[tokio::test]
    async fn fs_reopen_counts_what_is_there_and_skips_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shards");
        let spec = ContainerSpec::dir(&root, 1 << 20);
        let c = OpendalContainer::open(&spec).await.unwrap();
        let (a, b) = (blob(1, 123), blob(2, 4567));
        c.put(&ShardId::of(&a), a.clone()).await.unwrap();
        c.put(&ShardId::of(&b), b.clone()).await.unwrap();
        drop(c);
        // Files that are not shards, and a leftover staged write.
        std::fs::write(root.join("README"), b"not a shard").unwrap();
        std::fs::create_dir_all(root.join("ab/cd")).unwrap();
        std::fs::write(root.join("ab/cd/notashard"), b"junk").unwrap();
        std::fs::create_dir_all(root.join(".staging/x")).unwrap();
        std::fs::write(root.join(".staging/x/partial"), vec![0u8; 999]).unwrap();

        let c = OpendalContainer::open(&spec).await.unwrap();
        let s = c.stat().await.unwrap();
        assert_eq!(s.used_bytes, 123 + 4567);
        assert_eq!(c.list().await.unwrap().len(), 2);
        assert_eq!(c.get(&ShardId::of(&b)).await.unwrap(), b);
        assert!(!root.join(".staging/x/partial").exists());
        assert_eq!(c.name(), format!("dir:{}", root.display()));
    }

    #[tokio::test]
    async fn fs_free_space_is_capped_by_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&ContainerSpec::dir(dir.path(), u64::MAX / 2))
            .await
            .unwrap();
        let s = c.stat().await.unwrap();
        let vfs = rustix::fs::statvfs(dir.path()).unwrap();
        let fs_free = vfs.f_bavail * vfs.f_frsize;
        assert_eq!(s.capacity_bytes, u64::MAX / 2);
        assert!(s.free_bytes < s.capacity_bytes);
        // Other processes write too: allow some slack either way.
        assert!(
            s.free_bytes.abs_diff(fs_free) < 64 << 20,
            "{s:?} vs {fs_free}"
        );
    }

    #[tokio::test]
    async fn disabled_features_are_named() {
        #[cfg(not(feature = "webdav"))]
        {
            let spec: ContainerSpec = "webdav:http://127.0.0.1:1/x:1G".parse().unwrap();
            let err = open(&spec).await.unwrap_err();
            assert!(err.to_string().contains("feature `webdav`"), "{err}");
        }
        #[cfg(not(feature = "sftp"))]
        {
            let spec: ContainerSpec = "sftp:h:22/x:1G".parse().unwrap();
            let err = open(&spec).await.unwrap_err();
            assert!(err.to_string().contains("feature `sftp`"), "{err}");
        }
    }
}
