//! End-to-end integrity on real brick processes: a byte flipped in a chunk
//! file on disk is caught by the brick's CRC check (`Corrupt`, counted in
//! its stats), reads through the volume still return the right data and
//! repair the bad copy, and `stretto volume scrub` finds and repairs what
//! no read touched.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::Pool;
use iobuf::IoBuf;
use transport::wire::{DataRef, ReadReq};
use transport::{ClientOptions, ErrorCode, Payload, Request, Response, Secret, TcpClient};
use volume::{Client, Fid};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where brick `dir` keeps chunk 0 of `fid` (docs/objects.md).
fn chunk_file(dir: &Path, fid: Fid) -> PathBuf {
    let id = storage::objects::ChunkId::new(
        storage::objects::Fid {
            volume: fid.volume,
            vnode: fid.vnode,
            unique: fid.unique,
        },
        0,
    );
    dir.join("objects").join(id.relative_path())
}

/// Flips every bit of the byte at `at` of `path`, behind the brick's back.
fn flip_byte(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn brick(addr: &str, secret: &Secret) -> TcpClient {
    TcpClient::connect(addr, secret.clone(), ClientOptions::default())
        .await
        .expect("connect to brick")
}

/// Reads a range of chunk 0 of `fid` straight from one brick.
async fn read_direct(c: &TcpClient, fid: Fid, offset: u64, len: u32) -> Result<Vec<u8>, ErrorCode> {
    let req = Request::ReadBlocks(ReadReq {
        object: fid.chunk(0),
        offset,
        len,
        data: DataRef::None,
    });
    match c
        .call(req, Payload::In(IoBuf::alloc(len as usize)))
        .await
        .expect("call")
    {
        (Response::ReadBlocks(r), p) => {
            let data = p.into_buf().expect("data").as_slice().to_vec();
            transport::wire::check_block_crcs(offset, &data, &r.crcs).expect("reply CRCs");
            Ok(data)
        }
        (Response::Error(e), _) => Err(e.code),
        (other, _) => panic!("unexpected {other:?}"),
    }
}

async fn corrupt_blocks(c: &TcpClient) -> u64 {
    match c.call(Request::BrickStats, Payload::None).await.unwrap() {
        (Response::BrickStats(s), _) => s.corrupt_blocks,
        (other, _) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn flipped_bytes_are_caught_read_around_repaired_and_scrubbed() {
    common::logs();
    let pool = Pool::start(3);
    let addrs: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    ok(pool.volume(
        0,
        &[
            "create", "v", "replica", "3", &addrs[0], &addrs[1], &addrs[2],
        ],
    ));
    ok(pool.volume(0, &["start", "v"]));
    let never = ok(pool.volume(0, &["scrub", "v", "status"]));
    assert!(never.contains("never scrubbed"), "{never}");
    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    const LEN: usize = 1 << 20;
    let data = pattern(LEN, 7);
    let fid = rt.block_on(async {
        let spec = volume::manage::fetch(&addrs, &secret, "v").await.unwrap();
        let fid = Fid {
            volume: spec.id,
            vnode: 40,
            unique: 1,
        };
        let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        let obj = client.object(fid);
        obj.write(0, &data).await.unwrap();
        obj.flush().await.unwrap();
        client.close().await;
        fid
    });

    // 1. A byte of brick 0's copy goes bad. Reads through the volume (round
    // robin, so brick 0 is asked) return the right data; brick 0 counts
    // the bad block, and the read repaired its copy.
    flip_byte(&chunk_file(&pool.dirs[0], fid), 5000);
    rt.block_on(async {
        let b0 = brick(&addrs[0], &secret).await;
        assert_eq!(
            read_direct(&b0, fid, 4096, 4096).await,
            Err(ErrorCode::Corrupt),
            "the brick checks data at rest"
        );
        // Unaligned reads around the bad block are refused too.
        assert_eq!(
            read_direct(&b0, fid, 4999, 3).await,
            Err(ErrorCode::Corrupt)
        );
        assert!(corrupt_blocks(&b0).await >= 1);
        let spec = volume::manage::fetch(&addrs, &secret, "v").await.unwrap();
        let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        for _ in 0..3 {
            let got = client.object(fid).read(0, LEN as u64).await.unwrap();
            assert!(got == data, "a read through the volume returned bad data");
        }
        client.close().await;
        // The corruption and its repair are logged at warn, naming brick 0.
        let log = common::logged();
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("corrupt copy") && l.contains(&addrs[0])),
            "the corruption is not logged: {log}"
        );
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("repaired a corrupt copy")
                && l.contains(&addrs[0])),
            "the repair is not logged: {log}"
        );
        assert_eq!(
            read_direct(&b0, fid, 0, 16384).await.as_deref(),
            Ok(&data[..16384]),
            "the read repaired brick 0's copy"
        );
        b0.close().await;
    });

    // 2. Bytes no read touches go bad on bricks 1 and 2: scrub finds and
    // repairs both, and says so.
    flip_byte(&chunk_file(&pool.dirs[1], fid), 600_000);
    flip_byte(&chunk_file(&pool.dirs[2], fid), 900_001);
    rt.block_on(async {
        let b1 = brick(&addrs[1], &secret).await;
        assert_eq!(
            read_direct(&b1, fid, 598_016, 4096).await,
            Err(ErrorCode::Corrupt)
        );
        b1.close().await;
    });
    let out = ok(pool.volume(0, &["scrub", "v"]));
    assert!(out.contains("corrupt blocks: 2\n"), "{out}");
    assert!(out.contains("repaired: 2\n"), "{out}");
    assert!(out.contains("unrepairable: 0\n"), "{out}");
    assert!(out.contains("chunks checked: "), "{out}");
    rt.block_on(async {
        for (i, off) in [(1usize, 598_016u64), (2, 897_024)] {
            let b = brick(&addrs[i], &secret).await;
            assert_eq!(
                read_direct(&b, fid, off, 8192).await.as_deref(),
                Ok(&data[off as usize..off as usize + 8192]),
                "scrub repaired brick {i}"
            );
            b.close().await;
        }
    });
    // `stretto brick stats` shows the count too.
    let stats = ok(common::run(&[
        "brick",
        "stats",
        &addrs[1],
        "--secret-file",
        pool.secret.to_str().unwrap(),
    ]));
    assert!(
        stats.contains("corrupt  ") && !stats.contains("corrupt        0 blocks"),
        "{stats}"
    );
    let status = ok(pool.volume(1, &["scrub", "v", "status"]));
    assert!(status.contains("repaired: 2\n"), "{status}");
    // Nothing left to find.
    let again = ok(pool.volume(0, &["scrub", "v"]));
    assert!(again.contains("corrupt blocks: 0\n"), "{again}");
    let status = ok(pool.volume(2, &["scrub", "v", "status"]));
    assert!(status.contains("corrupt blocks: 0\n"), "{status}");
    assert!(status.contains("chunks checked: "), "{status}");
}

