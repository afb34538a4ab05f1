//! The server driven by real NBD clients (libnbd's nbdinfo/nbdsh/nbdcopy,
//! qemu-img/qemu-io, fio's nbd engine, nbdfuse + loop + ext4) on 127.0.0.1.
//!
//! The server runs in-process on its own tokio runtime; clients run as child
//! processes. A missing client fails the test with the package to install
//! (scripts/test.sh installs them all).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use nbd::wire::*;
use nbd::{ExportSet, FileExport, MemoryExport};
use rand::{RngCore, SeedableRng};
use tokio::sync::watch;

struct TestServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    done: Option<std::sync::mpsc::Receiver<std::io::Result<()>>>,
    _rt: tokio::runtime::Runtime,
}

impl TestServer {
    fn start(set: ExportSet) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = watch::channel(false);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let set = Arc::new(set);
        rt.spawn(async move {
            let r = nbd::serve(listener, set, rx).await;
            let _ = done_tx.send(r);
        });
        TestServer {
            addr,
            shutdown: tx,
            done: Some(done_rx),
            _rt: rt,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.addr, export)
    }

    /// Asks for shutdown and waits for `serve` to return.
    fn stop(&mut self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.done.take() {
            Some(rx) => rx.recv().expect("serve task ended without a result"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/bin").join(tool).is_file()
        || Path::new("/usr/sbin").join(tool).is_file();
    assert!(
        found,
        "{tool} is not installed: apt-get install -y {package} (scripts/test.sh installs it)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// nbdsh with Debian's python (the one that has the `nbd` module).
fn nbdsh() -> Command {
    need("nbdsh", "libnbd-bin python3-libnbd");
    let mut c = Command::new("/usr/bin/nbdsh");
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:{path}"));
    c
}

fn memory_set(exports: &[(&str, u64)]) -> ExportSet {
    let mut set = ExportSet::new();
    for (name, size) in exports {
        set.add(
            *name,
            format!("memory {name}"),
            Arc::new(MemoryExport::new(*size)),
        )
        .unwrap();
    }
    set
}

const MIB: u64 = 1 << 20;

#[test]
fn nbdinfo_shows_size_block_sizes_flags_map_and_list() {
    need("nbdinfo", "libnbd-bin");
    need("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let mut set = memory_set(&[("mem", 64 * MIB), ("small", MIB)]);
    let file = FileExport::create(dir.path().join("f.img"), 16 * MIB).unwrap();
    set.add("file", "a sparse file", Arc::new(file)).unwrap();
    let srv = TestServer::start(set);

    let info = stdout(Command::new("nbdinfo").arg(srv.uri("mem")));
    for line in [
        "export-size: 67108864",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "block_size_maximum: 33554432",
        "can_trim: true",
        "can_fast_zero: true",
        "can_multi_conn: true",
        "can_flush: true",
        "can_fua: true",
        "can_cache: true",
        "can_zero: true",
        "can_df: true",
        "is_read_only: false",
        "base:allocation",
        "description: memory mem",
    ] {
        assert!(info.contains(line), "nbdinfo lacks {line:?}:\n{info}");
    }
    assert_eq!(
        stdout(Command::new("nbdinfo").arg("--size").arg(srv.uri("small"))).trim(),
        "1048576"
    );

    // Sparse writes, then the allocation map shows exactly them.
    for export in ["mem", "file"] {
        run(Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0x11 1M 1M",
                "-c",
                "write -P 0x22 8M 64k",
            ])
            .arg(srv.uri(export)));
        let map = stdout(Command::new("nbdinfo").arg("--map").arg(srv.uri(export)));
        let rows: Vec<(u64, u64, u32)> = map
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        let size = if export == "mem" { 64 * MIB } else { 16 * MIB };
        assert_eq!(
            rows,
            vec![
                (0, MIB, 3),
                (MIB, MIB, 0),
                (2 * MIB, 6 * MIB, 3),
                (8 * MIB, 64 * 1024, 0),
                (8 * MIB + 64 * 1024, size - 8 * MIB - 64 * 1024, 3),
            ],
            "map of {export}:\n{map}"
        );
    }

    let list = stdout(Command::new("nbdinfo").arg("--list").arg(srv.uri("")));
    for needle in [
        "export=\"mem\"",
        "export=\"small\"",
        "export=\"file\"",
        "description: a sparse file",
    ] {
        assert!(list.contains(needle), "list lacks {needle}:\n{list}");
    }
}

#[test]
fn qemu_img_convert_compare_qemu_io_and_nbdcopy() {
    need("qemu-img", "qemu-utils");
    need("qemu-io", "qemu-utils");
    need("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let mut data = vec![0u8; 32 * MIB as usize];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    // Some zero runs so holes travel too.
    data[4 * MIB as usize..6 * MIB as usize].fill(0);
    std::fs::write(&src, &data).unwrap();
    let mut set = memory_set(&[("mem", 32 * MIB), ("copy", 32 * MIB)]);
    set.add(
        "file",
        "",
        Arc::new(FileExport::create(dir.path().join("f.img"), 32 * MIB).unwrap()),
    )
    .unwrap();
    let srv = TestServer::start(set);

    for export in ["mem", "file"] {
        let uri = srv.uri(export);
        run(Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri));
        let cmp = stdout(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&src)
                .arg(&uri),
        );
        assert!(cmp.contains("Images are identical"), "{cmp}");
        let back = dir.path().join(format!("back-{export}.img"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&back));
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{export}: qemu-img round trip differs"
        );
    }

    // nbdcopy: export to export, then out to a local file.
    run(Command::new("nbdcopy")
        .arg(srv.uri("mem"))
        .arg(srv.uri("copy")));
    let out = dir.path().join("nbdcopy-out.img");
    run(Command::new("nbdcopy").arg(srv.uri("copy")).arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "nbdcopy round trip differs"
    );
    // And a local file in.
    run(Command::new("nbdcopy").arg(&src).arg(srv.uri("copy")));

    let io = stdout(
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0xcd 1536k 512k",
                "-c",
                "write -z 3M 1M",
                "-c",
                "read -P 0xab 0 1M",
                "-c",
                "read -P 0xcd 1536k 512k",
                "-c",
                "read -P 0 3M 1M",
                "-c",
                "discard 8M 1M",
                "-c",
                "flush",
            ])
            .arg(srv.uri("copy")),
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
    assert!(!io.to_lowercase().contains("error"), "{io}");
}

