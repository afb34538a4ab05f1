//! A running client follows the volume's description: `stretto nbd serve`
//! keeps serving while an administrator changes the volume, and picks the
//! change up by itself when the generation moves (no restart).
//!
//! - `volume set` of the quorum: a write the old quorum would have taken is
//!   refused under the new one.
//! - `volume replace-brick`: the export writes to the new brick, proven by
//!   killing an old one so that the write needs the new brick for its
//!   quorum, then reading the data back from the new brick alone.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{run, stretto, BrickProcess, Pool};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stretto nbd serve` with its log lines forwarded to a channel.
struct Export {
    child: Child,
    uri: String,
    log: mpsc::Receiver<String>,
}

impl Export {
    fn start(pool: &str, secret: &str) -> Export {
        let mut child = stretto()
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
            .env("STRETTO_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nbd serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("nbd serve did not start: {line:?}"))
            .to_string();
        std::thread::spawn(move || for _ in out.lines() {});
        let (tx, log) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for l in err.lines().map_while(|l| l.ok()) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Export {
            child,
            uri: format!("nbd://{addr}/disk0"),
            log,
        }
    }

    /// Waits for the log line saying the export reloaded generation `gen`
    /// or a newer one
    /// (an event; the bound only keeps a broken build from hanging).
    fn await_reload(&self, gen: u64) {
        let mut seen = Vec::new();
        loop {
            let l = self
                .log
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("no reload to generation {gen}: {e}; log: {seen:#?}"));
            seen.push(l.clone());
            let to = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("to="))
                .and_then(|g| g.parse::<u64>().ok());
            if l.contains("client reloaded") && to.is_some_and(|t| t >= gen) {
                return;
            }
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let io = c.arg(uri).output().expect("qemu-io");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&io.stdout),
        String::from_utf8_lossy(&io.stderr)
    );
    let good = io.status.success()
        && !out.contains("Pattern verification failed")
        && !out.contains("failed");
    (good, out)
}

fn qemu_io_ok(uri: &str, cmds: &[&str]) {
    let (good, out) = qemu_io(uri, cmds);
    assert!(good, "qemu-io {cmds:?}: {out}");
}

/// The volume's generation as `volume info` prints it.
fn generation(pool: &Pool, via: usize) -> u64 {
    let info = ok(pool.volume(via, &["info", "vm"]));
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Generation: "))
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generation in {info}"))
}

fn replica3(pool: &Pool) {
    let (b0, b1, b2) = (pool.addr(0), pool.addr(1), pool.addr(2));
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
    let secret = pool.secret.to_str().expect("utf-8 path");
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
        secret,
    ]));
}

#[test]
fn a_running_export_takes_a_new_quorum() {
    let mut pool = Pool::start(3);
    replica3(&pool);
    let secret = pool.secret.to_str().expect("utf-8 path").to_string();
    let addr2 = pool.addr(2);
    let nbd = Export::start(&pool.addr(0), &secret);
    qemu_io_ok(&nbd.uri, &["write -P 0x3c 0 1M", "flush"]);

    ok(pool.volume(0, &["set", "vm", "quorum-count", "3"]));
    ok(pool.volume(0, &["set", "vm", "quorum-type", "fixed"]));
    nbd.await_reload(generation(&pool, 0));

    // Two of three bricks: the default majority would take this write;
    // the new quorum of three refuses it, and reads go on.
    pool.bricks[2].take().expect("brick 2").kill9();
    let (good, out) = qemu_io(&nbd.uri, &["write -P 0x5a 1M 64K", "flush"]);
    assert!(
        !good,
        "a write below the new quorum was acknowledged: {out}"
    );
    qemu_io_ok(&nbd.uri, &["read -P 0x3c 0 1M"]);

    // Back to the majority (a change of the description needs every
    // brick, so brick 2 comes back for it and leaves again): the same
    // write now goes through on two of three.
    pool.bricks[2] = Some(BrickProcess::start(&pool.dirs[2], &addr2));
    ok(pool.volume(0, &["set", "vm", "quorum-type", "auto"]));
    nbd.await_reload(generation(&pool, 0));
    pool.bricks[2].take().expect("brick 2").kill9();
    qemu_io_ok(
        &nbd.uri,
        &["write -P 0x77 1M 64K", "flush", "read -P 0x77 1M 64K"],
    );
}

#[test]
fn a_running_export_writes_to_a_replacement_brick() {
    let mut pool = Pool::start(4);
    replica3(&pool);
    let (b0, b1) = (pool.addr(0), pool.addr(1));
    let (b2, b3) = (pool.addr(2), pool.addr(3));
    let secret = pool.secret.to_str().expect("utf-8 path").to_string();
    let nbd = Export::start(&b0, &secret);
    qemu_io_ok(&nbd.uri, &["write -P 0x3c 0 1M", "flush"]);

    pool.bricks[2].take().expect("brick 2").kill9();
    // The swap is committed; the full heal that follows cannot copy the
    // image's chunks while the running export holds their lease, and says
    // so (that copy is not what this test is about).
    let out = pool.volume(0, &["replace-brick", "vm", &b2, &b3]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || said.contains("full heal incomplete") && said.contains("busy"),
        "replace-brick failed: {said}"
    );
    nbd.await_reload(generation(&pool, 0));

    // Only brick 0 and the new brick 3 are up: the majority of the set
    // needs the new brick.
    pool.bricks[1].take().expect("brick 1").kill9();
    qemu_io_ok(
        &nbd.uri,
        &["write -P 0x77 2M 1M", "flush", "read -P 0x77 2M 1M"],
    );
    drop(nbd);

    // The new brick alone holds the write. (Brick 1 comes back only so
    // that the description can change: that needs every brick of it.)
    pool.bricks[1] = Some(BrickProcess::start(&pool.dirs[1], &b1));
    ok(pool.volume(3, &["set", "vm", "quorum-type", "none"]));
    pool.bricks[0].take().expect("brick 0").kill9();
    pool.bricks[1].take().expect("brick 1").kill9();
    let alone = Export::start(&b3, &secret);
    qemu_io_ok(&alone.uri, &["read -P 0x77 2M 1M"]);
}
