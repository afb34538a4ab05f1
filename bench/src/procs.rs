//! Real processes for the cluster benchmarks: `stretto brick serve` ×N,
//! `stretto volume …`/`stretto image …` one-shot commands, `stretto nbd
//! serve`, and the peers (nbdkit, qemu-nbd, nbd-server). Every process started here is
//! stopped by its own PID when its handle drops (SIGTERM, then SIGKILL if it
//! does not exit within a few seconds), never by name.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `stretto` binary: next to this benchmark's binary
/// (`target/release/stretto` when the bench runs from `target/release`).
pub fn stretto_bin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the benchmark's own path")?;
    let bin = me
        .parent()
        .map(|d| d.join("stretto"))
        .context("the benchmark binary has no directory")?;
    if !bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release` (bench/run.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Is `tool` installed (as a Debian package puts it)?
pub fn need(tool: &str, package: &str) -> Result<()> {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    if !found {
        bail!("{tool} is not installed: apt-get install -y {package}");
    }
    Ok(())
}

static PINNED: AtomicBool = AtomicBool::new(false);

/// Pins servers started from now on to CPU 1 (`taskset -c 1`) and fio to
/// CPU 0 (`--cpus_allowed=0`). Ignored on a machine with fewer than 2 CPUs.
pub fn set_pinned(on: bool) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    PINNED.store(on && cpus >= 2, Ordering::Relaxed);
}

/// Are servers pinned apart from fio?
pub fn pinned() -> bool {
    PINNED.load(Ordering::Relaxed)
}

/// A command that starts a server: `PROGRAM`, or `taskset -c 1 PROGRAM`
/// when pinned (taskset execs PROGRAM: the PID stays the server's).
pub fn server_command(program: impl AsRef<OsStr>) -> Command {
    if pinned() {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// User + system CPU seconds used so far by the processes `pids` (all their
/// threads; from `/proc/PID/stat`), including their children: the ones
/// already reaped (cutime + cstime) and the ones still there (read through
/// `/proc/PID/task/*/children`), so a server that forks one process per
/// connection (nbd-server) is counted whole. A process that is gone counts 0.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let mut ticks = 0u64;
    for &pid in pids {
        // The parent first (its reaped children are in cutime/cstime),
        // then the live ones: a child reaped in between is missed rather
        // than counted twice.
        ticks += stat_ticks(pid);
        for child in children(pid) {
            ticks += stat_ticks(child);
        }
    }
    ticks as f64 / hz
}

/// utime + stime + cutime + cstime of `pid` in clock ticks (0 if gone).
fn stat_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) in
    // parentheses: state is field 3, utime 14, stime 15, cutime 16,
    // cstime 17.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    [11, 12, 13, 14]
        .iter()
        .map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}

/// The child processes of `pid` (of all its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// A free loopback port (bound then released: a tiny race with other
/// programs, acceptable for a benchmark).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A child process stopped by PID when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn_logged(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Has the process exited (it is reaped then)? Its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Spawns `cmd` with stdout piped (for a ready line) and stderr into
    /// `log`.
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits for a `listening on ADDR` line on stdout, then keeps draining
    /// stdout in a thread (so later prints never block the child).
    fn ready_line(&mut self) -> Result<SocketAddr> {
        let out = self
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .context("child has no stdout")?;
        let mut r = BufReader::new(out);
        let mut line = String::new();
        r.read_line(&mut line)
            .with_context(|| format!("{} printed nothing", self.name))?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            bail!(
                "{} did not start (first line {:?}); its log:\n{}",
                self.name,
                line.trim(),
                self.log_tail()
            );
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{} printed a bad address {addr:?}", self.name))?;
        std::thread::spawn(move || {
            let mut sink = String::new();
            while matches!(r.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
        });
        Ok(addr)
    }

    /// Waits until something accepts TCP connections on `port`.
    pub fn wait_port(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("{} exited ({st}); its log:\n{}", self.name, self.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on port {port} within 20 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on the PID of our own child that has not been
            // reaped yet (we hold its `Child`), with a valid signal number.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILLs the process and reaps it (a crash, for heal drills).
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        // SAFETY: as in `signal`: our own unreaped child.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pool of brick processes sharing one secret, in `root`.
#[derive(Debug)]
pub struct Bricks {
    bin: PathBuf,
    pub root: PathBuf,
    pub secret: PathBuf,
    pub dirs: Vec<PathBuf>,
    pub addrs: Vec<String>,
    pub procs: Vec<Proc>,
}

impl Bricks {
    /// `stretto brick init` + `stretto brick serve` ×`n` on loopback.
    pub fn start(root: &Path, n: usize) -> Result<Bricks> {
        let bin = stretto_bin()?;
        std::fs::create_dir_all(root)?;
        let secret = root.join("pool.secret");
        let mut b = Bricks {
            bin,
            root: root.to_path_buf(),
            secret,
            dirs: Vec::new(),
            addrs: Vec::new(),
            procs: Vec::new(),
        };
        for i in 0..n {
            let dir = root.join(format!("brick{i}"));
            b.cli(&[
                "brick",
                "init",
                path_str(&dir)?,
                "--secret-file",
                path_str(&b.secret)?,
            ])?;
            b.dirs.push(dir);
            let (p, addr) = b.serve(i, "127.0.0.1:0")?;
            b.procs.push(p);
            b.addrs.push(addr.to_string());
        }
        Ok(b)
    }

    fn serve(&self, i: usize, listen: &str) -> Result<(Proc, SocketAddr)> {
        let mut cmd = server_command(&self.bin);
        cmd.args(["brick", "serve"])
            .arg(&self.dirs[i])
            .args(["--listen", listen])
            .env("STRETTO_LOG", "warn");
        let mut p = Proc::spawn(
            &format!("brick {i}"),
            cmd,
            &self.root.join(format!("brick{i}.log")),
        )?;
        let addr = p.ready_line()?;
        Ok((p, addr))
    }

    /// SIGKILLs brick `i`.
    pub fn kill9(&mut self, i: usize) {
        self.procs[i].kill9();
    }

    /// Starts brick `i` again on its old address.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let (p, _) = self.serve(i, &self.addrs[i].clone())?;
        self.procs[i] = p;
        Ok(())
    }

    /// Runs `stretto ARGS…` to completion; its stdout on success.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("STRETTO_LOG", "warn")
            .output()
            .with_context(|| format!("cannot run stretto {args:?}"))?;
        if !out.status.success() {
            bail!(
                "stretto {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `stretto volume ARGS… --pool POOL --secret-file S`, `POOL` being the
    /// bricks `pool` (indexes).
    pub fn volume(&self, pool: &[usize], args: &[&str]) -> Result<String> {
        let p = self.pool_arg(pool);
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--pool", &p, "--secret-file", path_str(&self.secret)?]);
        self.cli(&all)
    }

    /// `stretto image create NAME SIZE --volume VOL …`.
    pub fn image_create(&self, pool: &[usize], vol: &str, name: &str, size: u64) -> Result<()> {
        let p = self.pool_arg(pool);
        self.cli(&[
            "image",
            "create",
            name,
            &size.to_string(),
            "--volume",
            vol,
            "--pool",
            &p,
            "--secret-file",
            path_str(&self.secret)?,
        ])?;
        Ok(())
    }

    /// The pool addresses of bricks `pool`, comma-separated.
    pub fn pool_arg(&self, pool: &[usize]) -> String {
        pool.iter()
            .map(|&i| self.addrs[i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `stretto nbd serve --volume VOL` on a fresh loopback port.
    pub fn nbd_serve(&self, pool: &[usize], vol: &str) -> Result<(Proc, SocketAddr)> {
        let mut cmd = server_command(&self.bin);
        cmd.args(["nbd", "serve", "--volume", vol, "--listen", "127.0.0.1:0"])
            .args(["--pool", &self.pool_arg(pool)])
            .arg("--secret-file")
            .arg(&self.secret)
            .env("STRETTO_LOG", "warn");
        let mut p = Proc::spawn(
            &format!("stretto nbd serve {vol}"),
            cmd,
            &self.root.join(format!("nbd-{vol}.log")),
        )?;
        let addr = p.ready_line()?;
        Ok((p, addr))
    }

    /// The PIDs of the brick processes `which`.
    pub fn pids(&self, which: &[usize]) -> Vec<u32> {
        which.iter().map(|&i| self.procs[i].pid()).collect()
    }

    /// Stops every brick (SIGTERM by PID).
    pub fn stop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
    }
}

impl Drop for Bricks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nbdkit --foreground file FILE cache=none` on loopback `port`; with
/// `direct` false, `file FILE` with the plugin's default cache (the page
/// cache).
pub fn nbdkit_file(file: &Path, direct: bool, port: u16, log: &Path) -> Result<Proc> {
    need("nbdkit", "nbdkit")?;
    let mut cmd = server_command("nbdkit");
    cmd.args(["--foreground", "--ipaddr", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("file")
        .arg(file);
    if direct {
        cmd.arg("cache=none");
    }
    let mut p = Proc::spawn("nbdkit", cmd, log)?;
    p.wait_port(port)?;
    Ok(p)
}

/// `nbdkit --foreground null SIZE` on loopback `port`: the protocol
/// ceiling (reads return zeros, writes are discarded, no storage).
pub fn nbdkit_null(size: u64, port: u16, log: &Path) -> Result<Proc> {
    need("nbdkit", "nbdkit")?;
    let mut cmd = server_command("nbdkit");
    cmd.args(["--foreground", "--ipaddr", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("null")
        .arg(size.to_string());
    let mut p = Proc::spawn("nbdkit null", cmd, log)?;
    p.wait_port(port)?;
    Ok(p)
}

/// `qemu-nbd --cache=none --aio=io_uring -e 8 -f raw FILE` (O_DIRECT), or
/// with `direct` false qemu-nbd's defaults (`--cache=writeback
/// --aio=threads`: the page cache), persistent, on loopback `port`, export
/// name `export`.
pub fn qemu_nbd(file: &Path, direct: bool, port: u16, export: &str, log: &Path) -> Result<Proc> {
    need("qemu-nbd", "qemu-utils")?;
    let mut cmd = server_command("qemu-nbd");
    if direct {
        cmd.args(["--cache=none", "--aio=io_uring"]);
    }
    cmd.args([
        "-e",
        "8",
        "-f",
        "raw",
        "--persistent",
        "--bind",
        "127.0.0.1",
        "--port",
    ])
    .arg(port.to_string())
    .args(["--export-name", export])
    .arg(file);
    let mut p = Proc::spawn("qemu-nbd", cmd, log)?;
    p.wait_port(port)?;
    Ok(p)
}

/// A server that daemonizes itself (nbd-server cannot serve more than one
/// connection without forking away from its parent): known by the PID it
/// writes to its pid file, stopped by that PID when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    /// The expected `/proc/PID/comm`, checked before every signal.
    comm: String,
    pid: u32,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Is `pid` still our process (same command name, not a zombie)?
    fn alive(&self) -> bool {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        if comm.trim() != self.comm {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("");
        state != "Z" && !state.is_empty()
    }

    /// SIGTERM, then SIGKILL after 10 s (by PID, after checking it is
    /// still the daemon's).
    pub fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            if !self.alive() {
                break;
            }
            // SAFETY: kill(2) on a PID just checked to be our daemon.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.alive() {
            eprintln!("warning: {} (pid {}) did not stop", self.name, self.pid);
        }
        self.pid = 0;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nbd-server -C CONFIG -p PIDFILE` serving `file` as export `export` on
/// loopback `port`, with a config file of its own in `dir` (listenaddr
/// 127.0.0.1; every export option at its default: no `sync`, no `flush`,
/// no `fua`, no `splice`; nbd-server has no O_DIRECT option, so it goes
/// through the page cache). It daemonizes (its `-d` serves one connection
/// and exits), so it is known by its pid file.
pub fn nbd_server(file: &Path, port: u16, export: &str, dir: &Path) -> Result<Daemon> {
    need("nbd-server", "nbd-server")?;
    let config = dir.join("nbd-server.conf");
    let pidfile = dir.join("nbd-server.pid");
    let log = dir.join("nbd-server.log");
    std::fs::write(
        &config,
        format!(
            "[generic]\nlistenaddr = 127.0.0.1\nport = {port}\nallowlist = false\n\n[{export}]\nexportname = {}\n",
            path_str(file)?
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = server_command("nbd-server");
    cmd.arg("-C").arg(&config).arg("-p").arg(&pidfile);
    let mut launcher = Proc::spawn_logged("nbd-server", cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break pid;
        }
        if let Some(st) = launcher.exited() {
            if !st.success() {
                bail!(
                    "nbd-server exited ({st}); its log:\n{}",
                    launcher.log_tail()
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "nbd-server wrote no pid file within 20 s; its log:\n{}",
                launcher.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let d = Daemon {
        name: "nbd-server".into(),
        comm: "nbd-server".into(),
        pid,
    };
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if !d.alive() {
            bail!(
                "nbd-server (pid {pid}) exited; its log:\n{}",
                launcher.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!("nbd-server did not listen on port {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    launcher.stop();
    Ok(d)
}

/// A path as UTF-8 (the CLI takes strings).
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}