#[test]
fn scrub_of_a_distribute_volume_reports_what_it_cannot_repair() {
    let pool = Pool::start(2);
    let addrs: Vec<String> = (0..2).map(|i| pool.addr(i)).collect();
    ok(pool.volume(0, &["create", "d", &addrs[0], &addrs[1]]));
    ok(pool.volume(0, &["start", "d"]));
    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = pattern(64 << 10, 3);
    let (fid, holder) = rt.block_on(async {
        let spec = volume::manage::fetch(&addrs, &secret, "d").await.unwrap();
        let fid = Fid {
            volume: spec.id,
            vnode: 9,
            unique: 1,
        };
        let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        let obj = client.object(fid);
        obj.write(0, &data).await.unwrap();
        obj.flush().await.unwrap();
        client.close().await;
        (fid, volume::xlator::place(fid, 0, 2))
    });
    flip_byte(&chunk_file(&pool.dirs[holder], fid), 10_000);
    // The only copy is bad: reads fail clearly, naming the brick.
    rt.block_on(async {
        let spec = volume::manage::fetch(&addrs, &secret, "d").await.unwrap();
        let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        let e = client.object(fid).read(8192, 4096).await.unwrap_err();
        assert!(matches!(e, volume::VolumeError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&addrs[holder]), "{e}");
        // Other blocks of the chunk still read.
        let got = client.object(fid).read(0, 8192).await.unwrap();
        assert_eq!(got, data[..8192]);
        client.close().await;
    });
    let out = pool.volume(0, &["scrub", "d"]);
    assert!(
        !out.status.success(),
        "scrub must fail when it cannot repair"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("corrupt blocks: 1\n"), "{stdout}");
    assert!(stdout.contains("unrepairable: 1\n"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be repaired"), "{stderr}");
}
