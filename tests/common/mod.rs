//! Helpers for end-to-end tests that run the real `stretto` binary on
//! loopback. Every process a test starts is stopped by its PID when the
//! handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `stretto` binary under test.
pub fn stretto() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stretto"))
}

/// Runs `stretto ARGS...` to completion.
pub fn run(args: &[&str]) -> Output {
    stretto()
        .args(args)
        .env("STRETTO_LOG", "warn")
        .output()
        .expect("run stretto")
}

/// A brick directory and the pool secret it was made with.
pub struct BrickFixture {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub secret: PathBuf,
}

/// `stretto brick init` in a new temporary directory.
pub fn init_brick() -> BrickFixture {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("brick");
    let secret = root.path().join("pool.secret");
    let out = run(&[
        "brick",
        "init",
        dir.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "brick init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    BrickFixture { root, dir, secret }
}

/// A running `stretto brick serve`.
pub struct BrickProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl BrickProcess {
    /// Starts serving `dir` on `listen` (e.g. `127.0.0.1:0`) and waits for its
    /// ready line.
    pub fn start(dir: &Path, listen: &str) -> BrickProcess {
        let mut child = stretto()
            .args(["brick", "serve"])
            .arg(dir)
            .args(["--listen", listen])
            .env("STRETTO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn brick serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("brick did not start: {line:?}"))
            .parse()
            .unwrap();
        BrickProcess { child, addr }
    }

    /// Sends `sig` to the brick.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGKILLs the brick and reaps it.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERMs the brick and returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for BrickProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// A pool: `n` brick directories made with one shared secret, each served
/// by its own `stretto brick serve` on loopback.
pub struct Pool {
    pub root: tempfile::TempDir,
    pub secret: PathBuf,
    pub dirs: Vec<PathBuf>,
    pub bricks: Vec<Option<BrickProcess>>,
}

impl Pool {
    /// Inits and starts `n` bricks.
    pub fn start(n: usize) -> Pool {
        let root = tempfile::tempdir().expect("tempdir");
        let secret = root.path().join("pool.secret");
        let mut dirs = Vec::new();
        let mut bricks = Vec::new();
        for i in 0..n {
            let dir = root.path().join(format!("brick{i}"));
            let out = run(&[
                "brick",
                "init",
                dir.to_str().unwrap(),
                "--secret-file",
                secret.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "brick init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            bricks.push(Some(BrickProcess::start(&dir, "127.0.0.1:0")));
            dirs.push(dir);
        }
        Pool {
            root,
            secret,
            dirs,
            bricks,
        }
    }

    /// `HOST:PORT` of brick `i` (it must be running).
    pub fn addr(&self, i: usize) -> String {
        self.bricks[i]
            .as_ref()
            .expect("brick running")
            .addr
            .to_string()
    }

    /// Runs `stretto volume ARGS... --pool <brick i> --secret-file <secret>`.
    pub fn volume(&self, via: usize, args: &[&str]) -> Output {
        let pool = self.addr(via);
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--pool",
            &pool,
            "--secret-file",
            self.secret.to_str().unwrap(),
        ]);
        run(&all)
    }
}

/// What this test process logs at warn and above (the volume client's
/// tracing events), kept in memory for assertions. The first call
/// installs the global subscriber.
pub fn logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

/// The text [`logs`] captured so far.
pub fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
