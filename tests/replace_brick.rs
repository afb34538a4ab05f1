//! `stretto volume replace-brick` end to end: a replica-3 volume loses a
//! brick (SIGKILL), a fresh fourth brick takes its place, and the full heal
//! copies the set's data to it. Every chunk is then read raw from each brick
//! of the set and compared byte for byte, and the data are read back through
//! the volume with only the new brick up.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{run, stretto, Pool};
use iobuf::IoBuf;
use transport::wire::{
    ChunkEntry, DataRef, ListChunksReq, ObjectId, ObjectReq, ReadReq, CHUNKS_MORE,
};
use transport::{ClientOptions, Payload, Request, Response, Secret, TcpClient};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one stderr line of a failed command.
fn fails(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "command should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `stretto nbd serve` for volume `vm` through `pool`; returns the child and
/// the export's URI base.
fn nbd_serve(pool: &str, secret: &str) -> (Child, String) {
    let mut nbd = stretto()
        .args([
            "nbd",
            "serve",
            "--volume",
            "vm",
            "--listen",
            "127.0.0.1:0",
            "--pool",
            pool,
            "--secret-file",
            secret,
        ])
        .env("STRETTO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(nbd.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("nbd serve did not start: {line:?}"))
        .to_string();
    std::thread::spawn(move || for _ in out.lines() {});
    (nbd, format!("nbd://{addr}/disk0"))
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let io = c.arg(uri).output().unwrap();
    let out = String::from_utf8_lossy(&io.stdout);
    assert!(
        io.status.success() && !out.contains("Pattern verification failed"),
        "qemu-io {cmds:?}: {out} {}",
        String::from_utf8_lossy(&io.stderr)
    );
}

async fn list(c: &TcpClient, volume: u32) -> Vec<ChunkEntry> {
    let mut all = Vec::new();
    let mut start = ObjectId {
        volume,
        vnode: 0,
        unique: 0,
        chunk: 0,
    };
    loop {
        let (r, _) = c
            .call(
                Request::ListChunks(ListChunksReq { volume, start }),
                Payload::None,
            )
            .await
            .expect("list call");
        let Response::ListChunks(r) = r else {
            panic!("ListChunks failed: {r:?}")
        };
        let last = r.chunks.last().map(|c| c.object);
        all.extend(r.chunks);
        match last {
            Some(l) if r.flags & CHUNKS_MORE != 0 => {
                start = ObjectId {
                    chunk: l.chunk + 1,
                    ..l
                }
            }
            _ => return all,
        }
    }
}

/// A chunk's size and bytes, read raw from one brick.
async fn chunk(c: &TcpClient, object: ObjectId) -> (u64, Vec<u8>) {
    let (r, _) = c
        .call(Request::Stat(ObjectReq { object }), Payload::None)
        .await
        .expect("stat call");
    let Response::Stat(st) = r else {
        panic!("no chunk {object:?}: {r:?}")
    };
    let mut data = Vec::new();
    let mut off = 0;
    while off < st.size {
        let len = (st.size - off).min(1 << 20) as usize;
        let mut buf = IoBuf::alloc(len);
        buf.set_len(len);
        let (resp, back) = c
            .call(
                Request::Read(ReadReq {
                    object,
                    offset: off,
                    len: len as u32,
                    data: DataRef::Inline { len: len as u32 },
                }),
                Payload::In(buf),
            )
            .await
            .expect("read call");
        assert!(matches!(resp, Response::Read(_)), "read: {resp:?}");
        let b = back.into_buf().unwrap();
        data.extend_from_slice(&b.as_slice()[..len.min(b.len())]);
        data.resize(off as usize + len, 0);
        off += len as u64;
    }
    (st.size, data)
}

#[test]
fn replace_a_killed_brick_and_fill_the_new_one() {
    let mut pool = Pool::start(4);
    let (b0, b1, b2, b3) = (pool.addr(0), pool.addr(1), pool.addr(2), pool.addr(3));
    let secret = pool.secret.to_str().unwrap().to_string();
    ok(pool.volume(
        0,
        &[
            "create",
            "vm",
            "replica",
            "3",
            &b0,
            &b1,
            &b2,
            "--chunk-size",
            "1M",
        ],
    ));
    ok(pool.volume(0, &["start", "vm"]));
    ok(run(&[
        "image",
        "create",
        "disk0",
        "8M",
        "--volume",
        "vm",
        "--pool",
        &b0,
        "--secret-file",
        &secret,
    ]));

    // Data on all three; then brick 2 dies and more is written without it.
    // 5M..6M and 7M..8M are never written (holes).
    let (nbd, uri) = nbd_serve(&b0, &secret);
    qemu_io(
        &uri,
        &["write -P 0x3c 0 3M", "write -P 0x11 3M 100K", "flush"],
    );
    pool.bricks[2].take().unwrap().kill9();
    qemu_io(
        &uri,
        &["write -P 0x5a 4M 1M", "write -P 0x77 6M 4K", "flush"],
    );
    // The full heal skips objects a writer holds: stop the export first.
    stop(nbd);

    // The error cases change nothing.
    let e = fails(pool.volume(0, &["replace-brick", "vm", "127.0.0.1:1", &b3]));
    assert!(e.contains("is not a brick of volume vm"), "{e}");
    let e = fails(pool.volume(0, &["replace-brick", "vm", &b2, &b1]));
    assert!(e.contains("is already a brick of volume vm"), "{e}");
    let e = fails(pool.volume(0, &["replace-brick", "vm", &b2, "127.0.0.1:1"]));
    assert!(e.contains("127.0.0.1:1 is unreachable"), "{e}");
    let e = fails(pool.volume(0, &["replace-brick", "nope", &b2, &b3]));
    assert!(e.contains("no volume named nope"), "{e}");
    let info = ok(pool.volume(0, &["info", "vm"]));
    assert!(info.contains(&b2) && !info.contains(&b3), "{info}");

    let out = pool.volume(0, &["replace-brick", "vm", &b2, &b3]);
    let stdout = ok(out.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("{b2} replaced by {b3} in set 0")),
        "{stdout}"
    );
    assert!(stdout.contains("was unreachable"), "{stdout}");
    assert!(stdout.contains("0 objects busy"), "{stdout}");
    assert!(
        stderr.contains("copied from") && stderr.contains(&b3),
        "progress lines expected on stderr: {stderr}"
    );

    // Every remaining brick, and the new one, lists B3 where B2 was.
    for via in [0, 1, 3] {
        let info = ok(pool.volume(via, &["info", "vm"]));
        let b3_line = info.lines().position(|l| l.contains(&b3));
        let b1_line = info.lines().position(|l| l.contains(&b1));
        assert!(!info.contains(&b2), "{info}");
        assert!(b3_line > b1_line && b1_line.is_some(), "B3 third: {info}");
    }

    // Raw: every chunk is the same on the three bricks of the set.
    let volume_id = 1;
    let rt = rt();
    rt.block_on(async {
        let s = Secret::load(&pool.secret).unwrap();
        let mut conns = Vec::new();
        for a in [&b0, &b1, &b3] {
            conns.push(
                TcpClient::connect(a, s.clone(), ClientOptions::default())
                    .await
                    .unwrap(),
            );
        }
        // Each brick itself holds the new description, the new pool table
        // and (B3) the image table.
        for (i, c) in conns.iter().enumerate() {
            for id in [volume_id, 0, volume::volfile::images_id(volume_id)] {
                let (r, _) = c
                    .call(
                        Request::GetVolConfig(transport::wire::GetVolConfig { volume: id }),
                        Payload::None,
                    )
                    .await
                    .unwrap();
                let Response::VolConfig(cfg) = r else {
                    panic!("brick {i} lacks configuration {id}: {r:?}")
                };
                match volume::volfile::decode(&cfg.config).unwrap() {
                    volume::volfile::Record::Volume(spec) => {
                        assert_eq!(spec.bricks, vec![b0.clone(), b1.clone(), b3.clone()])
                    }
                    volume::volfile::Record::PoolTable(t) => {
                        assert_eq!(
                            t.volumes["vm"].bricks,
                            vec![b0.clone(), b1.clone(), b3.clone()]
                        )
                    }
                    volume::volfile::Record::Images(t) => assert!(t.images.contains_key("disk0")),
                    other => panic!("brick {i} config {id}: {other:?}"),
                }
            }
        }
        let want = list(&conns[0], volume_id).await;
        // 0..3M, 3M (+100K), 4M, 6M and the size record.
        assert_eq!(want.len(), 7, "{want:?}");
        for (i, c) in conns.iter().enumerate() {
            let got: Vec<ObjectId> = list(c, volume_id).await.iter().map(|e| e.object).collect();
            let w: Vec<ObjectId> = want.iter().map(|e| e.object).collect();
            assert_eq!(got, w, "brick {i} lists other chunks");
        }
        for e in &want {
            let first = chunk(&conns[0], e.object).await;
            for c in &conns[1..] {
                let other = chunk(c, e.object).await;
                assert_eq!(first.0, other.0, "size of {:?}", e.object);
                assert!(first.1 == other.1, "bytes of {:?} differ", e.object);
            }
        }
    });

    // An interrupted copy: a chunk B3 lacks is found and copied by the
    // catch-up full heal; nothing else is copied.
    rt.block_on(async {
        let s = Secret::load(&pool.secret).unwrap();
        let c = TcpClient::connect(&b3, s, ClientOptions::default())
            .await
            .unwrap();
        let object = list(&c, volume_id).await[1].object;
        let (r, _) = c
            .call(
                Request::Remove(transport::wire::RemoveReq { object, epoch: 0 }),
                Payload::None,
            )
            .await
            .unwrap();
        assert!(matches!(r, Response::Remove), "{r:?}");
        assert_eq!(list(&c, volume_id).await.len(), 6);
    });
    let healed = ok(pool.volume(1, &["heal", "vm", "full"]));
    assert!(healed.contains("full heal: 1 chunks copied"), "{healed}");
    let healed = ok(pool.volume(1, &["heal", "vm", "full"]));
    assert!(healed.contains("full heal: 0 chunks copied"), "{healed}");

    // Through the volume, with only the new brick up (quorum off, so the
    // export may take its lease from one brick).
    ok(pool.volume(3, &["set", "vm", "quorum-type", "none"]));
    pool.bricks[0].take().unwrap().kill9();
    pool.bricks[1].take().unwrap().kill9();
    let (nbd, uri) = nbd_serve(&b3, &secret);
    qemu_io(
        &uri,
        &[
            "read -P 0x3c 0 3M",
            "read -P 0x11 3M 100K",
            "read -P 0 3172K 876K",
            "read -P 0x5a 4M 1M",
            "read -P 0 5M 1M",
            "read -P 0x77 6M 4K",
            "read -P 0 6148K 2044K",
        ],
    );
    stop(nbd);

    // A full heal to B3 with every source down copies nothing and says so.
    let again = pool.volume(3, &["heal", "vm", "full", &b3]);
    assert!(!again.status.success());
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.contains("could not list its chunks"), "{out}");
}

