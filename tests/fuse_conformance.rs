//! POSIX conformance of a Stretto FUSE mount (replica 3, real bricks, real
//! `stretto mount`):
//!
//! - `stretto-fsx` (the model-checked random file-operation tester, crate
//!   `fsx`) runs 20,000 operations per seed, three seeds, each in its own
//!   directory of one mount, on files up to 1.25 MiB with 1 MiB chunks. In each run one brick is SIGKILLed at a fixed
//!   operation and restarted at another (a different brick per seed), so the
//!   points are operation counts, never times. Then the volume is unmounted,
//!   mounted again with an empty cache and every file is checked against
//!   the model again; after `volume heal`, a brick is killed and the tree is
//!   checked once more, so the restarted bricks must hold it all.
//! - pjdfstest (`cargo install pjdfstest`, installed by scripts/test.sh) runs
//!   on tmpfs first (the harness reference) and then on the mount: zero
//!   failures, and as many passes as on tmpfs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run, stretto, BrickProcess, Pool};
use fsx::{Config, Limits, Runner};

/// Operations per seed.
const OPS: u64 = 20_000;

/// How long a mount may take to appear, a mount may live, or a tool may run
/// before the test gives up: a hang guard only (nothing is timed), so a
/// hung mount fails the test instead of stalling CI.
const PATIENCE: Duration = Duration::from_secs(30 * 60);

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a FUSE file system is mounted on `point` (per /proc/self/mountinfo).
fn fuse_mounted_on(point: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let point = point.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4) == Some(&point.as_ref())
            && fields.get(sep + 1).is_some_and(|t| t.starts_with("fuse"))
    })
}

/// The FUSE connection number (the minor of the mount's device, field 3 of
/// mountinfo) of the mount on `point`.
fn fuse_connection(point: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = point.to_string_lossy();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4) == Some(&point.as_ref()))
            .then(|| fields.get(2)?.split(':').nth(1).map(str::to_string))
            .flatten()
    })
}

/// Aborts FUSE connection `conn` (fusectl): every request waiting on it
/// fails with ENOTCONN, and a daemon thread stuck in the kernel (a
/// notification that waits for a lock a blocked request holds) gets out,
/// so the mount process can be reaped.
fn abort_connection(conn: &str) {
    let dir = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(dir)
            .status();
    }
    let _ = std::fs::write(dir.join(conn).join("abort"), "1");
}

/// A `stretto mount --foreground` process and its mount point.
struct Mount {
    child: Option<Child>,
    point: PathBuf,
    _cache: tempfile::TempDir,
    /// Set (under its lock) once the mount process is to be reaped, so the
    /// hang guard never signals a reused pid.
    done: Arc<Mutex<bool>>,
    /// Its FUSE connection number, to abort a hung mount.
    conn: Option<String>,
}

impl Mount {
    /// Mounts volume `vol` on `point` through brick `via`, with a new empty
    /// cache directory, and waits until the kernel shows the mount.
    fn start(pool: &Pool, via: usize, vol: &str, point: &Path) -> Mount {
        let cache = tempfile::tempdir().expect("cache dir");
        let mut child = stretto()
            .arg("mount")
            .arg(vol)
            .arg(point)
            .args(["--pool", &pool.addr(via)])
            .arg("--secret-file")
            .arg(&pool.secret)
            .arg("--cache-dir")
            .arg(cache.path())
            .arg("--foreground")
            .env("STRETTO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn stretto mount");
        // Whatever it prints goes on being read so it never blocks.
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                println!("stretto mount: {line}");
            }
        });
        let start = Instant::now();
        while !fuse_mounted_on(point) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("stretto mount exited before mounting: {status}");
            }
            assert!(start.elapsed() < PATIENCE, "no mount on {point:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The hang guard: a mount still up after PATIENCE is killed, which
        // aborts the FUSE connection, so blocked calls fail with ENOTCONN.
        let done = Arc::new(Mutex::new(false));
        let conn = fuse_connection(point);
        let (guard, pid, shown) = (done.clone(), child.id(), point.display().to_string());
        let guard_conn = conn.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let done = guard.lock().unwrap_or_else(|e| e.into_inner());
                if *done {
                    return;
                }
                if start.elapsed() > PATIENCE {
                    eprintln!(
                        "mount on {shown} still up after {PATIENCE:?}: killing stretto mount {pid}"
                    );
                    // SAFETY: kill(2) on our child's pid; `done` is false
                    // under the lock, so it has not been reaped.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                    if let Some(c) = &guard_conn {
                        abort_connection(c);
                    }
                    return;
                }
            }
        });
        Mount {
            child: Some(child),
            point: point.to_path_buf(),
            _cache: cache,
            done,
            conn,
        }
    }

    /// Tells the hang guard to stand down (before the child is reaped).
    fn stand_down(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// `stretto umount`; the mount process must then end cleanly.
    fn unmount(mut self) {
        ok(run(&["umount", self.point.to_str().unwrap()]));
        assert!(!fuse_mounted_on(&self.point), "still mounted after umount");
        self.stand_down();
        let mut child = self.child.take().unwrap();
        let status = wait_for(&mut child);
        assert!(status.success(), "stretto mount exited with {status}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if fuse_mounted_on(&self.point) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.point)
                .status();
        }
        self.stand_down();
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on our own child's pid, not reaped yet.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
                }
                // A thread of it may be stuck in the kernel on this mount
                // (the connection is still its own: it had not exited).
                if let Some(c) = &self.conn {
                    abort_connection(c);
                }
            }
            let _ = child.wait();
        }
    }
}

