//! The workload: which objects a run writes, all from the seed.
//!
//! Object `i`'s size and bytes come from a ChaCha stream keyed by
//! (seed, i), so every run with one seed writes the same bytes, and an
//! object's content can be regenerated (or just its ID remembered) instead
//! of kept. Reads pick earlier objects from a separate stream, so changing
//! `read_fraction` does not change what is written.

use std::io::Write;
use std::path::Path;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::Workload;

const MB: f64 = 1_000_000.0;

/// One object of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedObject {
    pub index: usize,
    pub size: u64,
    /// True for a satellite raster, false for an imaging study.
    pub raster: bool,
}

fn stream(seed: u64, index: usize, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose.wrapping_mul(1 << 40) ^ index as u64);
    rng
}

/// The objects a run writes, in order.
pub fn plan(seed: u64, workload: Workload, objects: usize, scale: f64) -> Vec<PlannedObject> {
    (0..objects)
        .map(|index| {
            let mut rng = stream(seed, index, 1);
            let raster = match workload {
                Workload::Medical => false,
                Workload::Satellite => true,
                // A fixed position, so that even a short run has rasters.
                Workload::Mixed => index % 10 == 5,
            };
            let bytes = if raster {
                rng.gen_range(100.0 * MB..=1000.0 * MB)
            } else {
                // Log-uniform: most studies are small, a few are large.
                (0.5 * MB) * (40.0f64).powf(rng.gen::<f64>())
            };
            PlannedObject {
                index,
                size: (bytes * scale).round() as u64,
                raster,
            }
        })
        .collect()
}

/// Writes object `index`'s bytes to `path` and returns their BLAKE3, which
/// is the ID the network must give it.
pub fn write_object(seed: u64, obj: &PlannedObject, path: &Path) -> std::io::Result<blake3::Hash> {
    let mut rng = stream(seed, obj.index, 2);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = obj.size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(hasher.finalize())
}

/// The reads of a run: after put `i`, `Some(j)` reads back object `j < i`
/// (if it was acknowledged), with probability `fraction`.
pub fn read_after(seed: u64, i: usize, fraction: f64) -> Option<usize> {
    if i == 0 {
        return None;
    }
    let mut rng = stream(seed, i, 3);
    (rng.gen::<f64>() < fraction).then(|| rng.gen_range(0..i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_writes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(7, Workload::Mixed, 20, 0.01);
        assert_eq!(p, plan(7, Workload::Mixed, 20, 0.01));
        assert_ne!(p, plan(8, Workload::Mixed, 20, 0.01));
        let a = write_object(7, &p[3], &dir.path().join("a")).unwrap();
        let b = write_object(7, &p[3], &dir.path().join("b")).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(dir.path().join("a")).unwrap().len(),
            p[3].size
        );
        assert_ne!(a, write_object(7, &p[4], &dir.path().join("c")).unwrap());
    }

    #[test]
    fn sizes_follow_the_workload() {
        let med = plan(1, Workload::Medical, 500, 1.0);
        assert!(med
            .iter()
            .all(|o| !o.raster && (500_000..=20_000_000).contains(&o.size)));
        let sat = plan(1, Workload::Satellite, 50, 1.0);
        assert!(sat
            .iter()
            .all(|o| o.raster && (100_000_000..=1_000_000_000).contains(&o.size)));
        let mixed = plan(1, Workload::Mixed, 1000, 1.0);
        let rasters = mixed.iter().filter(|o| o.raster).count();
        assert_eq!(rasters, 100, "one raster in ten");
    }
}