/// The description configuration `id` on `brick`, decoded.
fn config_on(brick: &str, secret: &std::path::Path, id: u32) -> volume::volfile::Record {
    rt().block_on(async {
        let s = Secret::load(secret).unwrap();
        let c = TcpClient::connect(brick, s, ClientOptions::default())
            .await
            .unwrap();
        let (r, _) = c
            .call(
                Request::GetVolConfig(transport::wire::GetVolConfig { volume: id }),
                Payload::None,
            )
            .await
            .unwrap();
        let Response::VolConfig(cfg) = r else {
            panic!("{brick} lacks configuration {id}: {r:?}")
        };
        volume::volfile::decode(&cfg.config).unwrap()
    })
}

#[test]
fn replace_a_live_brick_and_refuse_a_used_one() {
    let pool = Pool::start(4);
    let (b0, b1, b2, b3) = (pool.addr(0), pool.addr(1), pool.addr(2), pool.addr(3));
    ok(pool.volume(0, &["create", "vm", "replica", "2", &b0, &b1]));
    ok(pool.volume(0, &["create", "other", &b3]));

    // NEW in another volume: one line, nothing changed.
    let e = fails(pool.volume(0, &["replace-brick", "vm", &b1, &b3]));
    assert!(
        e.contains(&format!("{b3} is already a brick of volume other")),
        "{e}"
    );
    let gens = |b: &str| match config_on(b, &pool.secret, 1) {
        volume::volfile::Record::Volume(s) => (s.generation, s.bricks),
        other => panic!("{other:?}"),
    };
    let before = gens(&b0);
    assert_eq!(before.1, vec![b0.clone(), b1.clone()]);

    // OLD alive: it is told too, and the new brick knows the pool.
    let out = ok(pool.volume(0, &["replace-brick", "vm", &b1, &b2]));
    assert!(
        out.contains(&format!("{b1} replaced by {b2} in set 0")),
        "{out}"
    );
    assert!(!out.contains("unreachable"), "{out}");
    assert!(out.contains("0 chunks copied"), "{out}");
    for b in [&b0, &b1, &b2] {
        let (g, bricks) = gens(b);
        assert_eq!(g, before.0 + 1, "{b}");
        assert_eq!(bricks, vec![b0.clone(), b2.clone()], "{b}");
    }
    let list = ok(pool.volume(2, &["list"]));
    assert!(list.contains("vm") && list.contains("other"), "{list}");
    // The replaced brick is free again; the new one is taken.
    let e = fails(pool.volume(2, &["replace-brick", "vm", &b1, &b3]));
    assert!(e.contains("is not a brick of volume vm"), "{e}");
    // A replaced brick may be put back (its old description is replaced).
    ok(pool.volume(2, &["replace-brick", "vm", &b2, &b1]));
    for b in [&b0, &b1, &b2] {
        let (g, bricks) = gens(b);
        assert_eq!(g, before.0 + 2, "{b}");
        assert_eq!(bricks, vec![b0.clone(), b1.clone()], "{b}");
    }
}
