//! Volumes next to GlusterFS: Stretto replica-3 and disperse 2+1 volumes
//! through `stretto nbd serve` (fio's nbd engine), next to GlusterFS 10
//! replica 3 and disperse 3 redundancy 1 volumes through their FUSE mount
//! (fio libaio `--direct=1` on a file in the mount) and through libgfapi
//! (fio's `gfapi_async` engine), all bricks on the same file system.
//!
//! GlusterFS runs by hand, not as a system service: `glusterd -N` with a
//! private working directory, listening on 127.0.0.1 only; its brick
//! processes (`glusterfsd`), self-heal daemon and FUSE clients are stopped
//! by the PIDs in their pid files, mounts unmounted, and the files glusterd
//! leaves in /var/run/gluster, /var/run/glusterd.socket and
//! /var/log/glusterfs removed (only those that were not there before), as
//! well as the log fio's gfapi engine writes to /tmp/fio_gfapi.log.
//!
//! The gfapi targets use the file the FUSE targets laid out (the same file
//! of the same volume). libgfapi's `glfs_fini` takes about 7 s, paid by
//! every fio run through the gfapi engine; the full run therefore runs only
//! two gfapi cells per volume (sequential write and random read at QD32),
//! `--quick` one (random read at QD32 on the replica).

use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fio::Target;
use crate::matrix::{self, Bench, Plan, RatioCol, Timing};
use crate::procs::{self, path_str, Bricks, Proc};

const MIB: u64 = 1 << 20;
/// The gfapi cells `--quick` runs: random read at QD32 on the replica
/// (one ≈ 7 s `glfs_fini`), none on the disperse volume.
const GFAPI_QUICK: &[(&str, u32)] = &[("randread", 32)];
const GFAPI_QUICK_EC: &[(&str, u32)] = &[];
/// The gfapi cells the full run runs.
const GFAPI_FULL: &[(&str, u32)] = &[("write", 32), ("randread", 32)];
/// libgfapi's `glfs_fini` at the end of every fio run through the gfapi
/// engine (measured ≈ 7 s here), for the estimate.
const GFAPI_FINI_S: f64 = 7.0;
const RUN_DIR: &str = "/var/run/gluster";
const LOG_DIR: &str = "/var/log/glusterfs";
const SOCKET: &str = "/var/run/glusterd.socket";
const GLUSTERD_PORT: u16 = 24007;
/// fio's gfapi engine logs here (a fixed path in fio's source).
const FIO_GFAPI_LOG: &str = "/tmp/fio_gfapi.log";

/// Every path under `dir` (depth first), `dir` included if it exists.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if std::fs::symlink_metadata(dir).is_err() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// The paths glusterd writes outside its working directory.
fn system_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(Path::new(RUN_DIR), &mut v);
    walk(Path::new(LOG_DIR), &mut v);
    for f in [SOCKET, FIO_GFAPI_LOG] {
        if std::fs::symlink_metadata(f).is_ok() {
            v.push(PathBuf::from(f));
        }
    }
    v
}

/// The machine's host name, if it resolves to a loopback address
/// (GlusterFS refuses `localhost`/`127.0.0.1` as brick hosts).
fn loopback_host() -> Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("read the host name")?
        .trim()
        .to_string();
    let addrs: Vec<_> = (host.as_str(), 0)
        .to_socket_addrs()
        .with_context(|| format!("host name {host:?} does not resolve"))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!(
            "host name {host:?} resolves to {addrs:?}, not only to loopback: add \
             `127.0.0.1 {host}` to /etc/hosts for the GlusterFS bricks"
        );
    }
    Ok(host)
}

/// PIDs in the `*.pid` files of `dir`.
fn pid_files(dir: &Path) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Some(p) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    v.push(p);
                }
            }
        }
    }
    v
}

