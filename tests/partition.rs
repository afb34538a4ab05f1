//! Real network partitions: each brick runs in its own network namespace,
//! reached from the root namespace over its own veth pair; a test cuts a
//! brick off by taking its veth down and brings it back by setting it up.
//!
//! Needs root (network namespaces). Without `CAP_NET_ADMIN` the tests say
//! so and pass without doing anything.
//!
//! Addresses: 10.231.X.0/24 with X chosen from the test process id, used
//! only on links this test creates; every namespace and veth is deleted
//! when the guard drops (also when a test fails).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::run;
use transport::wire::{DataRef, ObjectReq, ReadReq};
use transport::{ClientOptions, ObjectId, Payload, Request, Response, Secret, TcpClient};
use volume::{Client, Fid};

/// The port every brick listens on, inside its own namespace.
const PORT: u16 = 7100;

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `st<pid><tag>n<i>`, each with a veth pair whose root end is
/// `st<pid><tag>r<i>` (10.231.X.1) and whose namespace end holds 10.231.X.2.
/// Drop deletes them all (deleting a namespace deletes its veth end and so
/// the pair).
struct Net {
    ns: Vec<String>,
    root_dev: Vec<String>,
    addr: Vec<String>,
    guard_routes: Vec<String>,
}

impl Net {
    /// `None` when this process may not make namespaces (not root).
    fn create(n: usize, tag: char) -> Option<Net> {
        let pid = std::process::id();
        let probe = format!("st{pid}{tag}probe");
        let made = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .is_ok_and(|o| o.status.success());
        if !made {
            // CI runs as root with iproute2 installed: there, a missing
            // namespace is a failure, never a silent pass.
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot create network namespaces under CI (needs root and iproute2)"
            );
            eprintln!("skipping: cannot create network namespaces (needs root and iproute2)");
            return None;
        }
        ip_ok(&["netns", "del", &probe]);
        let mut net = Net {
            ns: Vec::new(),
            root_dev: Vec::new(),
            addr: Vec::new(),
            guard_routes: Vec::new(),
        };
        // Three /24s per test process and tag ('a' to 'e'), spread by pid.
        let base = (pid % 16) as usize * 15 + 3 * (tag as usize - 'a' as usize).min(4);
        for i in 0..n {
            let ns = format!("st{pid}{tag}n{i}");
            let rdev = format!("st{pid}{tag}r{i}");
            let pdev = format!("st{pid}{tag}p{i}");
            let x = base + i;
            ip_ok(&["netns", "add", &ns]);
            net.ns.push(ns.clone());
            ip_ok(&["link", "add", &rdev, "type", "veth", "peer", "name", &pdev]);
            net.root_dev.push(rdev.clone());
            ip_ok(&["link", "set", &pdev, "netns", &ns]);
            // While the link is down its connected route is gone: this
            // route (lower priority) makes the subnet unreachable then,
            // instead of letting packets follow the default route out.
            ip_ok(&[
                "route",
                "add",
                "unreachable",
                &format!("10.231.{x}.0/24"),
                "metric",
                "4000",
            ]);
            net.guard_routes.push(format!("10.231.{x}.0/24"));
            ip_ok(&["addr", "add", &format!("10.231.{x}.1/24"), "dev", &rdev]);
            ip_ok(&["link", "set", &rdev, "up"]);
            ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.231.{x}.2/24"),
                "dev",
                &pdev,
            ]);
            ip_ok(&["-n", &ns, "link", "set", &pdev, "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            net.addr.push(format!("10.231.{x}.2:{PORT}"));
        }
        Some(net)
    }

    /// Cuts brick `i` off: its link goes down; packets to it meet the
    /// unreachable route (nothing leaves the machine).
    fn cut(&self, i: usize) {
        ip_ok(&["link", "set", &self.root_dev[i], "down"]);
        let host = self.addr[i].split(':').next().expect("host");
        let out = ip(&["route", "get", host]);
        assert!(
            !out.status.success(),
            "{host} must be unreachable while cut off, not routed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Cuts brick `i` off by dropping every packet sent to it (the link
    /// stays up: open connections hang rather than fail). A zero-length
    /// `pfifo` drops all it is given, like `netem loss 100%` (this kernel
    /// has no `sch_netem`).
    fn blackhole(&self, i: usize) {
        let out = Command::new("tc")
            .args([
                "qdisc",
                "add",
                "dev",
                &self.root_dev[i],
                "root",
                "pfifo",
                "limit",
                "0",
            ])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn unblackhole(&self, i: usize) {
        let out = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.root_dev[i], "root"])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn restore(&self, i: usize) {
        ip_ok(&["link", "set", &self.root_dev[i], "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for d in &self.root_dev {
            let _ = ip(&["link", "del", d]);
        }
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
        for r in &self.guard_routes {
            let _ = ip(&["route", "del", "unreachable", r, "metric", "4000"]);
        }
    }
}

/// `stretto brick serve` inside a namespace; SIGKILLed on drop.
struct NsBrick {
    child: Child,
}

impl NsBrick {
    fn start(ns: &str, dir: &std::path::Path, listen: &str) -> NsBrick {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_stretto"))
            .args(["brick", "serve"])
            .arg(dir)
            .args(["--listen", listen])
            .env("STRETTO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn brick serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        assert!(
            line.starts_with("listening on "),
            "brick in {ns} did not start: {line:?}"
        );
        std::thread::spawn(move || for _ in out.lines() {});
        NsBrick { child }
    }
}

impl Drop for NsBrick {
    fn drop(&mut self) {
        // `ip netns exec` execs the server: this PID is the brick's.
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Bricks made with one secret, each served in its namespace.
struct NsPool {
    // Held for their Drop: the brick directories and processes.
    _root: tempfile::TempDir,
    secret: std::path::PathBuf,
    _bricks: Vec<NsBrick>,
    net: Net,
}

impl NsPool {
    fn start(n: usize, tag: char) -> Option<NsPool> {
        let net = Net::create(n, tag)?;
        let root = tempfile::tempdir().expect("tempdir");
        let secret = root.path().join("pool.secret");
        let mut bricks = Vec::new();
        for i in 0..n {
            let dir = root.path().join(format!("brick{i}"));
            let out = run(&[
                "brick",
                "init",
                dir.to_str().expect("utf-8"),
                "--secret-file",
                secret.to_str().expect("utf-8"),
            ]);
            assert!(out.status.success(), "brick init");
            bricks.push(NsBrick::start(&net.ns[i], &dir, &net.addr[i]));
        }
        Some(NsPool {
            _root: root,
            secret,
            _bricks: bricks,
            net,
        })
    }

    fn secret(&self) -> Secret {
        Secret::load(&self.secret).expect("secret")
    }

    /// `stretto volume ARGS... --pool <brick via>`.
    fn volume(&self, via: usize, args: &[&str]) -> String {
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--pool",
            &self.net.addr[via],
            "--secret-file",
            self.secret.to_str().expect("utf-8"),
        ]);
        ok(run(&all))
    }
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(3),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

/// A chunk read straight from one brick (zeros past its end), and its size.
async fn brick_chunk(addr: &str, secret: &Secret, object: ObjectId, len: u64) -> (Vec<u8>, u64) {
    let c = TcpClient::connect(addr, secret.clone(), opts())
        .await
        .expect("connect");
    let (r, _) = c
        .call(Request::Stat(ObjectReq { object }), Payload::None)
        .await
        .expect("stat");
    let Response::Stat(st) = r else {
        panic!("{addr}: no chunk {object:?}: {r:?}");
    };
    let mut out = vec![0u8; len as usize];
    // In pieces under the transport's 16 MiB limit.
    const PIECE: u64 = 4 << 20;
    let mut at = 0;
    while at < len.min(st.size) {
        let n = PIECE.min(len - at);
        let (r, p) = c
            .call(
                Request::Read(ReadReq {
                    object,
                    offset: at,
                    len: n as u32,
                    data: DataRef::None,
                }),
                Payload::In(iobuf::IoBuf::alloc(n as usize)),
            )
            .await
            .expect("read");
        assert!(matches!(r, Response::Read(_)), "{r:?}");
        let b = p.into_buf().expect("buf");
        out[at as usize..at as usize + b.len()].copy_from_slice(b.as_slice());
        at += n;
    }
    c.close().await;
    (out, st.size)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pending_regions(info: &str) -> Vec<u64> {
    info.lines()
        .filter_map(|l| l.strip_prefix("Number of entries: "))
        .map(|l| l.split_whitespace().next().expect("n").parse().expect("n"))
        .collect()
}

const MIB: usize = 1 << 20;

/// How a test cuts a brick off.
#[derive(Clone, Copy, Debug)]
enum CutBy {
    /// `ip link set DEV down`: connections fail (no route to host).
    LinkDown,
    /// `tc qdisc add DEV root pfifo limit 0`: packets vanish, calls hang
    /// until the volume's ping-timeout.
    QdiscDrop,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_brick_link_down_then_heal_makes_replicas_identical() {
    partition_then_heal('a', CutBy::LinkDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_brick_dropping_qdisc_then_heal_makes_replicas_identical() {
    partition_then_heal('c', CutBy::QdiscDrop).await;
}

async fn partition_then_heal(tag: char, how: CutBy) {
    let Some(pool) = NsPool::start(3, tag) else {
        return;
    };
    let a = &pool.net.addr;
    pool.volume(0, &["create", "vm", "replica", "3", &a[0], &a[1], &a[2]]);
    pool.volume(0, &["start", "vm"]);
    pool.volume(0, &["set", "vm", "ping-timeout", "2"]);
    let secret = pool.secret();
    let spec = volume::manage::fetch(&[a[0].clone()], &secret, "vm")
        .await
        .expect("fetch");
    assert_eq!(
        volume::client::ping_timeout(&spec).expect("pt"),
        Duration::from_secs(2)
    );
    let chunk = spec.chunk_size;
    let client = Client::connect_spec(spec.clone(), secret.clone(), opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: spec.id,
        vnode: 9,
        unique: 1,
    };
    let total = 16 * MIB;
    let data = pattern(1, total);
    let obj = client
        .open_writer(fid, Duration::from_secs(6))
        .await
        .expect("lease");
    // 6 MiB with all three, 6 with brick 2 cut off, 4 after it is back.
    for i in 0..6 {
        obj.write((i * MIB) as u64, &data[i * MIB..(i + 1) * MIB])
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    match how {
        CutBy::LinkDown => pool.net.cut(2),
        CutBy::QdiscDrop => pool.net.blackhole(2),
    }
    let t = std::time::Instant::now();
    for i in 6..12 {
        obj.write((i * MIB) as u64, &data[i * MIB..(i + 1) * MIB])
            .await
            .unwrap_or_else(|e| panic!("write {i} with brick 2 cut off: {e}"));
    }
    println!(
        "{how:?}: 6 MiB written with brick 2 cut off in {:?}",
        t.elapsed()
    );
    // Brick 2 missed these: heal info (from the root namespace, which sees
    // bricks 0 and 1 only) says so.
    let info = pool.volume(0, &["heal", "vm", "info"]);
    let pending = pending_regions(&info);
    println!("heal info while brick 2 is cut off:\n{info}");
    assert_eq!(pending.len(), 3, "{info}");
    assert_eq!(&pending[..2], &[0, 0], "{info}");
    assert!(pending[2] >= 6, "{info}");
    assert!(
        info.contains(&format!("Brick {} (set 0): offline", a[2])),
        "{info}"
    );

    match how {
        CutBy::LinkDown => pool.net.restore(2),
        CutBy::QdiscDrop => pool.net.unblackhole(2),
    }
    let link = client.links()[2].clone();
    let mut waited = 0;
    while !link.is_up() {
        waited += 1;
        assert!(waited < 600, "brick 2 never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 12..16 {
        obj.write((i * MIB) as u64, &data[i * MIB..(i + 1) * MIB])
            .await
            .unwrap_or_else(|e| panic!("write {i} after restore: {e}"));
    }
    obj.flush().await.expect("flush");
    obj.close().await.expect("release");

    let healed = pool.volume(1, &["heal", "vm"]);
    println!("{healed}");
    assert!(healed.contains("regions healed"), "{healed}");
    assert!(!healed.contains(" 0 regions healed"), "{healed}");
    assert!(healed.contains(" 0 in split-brain"), "{healed}");
    let info = pool.volume(2, &["heal", "vm", "info"]);
    assert_eq!(pending_regions(&info), vec![0, 0, 0], "{info}");

    // Every chunk identical on the three bricks, and equal to the data.
    for c in 0..(total as u64).div_ceil(chunk) {
        let want_len = chunk.min(total as u64 - c * chunk) as usize;
        let start = (c * chunk) as usize;
        let mut copies = Vec::new();
        let mut sizes = Vec::new();
        for b in a {
            let (got, size) = brick_chunk(b, &secret, fid.chunk(c), want_len as u64).await;
            copies.push(got);
            sizes.push(size);
        }
        assert!(
            sizes.iter().all(|&s| s == want_len as u64),
            "chunk {c} sizes {sizes:?}"
        );
        for (k, got) in copies.iter().enumerate() {
            assert!(
                got[..want_len] == data[start..start + want_len],
                "brick {k} chunk {c} differs from the data written"
            );
            assert!(
                got == &copies[0],
                "brick {k} chunk {c} differs from brick 0"
            );
        }
    }
    client.refresh_marks().await;
    let got = client
        .object(fid)
        .read(0, total as u64)
        .await
        .expect("read");
    assert!(got == data, "volume read differs");
    client.close().await;
}

/// `stretto nbd serve --volume vm` reachable at its `listening on` address.
struct Nbd {
    child: Child,
    uri: String,
}

impl Nbd {
    /// In the root namespace (reaches every brick that is not cut off).
    fn start(pool: &NsPool, via: usize, image: &str) -> Nbd {
        let mut cmd = common::stretto();
        cmd.args(["nbd", "serve", "--volume", "vm", "--listen", "127.0.0.1:0"]);
        Nbd::spawn(cmd, pool, via, image)
    }

    /// Inside brick `i`'s namespace: it reaches brick `i` only (the
    /// namespace has no route to the others), and listens on the
    /// namespace's address, which the root namespace reaches.
    fn start_in(pool: &NsPool, i: usize, image: &str) -> Nbd {
        let host = pool.net.addr[i].split(':').next().expect("host");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pool.net.ns[i]])
            .arg(env!("CARGO_BIN_EXE_stretto"))
            .args(["nbd", "serve", "--volume", "vm", "--listen"])
            .arg(format!("{host}:0"));
        Nbd::spawn(cmd, pool, i, image)
    }

    fn spawn(mut cmd: Command, pool: &NsPool, via: usize, image: &str) -> Nbd {
        let mut child = cmd
            .args(["--pool", &pool.net.addr[via], "--secret-file"])
            .arg(&pool.secret)
            .env("STRETTO_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("nbd serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("nbd serve did not start: {line:?}"))
            .to_string();
        std::thread::spawn(move || for _ in out.lines() {});
        Nbd {
            child,
            uri: format!("nbd://{addr}/{image}"),
        }
    }

    /// `qemu-io -c CMD...` against the export; must succeed.
    fn io(&self, cmds: &[&str]) -> String {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        let out = c.arg(&self.uri).output().expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success()
                && !text.contains("fail")
                && !text.contains("Pattern verification"),
            "qemu-io {cmds:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// SIGTERM: the server releases its leases and exits cleanly.
    fn stop(mut self) {
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let st = self.child.wait().expect("wait");
        assert!(st.success(), "nbd serve exited with {st}");
    }
}

impl Drop for Nbd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `stop`.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_made_by_two_partitioned_writers_is_resolved_through_the_cli() {
    let Some(pool) = NsPool::start(2, 'b') else {
        return;
    };
    let a = &pool.net.addr;
    let secret_file = pool.secret.to_str().expect("utf-8").to_string();
    pool.volume(0, &["create", "vm", "replica", "2", &a[0], &a[1]]);
    pool.volume(0, &["start", "vm"]);
    pool.volume(0, &["set", "vm", "quorum-type", "none"]);
    pool.volume(0, &["set", "vm", "ping-timeout", "2"]);
    ok(run(&[
        "image",
        "create",
        "disk0",
        "4M",
        "--volume",
        "vm",
        "--pool",
        &a[0],
        "--secret-file",
        &secret_file,
    ]));

    // Both bricks up: 1 MiB of 0x11.
    let n = Nbd::start(&pool, 0, "disk0");
    n.io(&["write -P 0x11 0 1M", "flush"]);
    n.stop();

    // Writer A sees only brick 0.
    pool.net.cut(1);
    let n = Nbd::start(&pool, 0, "disk0");
    n.io(&["write -P 0xaa 0 64k", "flush", "read -P 0xaa 0 64k"]);
    n.stop();

    // Writer B sees only brick 1, which nobody it can reach marks stale.
    pool.net.restore(1);
    pool.net.cut(0);
    let n = Nbd::start(&pool, 1, "disk0");
    n.io(&["write -P 0xbb 0 64k", "flush", "read -P 0xbb 0 64k"]);
    n.stop();

    // The partition heals: each brick accuses the other.
    pool.net.restore(0);
    let sb = pool.volume(0, &["heal", "vm", "info", "split-brain"]);
    println!("{sb}");
    let lines: Vec<&str> = sb.lines().collect();
    assert_eq!(lines.len(), 1, "{sb}");
    assert!(
        lines[0].contains(&format!("bricks {} <-> {}", a[0], a[1]))
            || lines[0].contains(&format!("bricks {} <-> {}", a[1], a[0])),
        "{sb}"
    );
    assert!(lines[0].contains(" chunk 0 region 0:"), "{sb}");
    // "set 0 object V.N.U chunk 0 region 0: ..."
    let obj: Vec<u32> = lines[0]
        .split_whitespace()
        .nth(3)
        .expect("object")
        .split('.')
        .map(|x| x.parse().expect("fid"))
        .collect();
    let fid = Fid {
        volume: obj[0],
        vnode: obj[1],
        unique: obj[2],
    };
    let info = pool.volume(1, &["heal", "vm", "info"]);
    assert!(info.contains("Regions in split-brain: 1"), "{info}");

    // Plain heal does not pick a side.
    let healed = pool.volume(0, &["heal", "vm"]);
    assert!(healed.contains(" 1 in split-brain"), "{healed}");
    let secret = pool.secret();
    let (c0, _) = brick_chunk(&a[0], &secret, fid.chunk(0), 1 << 20).await;
    let (c1, _) = brick_chunk(&a[1], &secret, fid.chunk(0), 1 << 20).await;
    assert!(c0[..64 << 10].iter().all(|&b| b == 0xaa));
    assert!(c1[..64 << 10].iter().all(|&b| b == 0xbb));
    assert!(c0[64 << 10..].iter().all(|&b| b == 0x11));
    assert!(c1[64 << 10..].iter().all(|&b| b == 0x11));

    // Brick 1's side wins.
    let r = pool.volume(0, &["heal", "vm", "split-brain", "source-brick", &a[1]]);
    println!("{r}");
    assert!(!r.contains(" 0 regions healed"), "{r}");
    let sb = pool.volume(0, &["heal", "vm", "info", "split-brain"]);
    assert!(sb.contains("No regions in split-brain"), "{sb}");
    let info = pool.volume(0, &["heal", "vm", "info"]);
    assert_eq!(pending_regions(&info), vec![0, 0], "{info}");
    let (c0, s0) = brick_chunk(&a[0], &secret, fid.chunk(0), 1 << 20).await;
    let (c1, s1) = brick_chunk(&a[1], &secret, fid.chunk(0), 1 << 20).await;
    assert!(c0 == c1, "bricks differ after resolution");
    assert_eq!(s0, s1);
    assert!(c0[..64 << 10].iter().all(|&b| b == 0xbb));
    assert!(c0[64 << 10..].iter().all(|&b| b == 0x11));
    // And a client sees brick 1's data, from either brick.
    for via in 0..2 {
        let n = Nbd::start(&pool, via, "disk0");
        n.io(&["read -P 0xbb 0 64k", "read -P 0x11 64k 960k"]);
        n.stop();
    }
}

/// Two NBD servers alive at once, each in one brick's namespace and so
/// reaching only that brick (`quorum-type none`), each take the image's
/// lease from their own brick and write different data to the same bytes:
/// a split-brain made by the volume layer itself, with no hand-made marks.
/// `heal info split-brain` lists it; `split-brain bigger-version` picks the
/// side whose chunk changed more often.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_both_sides_of_a_partition_then_bigger_version_wins() {
    let Some(pool) = NsPool::start(2, 'd') else {
        return;
    };
    let a = &pool.net.addr;
    let secret_file = pool.secret.to_str().expect("utf-8").to_string();
    pool.volume(0, &["create", "vm", "replica", "2", &a[0], &a[1]]);
    pool.volume(0, &["start", "vm"]);
    pool.volume(0, &["set", "vm", "quorum-type", "none"]);
    pool.volume(0, &["set", "vm", "ping-timeout", "2"]);
    ok(run(&[
        "image",
        "create",
        "disk0",
        "4M",
        "--volume",
        "vm",
        "--pool",
        &a[0],
        "--secret-file",
        &secret_file,
    ]));
    let n = Nbd::start(&pool, 0, "disk0");
    n.io(&["write -P 0x11 0 1M", "flush"]);
    n.stop();

    let side_a = Nbd::start_in(&pool, 0, "disk0");
    let side_b = Nbd::start_in(&pool, 1, "disk0");
    side_a.io(&["write -P 0xaa 0 64k", "flush"]);
    // Side B changes the chunk twice: its copy gets the bigger version.
    side_b.io(&["write -P 0xbb 0 32k", "write -P 0xbb 32k 32k", "flush"]);
    // Both alive, each reads its own side's data.
    side_a.io(&["read -P 0xaa 0 64k", "read -P 0x11 64k 960k"]);
    side_b.io(&["read -P 0xbb 0 64k", "read -P 0x11 64k 960k"]);
    side_a.stop();
    side_b.stop();

    let sb = pool.volume(0, &["heal", "vm", "info", "split-brain"]);
    println!("{sb}");
    assert_eq!(sb.lines().count(), 1, "{sb}");
    assert!(sb.contains(" chunk 0 region 0: bricks "), "{sb}");
    let obj: Vec<u32> = sb
        .split_whitespace()
        .nth(3)
        .expect("object")
        .split('.')
        .map(|x| x.parse().expect("fid"))
        .collect();
    let fid = Fid {
        volume: obj[0],
        vnode: obj[1],
        unique: obj[2],
    };
    let r = pool.volume(1, &["heal", "vm", "split-brain", "bigger-version"]);
    println!("{r}");
    assert!(!r.contains(" 0 regions healed"), "{r}");
    let sb = pool.volume(1, &["heal", "vm", "info", "split-brain"]);
    assert!(sb.contains("No regions in split-brain"), "{sb}");
    let info = pool.volume(0, &["heal", "vm", "info"]);
    assert_eq!(pending_regions(&info), vec![0, 0], "{info}");
    let secret = pool.secret();
    let (c0, s0) = brick_chunk(&a[0], &secret, fid.chunk(0), 1 << 20).await;
    let (c1, s1) = brick_chunk(&a[1], &secret, fid.chunk(0), 1 << 20).await;
    assert!(c0 == c1, "bricks differ after resolution");
    assert_eq!(s0, s1);
    assert!(c0[..64 << 10].iter().all(|&b| b == 0xbb), "side B must win");
    assert!(c0[64 << 10..].iter().all(|&b| b == 0x11));
    let n = Nbd::start(&pool, 0, "disk0");
    n.io(&["read -P 0xbb 0 64k", "read -P 0x11 64k 960k"]);
    n.stop();
}

/// Rolling partitions: each brick in turn is cut off (twice each, link down
/// and dropping qdisc alternately) while random unaligned writes go on; every
/// write succeeds (quorum 2 of 3); after each cycle the brick comes back, heal
/// runs, and the three copies equal what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_partitions_with_heal_between_keep_every_acknowledged_write() {
    use rand::{Rng, SeedableRng};
    let Some(pool) = NsPool::start(3, 'e') else {
        return;
    };
    let a = &pool.net.addr;
    pool.volume(0, &["create", "vm", "replica", "3", &a[0], &a[1], &a[2]]);
    pool.volume(0, &["start", "vm"]);
    pool.volume(0, &["set", "vm", "ping-timeout", "1"]);
    let secret = pool.secret();
    let spec = volume::manage::fetch(&[a[0].clone()], &secret, "vm")
        .await
        .expect("fetch");
    let client = Client::connect_spec(spec.clone(), secret.clone(), opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: spec.id,
        vnode: 4,
        unique: 2,
    };
    let obj = client.object(fid);
    const SPAN: usize = 8 * MIB;
    let mut model = pattern(7, SPAN);
    obj.write(0, &model).await.expect("first write");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9a27);
    let mut writes = 0;
    let mut copied = 0;
    for cycle in 0..6 {
        let victim = cycle % 3;
        let by_qdisc = cycle >= 3;
        if by_qdisc {
            pool.net.blackhole(victim);
        } else {
            pool.net.cut(victim);
        }
        for k in 0..12 {
            let len = rng.gen_range(1..=300_000usize);
            let off = rng.gen_range(0..SPAN - len);
            let d = pattern(cycle as u64 * 1000 + k, len);
            obj.write(off as u64, &d).await.unwrap_or_else(|e| {
                panic!("cycle {cycle} (brick {victim} cut off) write {k}: {e}")
            });
            model[off..off + len].copy_from_slice(&d);
            writes += 1;
        }
        if by_qdisc {
            pool.net.unblackhole(victim);
        } else {
            pool.net.restore(victim);
        }
        let link = client.links()[victim].clone();
        let mut waited = 0;
        while !link.is_up() {
            waited += 1;
            assert!(
                waited < 600,
                "cycle {cycle}: brick {victim} never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = volume::heal::heal_with(&client, |_| {})
            .await
            .expect("heal");
        assert!(r.split_brain.is_empty(), "cycle {cycle}: {r:?}");
        assert_eq!(r.regions_skipped, 0, "cycle {cycle}: {r:?}");
        assert!(r.regions_healed > 0, "cycle {cycle}: {r:?}");
        copied += r.bytes_copied;
        let mut copies = Vec::new();
        for b in a {
            let (got, size) = brick_chunk(b, &secret, fid.chunk(0), SPAN as u64).await;
            assert_eq!(size, SPAN as u64, "cycle {cycle}: {b} size");
            copies.push(got);
        }
        for (k, got) in copies.iter().enumerate() {
            assert!(
                got == &model,
                "cycle {cycle}: brick {k} differs from the acknowledged data"
            );
        }
        client.refresh_marks().await;
        assert!(obj.read(0, SPAN as u64).await.expect("read") == model);
    }
    println!("rolling partitions: 6 cycles, {writes} writes acknowledged and present, heal copied {copied} bytes");
    client.close().await;
}