/// Waits for `child`, killing it (and failing) past [`PATIENCE`].
fn wait_for(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A replica-3 volume `fs` on three bricks with `chunk_size`, started.
fn replica3(chunk_size: &str) -> Pool {
    let pool = Pool::start(3);
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    ok(pool.volume(
        0,
        &[
            "create",
            "fs",
            "replica",
            "3",
            &a,
            &b,
            &c,
            "--chunk-size",
            chunk_size,
        ],
    ));
    ok(pool.volume(0, &["start", "fs"]));
    pool
}

#[test]
fn fsx_three_seeds_with_a_brick_sigkilled_and_restarted_mid_run() {
    // Files grow past the 1 MiB chunk, so reads, writes, truncates and
    // holes also cross chunk boundaries.
    let mut pool = replica3("1M");
    let root = tempfile::tempdir().unwrap();
    let point = root.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let mount = Mount::start(&pool, 0, "fs", &point);

    let mut runners = Vec::new();
    // Seeds 1, 2, 3; `STRETTO_FSX_SEEDS=4,5,6,...` runs others (soak runs).
    let seeds: Vec<u64> = match std::env::var("STRETTO_FSX_SEEDS") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("STRETTO_FSX_SEEDS: numbers, comma-separated")
            })
            .collect(),
        Err(_) => vec![1, 2, 3],
    };
    for (n, seed) in seeds.into_iter().enumerate() {
        // The first seed kills brick 2, the second brick 1, the third brick 0
        // (the one the mount was given with --pool), and so on round.
        let victim = 2 - n % 3;
        let dir = point.join(format!("fsx-seed{seed}"));
        std::fs::create_dir(&dir).unwrap();
        let cfg = Config {
            seed,
            ops: OPS,
            limits: Limits {
                max_size: 1280 * 1024,
                max_io: 64 * 1024,
            },
            ..Config::default()
        };
        let mut runner = Runner::new(&dir, cfg).unwrap();
        let mut addr = String::new();
        let stats = runner
            .run(|i, _| {
                if i == OPS / 3 {
                    addr = pool.addr(victim);
                    println!("seed {seed}: SIGKILL brick {victim} ({addr}) before op {i}");
                    pool.bricks[victim].take().unwrap().kill9();
                } else if i == 2 * OPS / 3 {
                    println!("seed {seed}: restart brick {victim} before op {i}");
                    pool.bricks[victim] = Some(BrickProcess::start(&pool.dirs[victim], &addr));
                }
            })
            .unwrap_or_else(|f| panic!("fsx on the Stretto mount:\n{f}"));
        println!("fsx seed {seed} on the mount: {stats}");
        assert_eq!(stats.ops, OPS);
        runners.push(runner);
    }

    // What was written is on the bricks, not only in this client's cache:
    // a new mount with an empty cache sees every file as the model has it.
    mount.unmount();
    let mount = Mount::start(&pool, 1, "fs", &point);
    for r in &mut runners {
        r.verify_all(OPS)
            .unwrap_or_else(|f| panic!("after remount with an empty cache:\n{f}"));
    }
    for r in &mut runners {
        r.close_all();
    }
    mount.unmount();

    // After a heal each brick holds the whole tree: with brick 0 (which
    // missed a third of seed 3's run) and brick 1 up, and brick 2 down, the
    // files still read back whole.
    let healed = ok(pool.volume(0, &["heal", "fs"]));
    println!("{healed}");
    pool.bricks[2].take().unwrap().kill9();
    let mount = Mount::start(&pool, 0, "fs", &point);
    for r in &mut runners {
        r.verify_all(OPS)
            .unwrap_or_else(|f| panic!("after heal, with brick 2 down:\n{f}"));
        r.close_all();
    }
    mount.unmount();
}

/// Where pjdfstest is: `$PJDFSTEST`, on `PATH`, or in `~/.cargo/bin`
/// (scripts/test.sh installs it there).
fn pjdfstest() -> PathBuf {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
        .expect(
            "pjdfstest is not installed: cargo install pjdfstest --locked (scripts/test.sh does)",
        )
}

