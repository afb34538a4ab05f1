//! `stretto nbd serve` on a replica-3 volume of three real brick processes,
//! driven by real NBD clients (nbdinfo, qemu-img, qemu-io, nbdcopy, nbdsh,
//! fio's nbd engine, nbdfuse + a loop device + ext4).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{run as stretto_run, stretto, Pool};
use rand::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;

fn need(tool: &str, package: &str) {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
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

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stretto failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three bricks, a started replica-3 volume `vm`, and images of the given
/// sizes.
fn volume_with_images(images: &[(&str, u64)]) -> Pool {
    let pool = Pool::start(3);
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    ok(pool.volume(0, &["create", "vm", "replica", "3", &a, &b, &c]));
    ok(pool.volume(0, &["start", "vm"]));
    for (name, size) in images {
        ok(stretto_run(&[
            "image",
            "create",
            name,
            &size.to_string(),
            "--volume",
            "vm",
            "--pool",
            &a,
            "--secret-file",
            pool.secret.to_str().unwrap(),
        ]));
    }
    pool
}

/// A running `stretto nbd serve`.
struct NbdServer {
    child: Child,
    addr: SocketAddr,
}

impl NbdServer {
    fn start(pool: &Pool, listen: &str) -> NbdServer {
        let mut child = stretto()
            .args(["nbd", "serve", "--volume", "vm", "--listen", listen])
            .args(["--pool", &pool.addr(0), "--secret-file"])
            .arg(&pool.secret)
            .env("STRETTO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nbd serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("nbd serve did not start: {line:?}"))
            .parse()
            .unwrap();
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        NbdServer { child, addr }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn random_file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let mut data = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    p
}

#[test]
fn nbdinfo_shows_size_flags_block_sizes_map_and_list() {
    need("nbdinfo", "libnbd-bin");
    let pool = volume_with_images(&[("disk0", 64 * MIB), ("disk1", 32 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    let size = stdout(Command::new("nbdinfo").arg("--size").arg(srv.uri("disk0")));
    assert_eq!(size.trim(), (64 * MIB).to_string());
    let info = stdout(Command::new("nbdinfo").arg(srv.uri("disk1")));
    for want in [
        "export-size: 33554432",
        "can_flush: true",
        "can_fua: true",
        "can_multi_conn: true",
        "can_trim: true",
        "can_zero: true",
        "can_fast_zero: true",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "description: image disk1 of volume vm (33554432 bytes)",
    ] {
        assert!(info.contains(want), "{want:?} not in:\n{info}");
    }
    let list = stdout(
        Command::new("nbdinfo")
            .arg("--list")
            .arg(format!("nbd://{}", srv.addr)),
    );
    assert!(
        list.contains("export=\"disk0\"") || list.contains("disk0"),
        "{list}"
    );
    assert!(list.contains("disk1"), "{list}");
    // Sparse writes, then the allocation map covers the whole export.
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x11 1M 64k",
            "-c",
            "write -P 0x22 20M 4k",
        ])
        .arg(srv.uri("disk1")));
    let map = stdout(Command::new("nbdinfo").arg("--map").arg(srv.uri("disk1")));
    // Lines are `offset length type description`; type 0 is data, 2 zero.
    let mut covered = 0u64;
    let mut data = Vec::new();
    for line in map.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 {
            let (off, len): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            assert_eq!(off, covered, "map has a gap or overlap:\n{map}");
            covered += len;
            match f[2] {
                "0" => data.push((off, len)),
                "2" => {}
                other => panic!("unexpected extent type {other}:\n{map}"),
            }
        }
    }
    assert_eq!(covered, 32 * MIB, "map does not cover the export:\n{map}");
    assert_eq!(
        data,
        vec![(MIB, 65536), (20 * MIB, 4096)],
        "data extents:\n{map}"
    );
}

#[test]
fn qemu_img_qemu_io_and_nbdcopy_round_trip() {
    need("qemu-img", "qemu-utils");
    need("nbdcopy", "libnbd-bin");
    let pool = volume_with_images(&[("disk0", 256 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src.raw", 256 * MIB, 7);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(srv.uri("disk0")));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(srv.uri("disk0")));
    let back = dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(srv.uri("disk0"))
        .arg(&back));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());

    // nbdcopy both ways.
    let src2 = random_file(dir.path(), "src2.raw", 256 * MIB, 8);
    run(Command::new("nbdcopy").arg(&src2).arg(srv.uri("disk0")));
    let back2 = dir.path().join("back2.raw");
    run(Command::new("nbdcopy").arg(srv.uri("disk0")).arg(&back2));
    assert!(std::fs::read(&back2).unwrap() == std::fs::read(&src2).unwrap());

    // qemu-io patterns.
    let io = stdout(
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0xcd 3M 512k",
                "-c",
                "flush",
                "-c",
                "read -P 0xab 0 1M",
                "-c",
                "read -P 0xcd 3M 512k",
            ])
            .arg(srv.uri("disk0")),
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
}

const NBDSH_SCRIPT: &str = r#"
import sys
uri, structured = sys.argv[1], sys.argv[2] == "1"
h = nbd.NBD()
h.set_request_structured_replies(structured)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == structured
for f in (h.can_flush, h.can_fua, h.can_trim, h.can_zero, h.can_fast_zero, h.can_cache, h.can_multi_conn):
    assert f(), f
M = 1 << 20
assert h.get_size() == 16 * M
h.pwrite(b"\x5a" * M, M, nbd.CMD_FLAG_FUA)
h.pwrite(b"\xa5" * 4096, 3 * M)
assert h.pread(M, M) == b"\x5a" * M
h.flush()
h.trim(512 * 1024, M + 256 * 1024)
h.zero(4096, 3 * M, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 3 * M) == bytes(4096)
h.pwrite(b"\x77" * 8192, 5 * M)
h.zero(8192, 5 * M, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(8192, 5 * M) == bytes(8192)
h.zero(M, 6 * M, nbd.CMD_FLAG_FUA)
assert h.pread(M, 6 * M) == bytes(M)
h.cache(M, 0)
assert h.pread(256 * 1024, M) == b"\x5a" * (256 * 1024)
try:
    h.pread(2, 16 * M - 1)
    raise AssertionError("read past the end succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
if structured:
    got = []
    def chunk(sub, off, status, err):
        got.append((off, len(sub), status))
        return 0
    h.pread_structured(2 * M, 8 * M, chunk)
    assert sum(n for _, n, _ in got) == 2 * M, got
    ext = []
    h.block_status(2 * M, 0, lambda c, o, e, err: ext.append(list(e)) or 0)
    assert sum(ext[0][0::2]) >= 1, ext
h.flush()
print("nbdsh ok", structured)
h.shutdown()
"#;

#[test]
fn nbdsh_every_command_structured_on_and_off() {
    need("nbdsh", "libnbd-bin python3-libnbd");
    let pool = volume_with_images(&[("disk0", 16 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.py");
    std::fs::write(&script, NBDSH_SCRIPT).unwrap();
    for structured in ["1", "0"] {
        let path = std::env::var("PATH").unwrap_or_default();
        let out = stdout(
            Command::new("/usr/bin/nbdsh")
                .env("PATH", format!("/usr/bin:{path}"))
                .arg("-n")
                .arg("-c")
                .arg(format!(
                    "import sys; sys.argv = ['x', '{}', '{}']; exec(open('{}').read())",
                    srv.uri("disk0"),
                    structured,
                    script.display()
                )),
        );
        assert!(out.contains("nbdsh ok"), "{out}");
    }
}

/// fio writes and verifies through the export while one brick of the
/// replica-3 volume is SIGKILLed: no error reaches the client.
#[test]
fn fio_verify_survives_a_brick_sigkill() {
    need("fio", "fio");
    let mut pool = volume_with_images(&[("disk0", 64 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let fio = Command::new("fio")
        .current_dir(dir.path())
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", srv.uri("disk0")),
            "--rw=randwrite",
            "--bs=64k",
            "--size=48M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randseed=11",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    // Kill a brick once writes are flowing: wait until the brick has taken
    // some writes (its counters say so), not for a duration.
    let stats_of = |i: usize| {
        stretto_run(&[
            "brick",
            "stats",
            &pool.addr(i),
            "--secret-file",
            pool.secret.to_str().unwrap(),
        ])
    };
    for _ in 0..2000 {
        let s = String::from_utf8_lossy(&stats_of(2).stdout).into_owned();
        let writes = s
            .lines()
            .find(|l| l.trim_start().starts_with("writes"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if writes >= 50 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    pool.bricks[2].take().unwrap().kill9();
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("err= 0"), "{text}");
    drop(srv);
}

fn ext4_round_trip(uri: &str, connections: Option<u32>) {
    need("nbdfuse", "nbdfuse");
    need("losetup", "mount");
    need("mkfs.ext4", "e2fsprogs");
    need("fusermount3", "fuse3");
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
    let dir = tempfile::tempdir().unwrap();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&fuse_dir).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let disk = fuse_dir.join("disk.raw");
    let mut cmd = Command::new("nbdfuse");
    if let Some(c) = connections {
        cmd.arg("-C").arg(c.to_string());
    }
    let mut fuse = cmd.arg(&disk).arg(uri).spawn().expect("start nbdfuse");
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
                // A small tree of files with known contents.
                let mut rng = rand::rngs::StdRng::seed_from_u64(5);
                let mut files = Vec::new();
                for d in 0..4 {
                    let sub = mnt.join(format!("d{d}"));
                    std::fs::create_dir(&sub).unwrap();
                    for f in 0..8 {
                        let mut content = vec![0u8; 1024 * (1 + f * 37 % 200)];
                        rng.fill_bytes(&mut content);
                        let p = sub.join(format!("f{f}"));
                        std::fs::write(&p, &content).unwrap();
                        files.push((p, content));
                    }
                }
                run(&mut Command::new("sync"));
                run(Command::new("umount").arg(&mnt));
                run(Command::new("mount").arg(&loopdev).arg(&mnt));
                for (p, content) in &files {
                    assert!(
                        std::fs::read(p).unwrap() == *content,
                        "{} differs",
                        p.display()
                    );
                }
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

#[test]
fn ext4_on_nbdfuse_one_and_four_connections() {
    let pool = volume_with_images(&[("fs1", 64 * MIB), ("fs4", 64 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    ext4_round_trip(&srv.uri("fs1"), None);
    ext4_round_trip(&srv.uri("fs4"), Some(4));
}

/// SIGKILL the NBD server while writes are in flight; restart it; what was
/// flushed before the kill is intact.
#[test]
fn sigkill_of_the_nbd_server_keeps_flushed_writes() {
    need("qemu-io", "qemu-utils");
    let pool = volume_with_images(&[("disk0", 32 * MIB)]);
    let srv = NbdServer::start(&pool, "127.0.0.1:0");
    let addr = srv.addr.to_string();
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xaa 0 8M", "-c", "flush"])
        .arg(srv.uri("disk0")));
    // Keep writing elsewhere, and kill the server under those writes.
    let mut writer = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xbb 8M 24M"])
        .arg(srv.uri("disk0"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    srv.signal(libc::SIGKILL);
    let _ = writer.wait();
    drop(srv);
    // A new server on the same address takes over the image's lease once
    // the dead one's expires, settles what it left active, and serves.
    let srv = NbdServer::start(&pool, &addr);
    let io = stdout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read -P 0xaa 0 8M"])
            .arg(srv.uri("disk0")),
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
}
