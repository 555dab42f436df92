//! Reclaiming the bytes of S3 objects no name refers to any more
//! (`node/src/refs.rs`): overwritten and deleted objects go, and so do a
//! completed upload's parts once no name of the object they make up is
//! left; an object another name, or a put by ID, still relies on stays; a
//! writer that races the collector never ends with a name pointing at
//! removed bytes.

use std::path::Path;
use std::time::Duration;

use crate::admin::{scrape, sum};
use crate::harness::{data, wait_until};
use crate::s3_clients::{ok, python, Cluster, BOTO3_PREAMBLE};

/// `dynostore stat ID`: whether the object is stored (`Err` when the
/// answer says neither).
fn stored(c: &Cluster, id: &str, tok: &str) -> Result<bool, String> {
    let out = c.net.cli(&[
        "stat",
        "--json",
        id,
        "--peer",
        &c.nodes[3].addr(),
        "--token",
        tok,
    ]);
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if err.contains("no manifest") {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The sum over every node of `dynostore_name_reclaim_total{kind}`.
fn reclaim_steps(c: &Cluster, kind: &str) -> Result<f64, String> {
    let mut total = 0.0;
    for n in &c.nodes {
        total += sum(
            &scrape(n)?,
            "dynostore_name_reclaim_total",
            &[("kind", kind)],
        );
    }
    Ok(total)
}

fn stored_bytes(c: &Cluster) -> Result<f64, String> {
    let mut total = 0.0;
    for n in &c.nodes {
        total += sum(&scrape(n)?, "dynostore_stored_bytes", &[]);
    }
    Ok(total)
}

/// Python that uploads the files `parts` (in `DATA`) as the parts of
/// `keep/KEY`, in order, and completes the upload.
fn multipart(key: &str, parts: &[&str]) -> String {
    format!(
        "up = s3.create_multipart_upload(Bucket='keep', Key='{key}')['UploadId']\n\
         parts = []\n\
         for n, f in enumerate({parts:?}, 1):\n    \
             t = s3.upload_part(Bucket='keep', Key='{key}', UploadId=up, PartNumber=n, \
                                Body=open(f'{{DATA}}/{{f}}', 'rb').read())['ETag']\n    \
             parts.append({{'PartNumber': n, 'ETag': t}})\n\
         s3.complete_multipart_upload(Bucket='keep', Key='{key}', UploadId=up, \
                                      MultipartUpload={{'Parts': parts}})\n"
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    std::fs::write(dir.join(name), bytes).unwrap();
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn unnamed_s3_objects_are_reclaimed_and_named_ones_kept() {
    // Node 5 waits 6 s between storing an object and writing its name's
    // reference: long enough for a collector (4 s between condemning and
    // removing) to remove the generation the put found in between.
    let c = Cluster::start_with(6, 2, 1, |i| {
        let mut a = vec![
            "--reclaim-grace-ms".to_string(),
            "1000".into(),
            "--reclaim-wait-ms".into(),
            "4000".into(),
        ];
        if i == 5 {
            a.extend(["--fault-ref-delay-ms".to_string(), "6000".into()]);
        }
        if i == 3 {
            // Node 3 stores every completed upload whole.
            a.extend(["--s3-max-pieces".to_string(), "0".into()]);
        }
        a
    });
    let keys = c.keys("alice", "put,get,ls,rm", &[], "1");
    c.keys("cli", "put,get,ls,rm", &[], "1");
    let tok = c.root().join("cli.token");
    let tok = tok.to_str().unwrap();
    let work = c.root().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let boto = |script: &str, node: usize| {
        let s = format!(
            "{BOTO3_PREAMBLE}\ns3 = boto3.client('s3', endpoint_url=os.environ['ENDPOINT'], \
             config=Config(s3={{'addressing_style': 'path'}}, \
             retries={{'max_attempts': 10, 'mode': 'standard'}}, read_timeout=120))\n{script}"
        );
        python(&s, &c.s3[node], &keys, &work)
    };

    // 1. The race: a put through node 5 finds the object a collector has
    // just condemned; by the time its reference is written the collector
    // has removed that generation. The put must not name it.
    let r = write(&work, "r", &data(300 << 10, 1));
    ok(
        "put and delete r",
        &boto(
            "s3.create_bucket(Bucket='keep')\n\
             s3.upload_file(f'{DATA}/r', 'keep', 'r')\n\
             s3.delete_object(Bucket='keep', Key='r')\n",
            0,
        ),
    );
    wait_until(
        Duration::from_secs(60),
        "r condemned",
        || match reclaim_steps(&c, "condemned")? {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} condemned")),
        },
    );
    ok(
        "put r2 = r through the slow node",
        &boto("s3.upload_file(f'{DATA}/r', 'keep', 'r2')\n", 5),
    );
    assert!(
        reclaim_steps(&c, "refused").unwrap() >= 1.0,
        "the racing put never met the condemnation: the race was not exercised"
    );
    ok(
        "get r2",
        &boto("s3.download_file('keep', 'r2', f'{DATA}/out-r2')\n", 1),
    );
    assert!(
        std::fs::read(work.join("out-r2")).unwrap() == data(300 << 10, 1),
        "r2 does not read back"
    );
    assert_eq!(stored(&c, &r, tok), Ok(true));

    // 2. Overwrites, deletes, a second name, a put by ID and a multipart
    // upload.
    let a = write(&work, "a", &data(300 << 10, 2));
    let a2 = write(&work, "a2", &data(200 << 10, 3));
    let cc = write(&work, "c", &data(400 << 10, 4));
    let d = write(&work, "d", &data(1 << 10, 5)); // inline in its manifest
    let e = write(&work, "e", &data(250 << 10, 6));
    let f = write(&work, "f", &data(260 << 10, 9));
    let p1 = data(5 << 20, 7);
    let p2 = data(1 << 20, 8);
    let p1_id = write(&work, "p1", &p1);
    let p2_id = write(&work, "p2", &p2);
    let whole = write(&work, "m", &[p1.as_slice(), p2.as_slice()].concat());
    let q1 = data(5 << 20, 12);
    let q2 = data(1 << 20, 13);
    let q1_id = write(&work, "q1", &q1);
    let q2_id = write(&work, "q2", &q2);
    let whole_w = write(&work, "w", &[q1.as_slice(), q2.as_slice()].concat());
    // The CLI, through node 4, with the CLI user's token.
    let peer4 = c.nodes[4].addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--peer", peer4.as_str(), "--token", tok]);
        let out = c.net.cli(&all);
        ok(&format!("dynostore {args:?}"), &out);
    };
    // e is stored by ID first: that acknowledgement must outlive any name.
    cli(&["put", "--json", work.join("e").to_str().unwrap()]);
    let before = stored_bytes(&c).unwrap();
    ok(
        "names",
        &boto(
            &format!(
            "for k, f in [('a', 'a'), ('b', 'a'), ('c', 'c'), ('d', 'd'), ('e', 'e'), ('f', 'f')]:\n    \
                 s3.upload_file(f'{{DATA}}/{{f}}', 'keep', k)\n\
             {}\
             s3.copy_object(Bucket='keep', Key='m2', CopySource={{'Bucket': 'keep', 'Key': 'm'}})\n\
             s3.upload_file(f'{{DATA}}/a2', 'keep', 'a')\n",
                multipart("m", &["p1", "p2"])
            ),
            1,
        ),
    );
    // w is completed through node 3, which stores uploads whole.
    ok(
        "an upload stored whole",
        &boto(&multipart("w", &["q1", "q2"]), 3),
    );
    // f is stored through S3 first, then put by ID: the put by ID is
    // acknowledged, so f must outlive its S3 name too.
    cli(&["put", "--json", work.join("f").to_str().unwrap()]);
    ok(
        "deletes",
        &boto(
            "for k in ['c', 'd', 'e', 'f']:\n    \
                 s3.delete_object(Bucket='keep', Key=k)\n",
            1,
        ),
    );
    let gone = [&cc, &d, &q1_id, &q2_id];
    wait_until(
        Duration::from_secs(90),
        "c, d and w's parts reclaimed",
        || {
            for id in gone {
                if stored(&c, id, tok)? {
                    return Err(format!("{} still stored", &id[..8]));
                }
            }
            Ok(())
        },
    );
    // a is still named b, e was put by ID, a2 and m are named.
    for (what, id) in [
        ("a", &a),
        ("e", &e),
        ("f", &f),
        ("a2", &a2),
        ("m's part 1", &p1_id),
        ("m's part 2", &p2_id),
        ("w (stored whole)", &whole_w),
        ("r", &r),
    ] {
        assert_eq!(stored(&c, id, tok), Ok(true), "{what} was reclaimed");
    }
    // m is named as its parts: its bytes were not stored a second time.
    assert_eq!(stored(&c, &whole, tok), Ok(false), "m was stored whole");
    // c's and w's parts' copies are gone from the containers (d was inline).
    let kept = ((300u64 << 10) + (200 << 10) + (12 << 20) + (260 << 10)) as f64 * 1.5;
    let freed = ((6u64 << 20) + (400 << 10)) as f64 * 1.5;
    wait_until(
        Duration::from_secs(30),
        "the reclaimed copies released",
        || {
            let excess = stored_bytes(&c)? - (before + kept);
            match excess <= 0.1 * freed {
                true => Ok(()),
                false => Err(format!("{excess} bytes more than the kept objects' stored")),
            }
        },
    );
    ok(
        "reads",
        &boto(
            "for k in ['a', 'b', 'm', 'm2', 'w']:\n    \
                 s3.download_file('keep', k, f'{DATA}/out-{k}')\n\
             r = s3.get_object(Bucket='keep', Key='m', Range='bytes=5242000-5243000')\n\
             open(f'{DATA}/out-range', 'wb').write(r['Body'].read())\n\
             r = s3.get_object(Bucket='keep', Key='m2', PartNumber=2)\n\
             assert r['PartsCount'] == 2, r['PartsCount']\n\
             open(f'{DATA}/out-part2', 'wb').write(r['Body'].read())\n",
            4,
        ),
    );
    let m = [p1.as_slice(), p2.as_slice()].concat();
    cli(&[
        "get",
        "keep/m",
        "-o",
        work.join("out-cli-m").to_str().unwrap(),
    ]);
    for (k, bytes) in [
        ("a", data(200 << 10, 3)),
        ("b", data(300 << 10, 2)),
        ("m", m.clone()),
        ("m2", m.clone()),
        ("w", [q1.as_slice(), q2.as_slice()].concat()),
        ("range", m[5242000..5243001].to_vec()),
        ("part2", p2.clone()),
        ("cli-m", m.clone()),
    ] {
        assert!(
            std::fs::read(work.join(format!("out-{k}"))).unwrap() == bytes,
            "{k} reads other bytes"
        );
    }

    // 3. The last name of a goes: now it goes too; e (by ID) still stays.
    // The CLI's names work the same way: `put --name` stores an object to
    // be named, `rm BUCKET/KEY` deletes the name; g was put by ID as well.
    let h = write(&work, "h", &data(270 << 10, 10));
    let g = write(&work, "g", &data(280 << 10, 11));
    let (hp, gp) = (work.join("h"), work.join("g"));
    cli(&["put", "--json", gp.to_str().unwrap()]);
    cli(&["put", "--json", "--name", "keep/h", hp.to_str().unwrap()]);
    cli(&["put", "--json", "--name", "keep/g", gp.to_str().unwrap()]);
    cli(&["rm", "keep/h"]);
    cli(&["rm", "keep/g"]);
    ok(
        "delete b and m",
        &boto(
            "s3.delete_object(Bucket='keep', Key='b')\n\
             s3.delete_object(Bucket='keep', Key='m')\n",
            2,
        ),
    );
    wait_until(Duration::from_secs(60), "a and h reclaimed", || {
        for (what, id) in [("a", &a), ("h", &h)] {
            if stored(&c, id, tok)? {
                return Err(format!("{what} still stored"));
            }
        }
        Ok(())
    });
    assert_eq!(
        stored(&c, &g, tok),
        Ok(true),
        "g (also put by ID) was reclaimed"
    );
    assert_eq!(stored(&c, &e, tok), Ok(true), "e was reclaimed");
    assert_eq!(stored(&c, &f, tok), Ok(true), "f was reclaimed");
    assert_eq!(stored(&c, &r, tok), Ok(true), "r was reclaimed");
    // m's copy m2 still names the parts.
    for (what, id) in [("part 1", &p1_id), ("part 2", &p2_id)] {
        assert_eq!(stored(&c, id, tok), Ok(true), "{what} of m2 was reclaimed");
    }

    // 4. The last name of the parts goes: so do they.
    ok(
        "delete m2",
        &boto("s3.delete_object(Bucket='keep', Key='m2')\n", 3),
    );
    wait_until(Duration::from_secs(60), "m2's parts reclaimed", || {
        for (what, id) in [("part 1", &p1_id), ("part 2", &p2_id)] {
            if stored(&c, id, tok)? {
                return Err(format!("{what} still stored"));
            }
        }
        Ok(())
    });
}