const NBDSH_SCRIPT: &str = r#"
import sys
uri, structured = sys.argv[1], sys.argv[2] == "1"
h = nbd.NBD()
h.set_request_structured_replies(structured)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == structured
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == structured
for f in (h.can_flush, h.can_fua, h.can_trim, h.can_zero, h.can_fast_zero, h.can_cache, h.can_multi_conn):
    assert f(), f
assert h.get_size() == 8 << 20
M = 1 << 20
h.pwrite(b"\x5a" * M, M, nbd.CMD_FLAG_FUA)
h.pwrite(b"\xa5" * 4096, 3 * M)
assert h.pread(M, M) == b"\x5a" * M
h.flush()
h.trim(512 * 1024, M + 256 * 1024)
assert h.pread(256 * 1024, M + 768 * 1024) == b"\x5a" * (256 * 1024)
h.zero(4096, 3 * M, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 3 * M) == bytes(4096)
h.pwrite(b"\x77" * 8192, 5 * M)
h.zero(8192, 5 * M, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(8192, 5 * M) == bytes(8192)
h.zero(M, 6 * M, nbd.CMD_FLAG_FUA)
h.cache(M, 0)
assert h.pread(256 * 1024, M) == b"\x5a" * (256 * 1024)
# Errors come back as exceptions, and the connection stays usable.
try:
    h.pread(2, (8 << 20) - 1)
    raise AssertionError("read past the end succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
if structured:
    seen = []
    def chunk(sub, off, status, err):
        seen.append((off, len(sub), status))
        return 0
    h.pread_structured(2 * M, 0, chunk)
    # Trimmed and never-written ranges travel as holes, the rest as data.
    holes = sorted((o, n) for o, n, st in seen if st == nbd.READ_HOLE)
    data = sorted((o, n) for o, n, st in seen if st == nbd.READ_DATA)
    assert holes == [(0, M), (M + 256 * 1024, 512 * 1024)], seen
    assert sum(n for _, n in data) == 512 * 1024, seen
    ext = []
    def bs(ctx, off, entries, err):
        ext.append((ctx, off, list(entries)))
        return 0
    h.block_status(2 * M, 0, bs)
    ctx, off, entries = ext[0]
    assert ctx == nbd.CONTEXT_BASE_ALLOCATION
    # [length, flags, ...]: flags 3 = hole|zero, 0 = data.
    K = 1024
    assert entries == [M, 3, 256 * K, 0, 512 * K, 3, 256 * K, 0], entries
    one = []
    h.block_status(2 * M, 0, lambda c, o, e, err: one.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(one[0]) == 2, one
print("nbdsh ok", structured)
h.shutdown()
"#;

#[test]
fn nbdsh_every_command_structured_on_and_off() {
    let srv = TestServer::start(memory_set(&[("mem", 8 * MIB)]));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.py");
    std::fs::write(&script, NBDSH_SCRIPT).unwrap();
    for structured in ["1", "0"] {
        let out = stdout(nbdsh().arg("-n").arg("-c").arg(format!(
            "import sys; sys.argv = ['x', '{}', '{}']; exec(open('{}').read())",
            srv.uri("mem"),
            structured,
            script.display()
        )));
        assert!(out.contains("nbdsh ok"), "{out}");
    }
}

#[test]
fn fio_random_writes_verify_crc32c() {
    need("fio", "fio");
    let dir = tempfile::tempdir().unwrap();
    let mut set = memory_set(&[("mem", 32 * MIB)]);
    set.add(
        "file",
        "",
        Arc::new(FileExport::create(dir.path().join("f.img"), 32 * MIB).unwrap()),
    )
    .unwrap();
    let srv = TestServer::start(set);
    for export in ["mem", "file"] {
        // fio writes a verify-state file into its working directory.
        let out = stdout(Command::new("fio").current_dir(dir.path()).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", srv.uri(export)),
            "--rw=randwrite",
            "--bsrange=4k-64k",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randseed=42",
        ]));
        assert!(out.contains("err= 0"), "{export}: {out}");
    }
}

/// A raw client: fixed newstyle, NBD_OPT_GO, simple replies.
fn raw_connect(addr: SocketAddr, export: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    let mut o = IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&OPT_GO.to_be_bytes());
    o.extend_from_slice(&(data.len() as u32).to_be_bytes());
    o.extend_from_slice(&data);
    s.write_all(&o).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).unwrap();
        if t == REP_ACK {
            return s;
        }
        assert_eq!(t, REP_INFO);
    }
}