/// The configuration shared/PEERS.md gives: two dummy users, the features
/// tmpfs and Linux have, a nap longer than the timestamp granularity.
const PJDFSTEST_CONF: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
"#;

/// pjdfstest's counts and the names of the tests that failed.
#[derive(Debug)]
struct PjdResult {
    passed: u64,
    failed: u64,
    skipped: u64,
    failures: Vec<String>,
}

/// Reads pjdfstest's output: the counts of its `Summary:` line and, for
/// each test marked `FAILED`, its name and the indented reason below it.
fn parse_pjdfstest(text: &str) -> Option<PjdResult> {
    let summary = text.lines().find(|l| l.contains("Summary:"))?;
    let words: Vec<&str> = summary
        .split(|c: char| c == ',' || c == ':' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let count = |word: &str| -> Option<u64> {
        let at = words.iter().position(|w| *w == word)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    let mut failures = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim_end().ends_with("FAILED") {
            let mut why = Vec::new();
            while let Some(next) = lines.peek() {
                if !next.starts_with(char::is_whitespace) {
                    break;
                }
                why.push(next.trim().to_string());
                lines.next();
            }
            failures.push(format!(
                "{} {}",
                l.split_whitespace().next().unwrap_or(l),
                why.join(" | ")
            ));
        }
    }
    Some(PjdResult {
        passed: count("passed")?,
        failed: count("failed")?,
        skipped: count("skipped")?,
        failures,
    })
}

#[test]
fn pjdfstest_output_is_read_right() {
    let text = "chmod::foo                                ok\n\
unlink::open_file_not_freed                                               FAILED\n\
\tcalled `Result::unwrap()` on an `Err` value: ENOENT\n\
Backtrace:\n   0: pjdfstest::main\n\
utimensat::utime_omit                                                     FAILED\n\
\tassertion `left == right` failed\n\
rename::exdev_target                                                     skipped\n\
\tNo secondary file-system has been configured.\n\
\n\
Summary: 2 failed, 23 skipped, 373 passed, 0 expected failures, 398 totalError: Some tests have failed\n";
    let r = parse_pjdfstest(text).unwrap();
    assert_eq!((r.passed, r.failed, r.skipped), (373, 2, 23));
    assert_eq!(
        r.failures,
        vec![
            "unlink::open_file_not_freed called `Result::unwrap()` on an `Err` value: ENOENT",
            "utimensat::utime_omit assertion `left == right` failed",
        ]
    );
    assert!(parse_pjdfstest("no summary here").is_none());
}

/// Runs pjdfstest in `dir` (pjdfstest needs root: it switches to the dummy
/// users) and parses its summary line.
fn run_pjdfstest(conf: &Path, dir: &Path, label: &str) -> PjdResult {
    let out_path = conf.with_extension(format!("{label}.out"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(pjdfstest())
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run pjdfstest");
    let status = wait_for(&mut child);
    let text = std::fs::read_to_string(&out_path).unwrap();
    let r = parse_pjdfstest(&text)
        .unwrap_or_else(|| panic!("pjdfstest ({status}) printed no summary:\n{text}"));
    println!(
        "pjdfstest on {label}: {} passed, {} failed, {} skipped",
        r.passed, r.failed, r.skipped
    );
    for f in &r.failures {
        println!("  FAILED {f}");
    }
    r
}

#[test]
fn pjdfstest_passes_on_a_replica_3_mount() {
    assert_eq!(
        // SAFETY: geteuid(2) has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "pjdfstest needs root (it switches to its dummy users)"
    );
    // pjdfstest works as its dummy users too: they must reach the test
    // directories.
    let open_dir = |d: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let root = tempfile::tempdir().unwrap();
    open_dir(root.path());
    let conf = root.path().join("pjdfstest.toml");
    std::fs::write(&conf, PJDFSTEST_CONF).unwrap();

    // The harness on tmpfs (/dev/shm) first: the reference counts.
    let shm = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    open_dir(shm.path());
    let reference = run_pjdfstest(&conf, shm.path(), "tmpfs");
    assert_eq!(reference.failed, 0, "{:#?}", reference.failures);
    assert!(reference.passed > 300, "{reference:?}");

    let pool = replica3("64M");
    let point = root.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let mount = Mount::start(&pool, 0, "fs", &point);
    let dir = point.join("pjdfstest");
    std::fs::create_dir(&dir).unwrap();
    open_dir(&dir);
    let on_mount = run_pjdfstest(&conf, &dir, "stretto");
    assert_eq!(
        on_mount.failed,
        0,
        "pjdfstest failures on the Stretto mount:\n{}",
        on_mount.failures.join("\n")
    );
    assert_eq!(
        (on_mount.passed, on_mount.skipped),
        (reference.passed, reference.skipped),
        "the mount must pass what tmpfs passes"
    );
    mount.unmount();
}
