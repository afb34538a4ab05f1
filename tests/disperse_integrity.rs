//! End-to-end integrity of a dispersed volume on real brick processes: a
//! byte flipped in a fragment file on a brick's disk is caught by the
//! brick's CRC check, reads through the volume (the volume client, and
//! `stretto nbd serve` driven by qemu-io) still return the right data by
//! decoding around the bad fragment, the repair is logged at warn and the
//! brick holds the right fragment again; `stretto volume scrub` finds and
//! rebuilds a bad fragment block no read touched (here parity), and a
//! second scrub finds nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{logged, logs, stretto, Pool};
use iobuf::IoBuf;
use transport::wire::{DataRef, ReadReq};
use transport::{ClientOptions, ErrorCode, Payload, Request, Response, Secret, TcpClient};
use volume::{Client, Fid};

/// Fragment unit: brick `j` holds fragment `j` of stripe `s` at `s * U`.
const U: usize = 4096;
const K: usize = 2;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where brick `dir` keeps its fragment object of chunk 0 of `fid`
/// (docs/objects.md).
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

/// Brick `j`'s fragment of stripe `s` of `data` (2+1: parity from the
/// codec the volume uses).
fn fragment(data: &[u8], s: usize, j: usize) -> Vec<u8> {
    let d: Vec<&[u8]> = (0..K)
        .map(|i| &data[(s * K + i) * U..(s * K + i + 1) * U])
        .collect();
    if j < K {
        return d[j].to_vec();
    }
    let codec = volume::ec::Codec::new(K, 1).expect("codec");
    codec.encode(&d).expect("encode").remove(j - K)
}

/// Reads a range of fragment object `chunk 0` of `fid` straight from one
/// brick.
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

async fn brick(addr: &str, secret: &Secret) -> TcpClient {
    TcpClient::connect(addr, secret.clone(), ClientOptions::default())
        .await
        .expect("connect to brick")
}

fn disperse_2_1(pool: &Pool, name: &str) {
    let addrs: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    ok(pool.volume(
        0,
        &[
            "create", name, "disperse", "2+1", &addrs[0], &addrs[1], &addrs[2],
        ],
    ));
    ok(pool.volume(0, &["start", name]));
}

#[test]
fn flipped_fragment_bytes_are_decoded_around_repaired_and_scrubbed() {
    let logs = logs();
    let pool = Pool::start(3);
    disperse_2_1(&pool, "ec");
    let addrs: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    let never = ok(pool.volume(0, &["scrub", "ec", "status"]));
    assert!(never.contains("never scrubbed"), "{never}");
    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    const LEN: usize = 1 << 20;
    let data = pattern(LEN, 11);
    let connect = |spec| Client::connect_spec(spec, secret.clone(), ClientOptions::default());
    let fid = rt.block_on(async {
        let spec = volume::manage::fetch(&addrs, &secret, "ec").await.unwrap();
        let fid = Fid {
            volume: spec.id,
            vnode: 77,
            unique: 1,
        };
        let client = connect(spec).await.unwrap();
        let obj = client.object(fid);
        obj.write(0, &data).await.unwrap();
        obj.flush().await.unwrap();
        client.close().await;
        fid
    });

    // 1. A byte of data brick 0's fragment of stripe 1 goes bad. The brick
    // refuses it (`Corrupt`); a read through the volume decodes stripe 1
    // from brick 1 and the parity, returns the right data, says so at
    // warn, and rewrites brick 0's fragment.
    flip_byte(&chunk_file(&pool.dirs[0], fid), (U + 904) as u64);
    logs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    rt.block_on(async {
        let b0 = brick(&addrs[0], &secret).await;
        assert_eq!(
            read_direct(&b0, fid, U as u64, U as u32).await,
            Err(ErrorCode::Corrupt),
            "the brick checks fragments at rest"
        );
        let spec = volume::manage::fetch(&addrs, &secret, "ec").await.unwrap();
        let client = connect(spec).await.unwrap();
        let got = client.object(fid).read(0, LEN as u64).await.unwrap();
        assert!(got == data, "a read through the volume returned bad data");
        let log = logged();
        assert!(
            log.contains("corrupt fragment") && log.contains(&addrs[0]),
            "the corruption is not logged: {log}"
        );
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("repaired a bad fragment")
                && l.contains(&addrs[0])),
            "the repair is not logged: {log}"
        );
        assert_eq!(
            read_direct(&b0, fid, 0, 4 * U as u32).await,
            Ok([0, 1, 2, 3]
                .iter()
                .flat_map(|&s| fragment(&data, s, 0))
                .collect()),
            "the read rewrote brick 0's fragment"
        );
        // Reads go on returning the right data, unaligned ones too.
        let got = client.object(fid).read(5000, 20_000).await.unwrap();
        assert!(got == data[5000..25_000]);
        client.close().await;
        b0.close().await;
    });

    // 2. A byte of the parity brick's fragment of stripe 70 goes bad; no
    // read touches parity while the data bricks are good. Scrub finds it,
    // rebuilds it from the data fragments, and says so.
    flip_byte(&chunk_file(&pool.dirs[2], fid), (70 * U + 17) as u64);
    let out = ok(pool.volume(0, &["scrub", "ec"]));
    assert!(out.contains("corrupt blocks: 1\n"), "{out}");
    assert!(out.contains("repaired: 1\n"), "{out}");
    assert!(out.contains("unrepairable: 0\n"), "{out}");
    assert!(out.contains("chunks checked: "), "{out}");
    rt.block_on(async {
        let b2 = brick(&addrs[2], &secret).await;
        assert_eq!(
            read_direct(&b2, fid, 69 * U as u64, 3 * U as u32).await,
            Ok([69, 70, 71]
                .iter()
                .flat_map(|&s| fragment(&data, s, 2))
                .collect()),
            "scrub rebuilt the parity fragment"
        );
        b2.close().await;
    });
    let status = ok(pool.volume(1, &["scrub", "ec", "status"]));
    assert!(status.contains("corrupt blocks: 1\n"), "{status}");
    assert!(status.contains("repaired: 1\n"), "{status}");
    // Nothing left to find.
    let again = ok(pool.volume(0, &["scrub", "ec"]));
    assert!(again.contains("corrupt blocks: 0\n"), "{again}");
    assert!(again.contains("repaired: 0\n"), "{again}");
    let status = ok(pool.volume(2, &["scrub", "ec", "status"]));
    assert!(status.contains("corrupt blocks: 0\n"), "{status}");

    // 3. Two blocks of one stripe go bad on two bricks of a 2+1 set: no K
    // good fragments are left, so scrub reports them unrepairable (and
    // fails) instead of writing a guess.
    flip_byte(&chunk_file(&pool.dirs[0], fid), (100 * U) as u64);
    flip_byte(&chunk_file(&pool.dirs[1], fid), (100 * U + 1) as u64);
    let out = pool.volume(0, &["scrub", "ec"]);
    assert!(
        !out.status.success(),
        "scrub must fail when it cannot repair"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("corrupt blocks: 2\n"), "{stdout}");
    assert!(stdout.contains("repaired: 0\n"), "{stdout}");
    assert!(stdout.contains("unrepairable: 2\n"), "{stdout}");
}