fn raw_request(
    s: &mut TcpStream,
    kind: u16,
    handle: u64,
    offset: u64,
    length: u32,
    payload: &[u8],
) {
    let h = RequestHeader {
        flags: 0,
        kind,
        handle,
        offset,
        length,
    }
    .encode();
    s.write_all(&h).unwrap();
    s.write_all(payload).unwrap();
}

fn raw_simple_reply(s: &mut TcpStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        u32::from_be_bytes(r[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
        u64::from_be_bytes(r[8..16].try_into().unwrap()),
    )
}

#[test]
fn malformed_requests_get_spec_errors_and_spare_other_clients() {
    need("qemu-io", "qemu-utils");
    let srv = TestServer::start(memory_set(&[("mem", 8 * MIB)]));
    // A well-behaved client holds a connection open throughout.
    let mut good = raw_connect(srv.addr, "mem");
    raw_request(&mut good, CMD_WRITE, 1, 0, 4, b"good");
    assert_eq!(raw_simple_reply(&mut good), (0, 1));

    let mut bad = raw_connect(srv.addr, "mem");
    raw_request(&mut bad, CMD_READ, 10, 8 * MIB - 1, 2, &[]);
    assert_eq!(raw_simple_reply(&mut bad), (errno::EINVAL, 10));
    raw_request(&mut bad, CMD_WRITE, 11, 8 * MIB - 2, 4, b"abcd");
    assert_eq!(raw_simple_reply(&mut bad), (errno::ENOSPC, 11));
    let oversized = vec![0xeeu8; 32 * MIB as usize + 4096];
    raw_request(
        &mut bad,
        CMD_WRITE,
        12,
        0,
        oversized.len() as u32,
        &oversized,
    );
    assert_eq!(raw_simple_reply(&mut bad), (errno::EOVERFLOW, 12));
    raw_request(&mut bad, 42, 13, 0, 0, &[]);
    assert_eq!(raw_simple_reply(&mut bad), (errno::EINVAL, 13));
    // Nothing was written by the refused requests.
    raw_request(&mut bad, CMD_READ, 14, 0, 8, &[]);
    assert_eq!(raw_simple_reply(&mut bad), (0, 14));
    let mut got = [0u8; 8];
    bad.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"good\0\0\0\0");
    // Bad magic: the server hangs up.
    bad.write_all(&[0xffu8; 28]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(bad.read_to_end(&mut rest).unwrap_or(0), 0);

    // The other connection and new clients still work.
    raw_request(&mut good, CMD_READ, 2, 0, 4, &[]);
    assert_eq!(raw_simple_reply(&mut good), (0, 2));
    let mut got = [0u8; 4];
    good.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"good");
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0 4k 4k"])
        .arg(srv.uri("mem")));
    raw_request(&mut good, CMD_DISC, 3, 0, 0, &[]);
    let mut rest = Vec::new();
    assert_eq!(good.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn shutdown_finishes_in_flight_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.img");
    let mut set = ExportSet::new();
    set.add(
        "file",
        "",
        Arc::new(FileExport::create(&path, 4 * MIB).unwrap()),
    )
    .unwrap();
    let mut srv = TestServer::start(set);
    let mut c = raw_connect(srv.addr, "file");
    // A client that connects and never says anything must not hold shutdown up.
    let mut idle = TcpStream::connect(srv.addr).unwrap();
    // Pipeline several writes, then wait for all their replies.
    for i in 0..8u64 {
        raw_request(&mut c, CMD_WRITE, i, i * 4096, 4096, &[i as u8 + 1; 4096]);
    }
    let mut handles: Vec<u64> = (0..8)
        .map(|_| raw_simple_reply(&mut c))
        .map(|(e, h)| {
            assert_eq!(e, 0);
            h
        })
        .collect();
    handles.sort();
    assert_eq!(handles, (0..8).collect::<Vec<_>>());
    srv.stop().unwrap();
    let mut greeting_and_rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut greeting_and_rest).unwrap_or(18), 18);
    // The server closed the connection and the data is in the file.
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    let bytes = std::fs::read(&path).unwrap();
    for i in 0..8usize {
        assert!(bytes[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

#[test]
fn ext4_on_nbdfuse_loop_device() {
    need("nbdfuse", "nbdfuse");
    need("losetup", "mount");
    need("mkfs.ext4", "e2fsprogs");
    need("fusermount3", "fuse3");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE"
    );
    let srv = TestServer::start(memory_set(&[("fs", 64 * MIB)]));
    let dir = tempfile::tempdir().unwrap();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&fuse_dir).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let disk = fuse_dir.join("disk.raw");
    let mut fuse = Command::new("nbdfuse")
        .arg(&disk)
        .arg(srv.uri("fs"))
        .spawn()
        .expect("start nbdfuse");
    // nbdfuse creates the file once the mount is up.
    let mut ready = false;
    for _ in 0..600 {
        if std::fs::metadata(&disk)
            .map(|m| m.len() == 64 * MIB)
            .unwrap_or(false)
        {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let result = std::panic::catch_unwind(|| {
        assert!(ready, "nbdfuse did not expose {}", disk.display());
        let loopdev = stdout(
            Command::new("losetup")
                .args(["-f", "--show", "--direct-io=on"])
                .arg(&disk),
        );
        let loopdev = loopdev.trim().to_string();
        let r = std::panic::catch_unwind(|| {
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&loopdev));
            run(Command::new("mount").arg(&loopdev).arg(&mnt));
            let r = std::panic::catch_unwind(|| {
                let mut content = vec![0u8; 3 * MIB as usize];
                rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut content);
                std::fs::write(mnt.join("a.bin"), &content).unwrap();
                std::fs::create_dir(mnt.join("d")).unwrap();
                std::fs::write(mnt.join("d/b.txt"), b"hello nbd").unwrap();
                run(&mut Command::new("sync"));
                run(Command::new("umount").arg(&mnt));
                run(Command::new("mount").arg(&loopdev).arg(&mnt));
                assert!(std::fs::read(mnt.join("a.bin")).unwrap() == content);
                assert_eq!(std::fs::read(mnt.join("d/b.txt")).unwrap(), b"hello nbd");
            });
            let _ = Command::new("umount").arg(&mnt).status();
            run(Command::new("e2fsck").args(["-f", "-n"]).arg(&loopdev));
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        });
        let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    });
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(&fuse_dir)
        .status();
    let _ = fuse.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