/// Is `pid` alive and a GlusterFS process (guards against a reused PID)?
fn is_gluster(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("gluster"))
        .unwrap_or(false)
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// SIGTERM the GlusterFS process `pid`, SIGKILL after 5 s.
fn stop_pid(pid: u32) {
    if !is_gluster(pid) {
        return;
    }
    // SAFETY: kill(2) with a valid signal on a PID read from a pid file
    // written by a process this benchmark started, checked just above to be
    // a live GlusterFS process.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !is_gluster(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A FUSE mount of a GlusterFS volume.
#[derive(Debug)]
struct Mount {
    dir: PathBuf,
    pid: u32,
}

/// `glusterd` run by hand in `root`, its volumes and mounts.
#[derive(Debug)]
pub struct Glusterd {
    root: PathBuf,
    host: String,
    proc: Option<Proc>,
    before: HashSet<PathBuf>,
    volumes: Vec<String>,
    mounts: Vec<Mount>,
}

impl Glusterd {
    /// Starts `glusterd -N` with a private working directory in `root`,
    /// listening on 127.0.0.1.
    pub fn start(root: &Path) -> Result<Glusterd> {
        procs::need("glusterd", "glusterfs-server")?;
        procs::need("gluster", "glusterfs-server")?;
        procs::need("glusterfs", "glusterfs-client")?;
        let host = loopback_host()?;
        if std::net::TcpStream::connect(("127.0.0.1", GLUSTERD_PORT)).is_ok() {
            bail!("a glusterd already listens on port {GLUSTERD_PORT}: not touching it");
        }
        let work = root.join("glusterd");
        std::fs::create_dir_all(&work)?;
        let vol = std::fs::read_to_string("/etc/glusterfs/glusterd.vol")
            .context("read /etc/glusterfs/glusterd.vol")?;
        let mut conf = String::new();
        for line in vol.lines() {
            if line.trim_start().starts_with("option working-directory") {
                conf.push_str(&format!(
                    "    option working-directory {}\n",
                    work.display()
                ));
            } else if line.trim() == "end-volume" {
                conf.push_str("    option transport.socket.bind-address 127.0.0.1\n");
                conf.push_str("end-volume\n");
            } else {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        let conf_file = root.join("glusterd.vol");
        std::fs::write(&conf_file, conf)?;
        let before: HashSet<PathBuf> = system_paths().into_iter().collect();
        let mut cmd = procs::server_command("glusterd");
        cmd.arg("-N")
            .arg("-f")
            .arg(&conf_file)
            .arg("-l")
            .arg(root.join("glusterd.log"))
            .arg("-p")
            .arg(root.join("glusterd.pid"));
        let mut p = Proc::spawn_logged("glusterd", cmd, &root.join("glusterd.out"))?;
        let mut g = Glusterd {
            root: root.to_path_buf(),
            host,
            proc: None,
            before,
            volumes: Vec::new(),
            mounts: Vec::new(),
        };
        let r = p.wait_port(GLUSTERD_PORT);
        g.proc = Some(p);
        r?;
        // glusterd answers the CLI a moment after it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        while g.cli(&["volume", "list"]).is_err() {
            if Instant::now() > deadline {
                g.cli(&["volume", "list"])?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(g)
    }

    /// The PID of glusterd itself.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// `gluster --mode=script ARGS…`; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("gluster")
            .arg("--mode=script")
            .args(args)
            .output()
            .context("cannot run gluster")?;
        if !out.status.success() {
            bail!(
                "gluster {} failed: {} {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates and starts volume `name` of layout `layout` (e.g. `["replica",
    /// "3"]`) on `bricks` new brick directories in `root`.
    pub fn volume(&mut self, name: &str, layout: &[&str], bricks: usize) -> Result<()> {
        let mut args: Vec<String> = vec!["volume".into(), "create".into(), name.into()];
        args.extend(layout.iter().map(|s| s.to_string()));
        for i in 0..bricks {
            let d = self.root.join("bricks").join(format!("{name}-{i}"));
            std::fs::create_dir_all(d.parent().context("brick dir")?)?;
            args.push(format!("{}:{}", self.host, d.display()));
        }
        args.push("force".into());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.cli(&a)?;
        self.volumes.push(name.to_string());
        self.cli(&["volume", "start", name])?;
        Ok(())
    }

    /// The PIDs of volume `name`'s brick processes.
    pub fn brick_pids(&self, name: &str) -> Vec<u32> {
        pid_files(&Path::new(RUN_DIR).join("vols").join(name))
    }

    /// Mounts volume `name` with the GlusterFS FUSE client at `dir` (what
    /// `mount -t glusterfs 127.0.0.1:/NAME DIR` runs, with our own log and
    /// pid file); returns the client's PID.
    pub fn mount(&mut self, name: &str, dir: &Path) -> Result<u32> {
        std::fs::create_dir_all(dir)?;
        let pidfile = self.root.join(format!("fuse-{name}.pid"));
        let mut cmd = procs::server_command("glusterfs");
        cmd.args(["--process-name", "fuse", "--volfile-server=127.0.0.1"])
            .arg(format!("--volfile-id=/{name}"))
            .arg("-l")
            .arg(self.root.join(format!("fuse-{name}.log")))
            .arg("-p")
            .arg(&pidfile)
            .arg(dir);
        let st = cmd
            .status()
            .with_context(|| format!("cannot run glusterfs for {name}"))?;
        if !st.success() {
            bail!("glusterfs (FUSE client of {name}) exited with {st}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            let mounted = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(path_str(dir).unwrap_or("")));
            let pid: Option<u32> = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let (true, Some(pid)) = (mounted, pid) {
                self.mounts.push(Mount {
                    dir: dir.to_path_buf(),
                    pid,
                });
                break pid;
            }
            if Instant::now() > deadline {
                if let Some(pid) = pid {
                    stop_pid(pid);
                }
                bail!(
                    "GlusterFS volume {name} did not mount on {} in 20 s",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The mount is usable once its root answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(dir).is_err() {
            if Instant::now() > deadline {
                bail!("GlusterFS mount {} does not answer", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// Unmounts, stops volumes, bricks, self-heal daemons and glusterd (by
    /// PID), removes what glusterd left in /var/run and /var/log.
    pub fn stop(&mut self) {
        for m in self.mounts.drain(..) {
            let ok = Command::new("umount")
                .arg(&m.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&m.dir).status();
            }
            stop_pid(m.pid);
        }
        let mut pids = Vec::new();
        for v in &self.volumes {
            pids.extend(self.brick_pids(v));
            pids.extend(pid_files(&Path::new(RUN_DIR).join("shd").join(v)));
        }
        for v in std::mem::take(&mut self.volumes) {
            let _ = self.cli(&["volume", "stop", &v, "force"]);
        }
        for p in pids {
            stop_pid(p);
        }
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        // Children of glusterd that outlived it (self-heal daemons).
        for v in pid_files(&Path::new(RUN_DIR).join("shd")) {
            stop_pid(v);
        }
        // No glusterd ran before ours (checked at start): its socket is ours.
        let _ = std::fs::remove_file(SOCKET);
        let mut left = system_paths();
        left.reverse(); // children before their directories
        for p in left {
            if self.before.contains(&p) {
                continue;
            }
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl Drop for Glusterd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run lengths: full, 1 GiB per target, 1 s ramp + 5 s per cell, one
/// repetition; quick, 128 MiB, no ramp + 1 s.
fn timing(quick: bool) -> Timing {
    if quick {
        Timing {
            size: 128 * MIB,
            reps: 1,
            ramp: 0,
            secs: 1,
        }
    } else {
        Timing {
            size: 1024 * MIB,
            reps: 1,
            ramp: 1,
            secs: 5,
        }
    }
}

/// Stretto NBD and GlusterFS FUSE targets: every cell.
const FULL: Plan = Plan::ALL;

/// The gfapi targets: the file the FUSE target laid out, a few cells, each
/// paying libgfapi's ≈ 7 s `glfs_fini`.
fn gfapi_plan(quick: bool, disperse: bool) -> Plan {
    Plan {
        only: Some(match (quick, disperse) {
            (false, _) => GFAPI_FULL,
            (true, false) => GFAPI_QUICK,
            (true, true) => GFAPI_QUICK_EC,
        }),
        reps: None,
        laid_out: true,
        extra_s: GFAPI_FINI_S,
    }
}

/// Stretto replica-3, GlusterFS replica 3 FUSE and gfapi, then the same
/// for disperse 2+1.
fn plans(quick: bool) -> [Plan; 6] {
    [
        FULL,
        FULL,
        gfapi_plan(quick, false),
        FULL,
        FULL,
        gfapi_plan(quick, true),
    ]
}

/// Seconds the section should take: the matrix plus three bricks, two
/// volumes and `nbd serve`s, glusterd, two GlusterFS volumes and mounts,
/// and the teardown.
pub fn estimate(quick: bool) -> f64 {
    matrix::estimate(&plans(quick), timing(quick)) + 25.0
}

/// Runs the GlusterFS comparison in `dir`; prints "n/a (reason)" when
/// GlusterFS cannot run here.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let t = timing(quick);
    println!(
        "\n## Volumes vs GlusterFS 10 (replica 3 and disperse 2+1; {} MiB per target, {} s ramp + {} s per cell, median of {})\n",
        t.size / MIB,
        t.ramp,
        t.secs,
        t.reps
    );
    let root = dir.join("gluster-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let r = run_in(&root, t, quick);
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = r {
        println!("n/a ({e:#})");
    }
    Ok(())
}

fn run_in(root: &Path, t: Timing, quick: bool) -> Result<()> {
    procs::need("fio", "fio")?;
    // Stretto: three brick processes hold both volumes.
    let mut bricks = Bricks::start(&root.join("pool"), 3)?;
    let all: [usize; 3] = [0, 1, 2];
    let (a, b, c) = (
        bricks.addrs[0].clone(),
        bricks.addrs[1].clone(),
        bricks.addrs[2].clone(),
    );
    bricks.volume(&all, &["create", "rep3", "replica", "3", &a, &b, &c])?;
    bricks.volume(&all, &["start", "rep3"])?;
    bricks.volume(&all, &["create", "ec21", "disperse", "2+1", &a, &b, &c])?;
    bricks.volume(&all, &["start", "ec21"])?;
    bricks.image_create(&all, "rep3", "disk", t.size)?;
    bricks.image_create(&all, "ec21", "disk", t.size)?;
    let (mut nbd_rep, rep_addr) = bricks.nbd_serve(&all, "rep3")?;
    let (mut nbd_ec, ec_addr) = bricks.nbd_serve(&all, "ec21")?;

    let mut g = Glusterd::start(&root.join("glusterfs"))?;
    g.volume("rep3", &["replica", "3"], 3)?;
    g.volume("ec21", &["disperse", "3", "redundancy", "1"], 3)?;
    let mnt_rep = root.join("mnt-rep3");
    let mnt_ec = root.join("mnt-ec21");
    let fuse_rep = g.mount("rep3", &mnt_rep)?;
    let fuse_ec = g.mount("ec21", &mnt_ec)?;
    let (g_rep, g_ec) = (g.brick_pids("rep3"), g.brick_pids("ec21"));

    println!(
        "Stretto: three `stretto brick serve` processes (O_DIRECT) hold both volumes; one \
         `stretto nbd serve` per volume; fio's nbd engine. GlusterFS {}: `glusterd` by hand, \
         three `glusterfsd` bricks per volume (default options: bricks write through the page \
         cache, `performance.strict-o-direct` off), bricks on the same file system; FUSE = the \
         `glusterfs` client mount with fio libaio `--direct=1`; gfapi = fio's `gfapi_async` \
         engine `--direct=1` (the client runs inside fio). Server CPU: bricks + `nbd serve` \
         (Stretto), bricks + the FUSE client process (GlusterFS FUSE), bricks (gfapi).{}",
        gluster_version(),
        if procs::pinned() {
            " Servers pinned to CPU 1, fio to CPU 0."
        } else {
            ""
        }
    );

    let s_pids = bricks.pids(&all);
    let targets = [
        Bench {
            name: "stretto replica-3 (NBD)".into(),
            target: Target::Nbd(format!("nbd://{rep_addr}/disk")),
            pids: [s_pids.clone(), vec![nbd_rep.pid()]].concat(),
            plan: FULL,
        },
        Bench {
            name: "GlusterFS replica 3 (FUSE)".into(),
            target: Target::File(mnt_rep.join("bench.img")),
            pids: [g_rep.clone(), vec![fuse_rep]].concat(),
            plan: FULL,
        },
        Bench {
            name: "GlusterFS replica 3 (gfapi)".into(),
            target: Target::Gfapi {
                volume: "rep3".into(),
                file: "bench.img".into(),
            },
            pids: g_rep,
            plan: gfapi_plan(quick, false),
        },
        Bench {
            name: "stretto disperse 2+1 (NBD)".into(),
            target: Target::Nbd(format!("nbd://{ec_addr}/disk")),
            pids: [s_pids, vec![nbd_ec.pid()]].concat(),
            plan: FULL,
        },
        Bench {
            name: "GlusterFS disperse 2+1 (FUSE)".into(),
            target: Target::File(mnt_ec.join("bench.img")),
            pids: [g_ec.clone(), vec![fuse_ec]].concat(),
            plan: FULL,
        },
        Bench {
            name: "GlusterFS disperse 2+1 (gfapi)".into(),
            target: Target::Gfapi {
                volume: "ec21".into(),
                file: "bench.img".into(),
            },
            pids: g_ec,
            plan: gfapi_plan(quick, true),
        },
    ];
    let figures = matrix::run(&targets, t)?;
    let col = |num, den, title| RatioCol { num, den, title };
    matrix::print(
        "glusterfs",
        &targets,
        &figures,
        &[
            col(0, 1, "rep3 NBD / Gluster FUSE"),
            col(0, 2, "rep3 NBD / gfapi"),
            col(3, 4, "disperse NBD / Gluster FUSE"),
            col(3, 5, "disperse NBD / gfapi"),
        ],
    );
    g.stop();
    nbd_rep.stop();
    nbd_ec.stop();
    bricks.stop();
    Ok(())
}

/// `glusterfs --version`'s first line.
fn gluster_version() -> String {
    Command::new("glusterfs")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "(version unknown)".into())
}