/// `stretto nbd serve` on a 2+1 volume, driven by qemu-io: a flipped byte
/// in a data fragment under the image reads back right through NBD, and
/// the server logs the repair at warn.
#[test]
fn nbd_reads_decode_around_a_flipped_fragment_byte() {
    let pool = Pool::start(3);
    disperse_2_1(&pool, "vm");
    let secret = pool.secret.to_str().unwrap().to_owned();
    ok(common::run(&[
        "image",
        "create",
        "disk",
        "4M",
        "--volume",
        "vm",
        "--pool",
        &pool.addr(0),
        "--secret-file",
        &secret,
    ]));
    let log_path = pool.root.path().join("nbd.log");
    let mut child = stretto()
        .args(["nbd", "serve", "--volume", "vm", "--listen", "127.0.0.1:0"])
        .args(["--pool", &pool.addr(0), "--secret-file", &secret])
        .env("STRETTO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn nbd serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("nbd serve did not start: {line:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in out.lines() {});
    let uri = format!("nbd://{addr}/disk");
    let qemu_io = |cmd: &str| {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd, &uri])
            .output()
            .expect("qemu-io (apt-get install -y qemu-utils)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && !text.contains("Pattern verification failed"),
            "qemu-io {cmd}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    qemu_io("write -P 0xab 0 1M");
    qemu_io("flush");

    // The image's chunk 0 fragment on data brick 0: a brick object whose
    // first bytes are the pattern (the writer's stage object of that chunk
    // holds the same fragment: both go bad, only the first is read).
    let files: Vec<PathBuf> = find_files(&pool.dirs[0].join("objects"))
        .into_iter()
        .filter(|p| {
            let mut b = [0u8; 4096];
            std::fs::File::open(p)
                .and_then(|mut f| f.read_exact(&mut b))
                .is_ok()
                && b.iter().all(|x| *x == 0xab)
        })
        .collect();
    assert!(!files.is_empty(), "brick 0 holds no fragment of the image");
    for f in &files {
        flip_byte(f, 3 * U as u64 + 5);
    }
    qemu_io("read -P 0xab 0 1M");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("WARN") && log.contains("repaired a bad fragment"),
        "the nbd server did not log the repair: {log}"
    );
}

fn find_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
