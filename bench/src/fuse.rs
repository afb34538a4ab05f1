//! File system through FUSE: a Stretto FUSE mount (`stretto mount`) of a
//! replica-3 volume next to a GlusterFS replica 3 FUSE mount, bricks on the
//! same file system. Data: the fio matrix on one file in each mount
//! (libaio `--direct=1`). Metadata: create, stat and unlink N small files,
//! `ls -lR` over them, and untar a tree of N small files.
//!
//! When the `stretto` binary has no `mount` subcommand the section prints
//! "n/a (stretto mount not built)".

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fio::Target;
use crate::gluster::Glusterd;
use crate::matrix::{self, Bench, Plan, RatioCol, Timing};
use crate::procs::{self, path_str, Bricks, Proc};
use crate::stats::{record_ratio, table_header, table_row};

const MIB: u64 = 1 << 20;

/// `stretto mount --help`, if `stretto` has a `mount` subcommand.
fn stretto_mount_help() -> Option<String> {
    let bin = procs::stretto_bin().ok()?;
    let out = Command::new(bin)
        .args(["mount", "--help"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_mounted(dir: &Path) -> bool {
    let d = path_str(dir).unwrap_or("");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(d))
}

/// Run lengths: the fio matrix's timing, the number of small files and
/// the time budget of each metadata phase (a slow mount must not hold the
/// whole run: the rate is over what was done).
struct Params {
    t: Timing,
    files: usize,
    budget: Duration,
}

fn params(quick: bool) -> Params {
    if quick {
        Params {
            t: Timing {
                size: 128 * MIB,
                reps: 1,
                ramp: 0,
                secs: 1,
            },
            files: 2_000,
            budget: Duration::from_secs(3),
        }
    } else {
        Params {
            t: Timing {
                size: 1024 * MIB,
                reps: 1,
                ramp: 1,
                secs: 5,
            },
            files: 10_000,
            budget: Duration::from_secs(8),
        }
    }
}

/// Both mounts: every cell.
const PLANS: [Plan; 2] = [Plan::ALL, Plan::ALL];

/// Seconds the section should take: the matrix, the metadata phases
/// (create and untar usually run to the budget; stat, `ls -lR` and unlink
/// of what was created take a fraction of it), and ≈ 50 s of mounts, the
/// tarball, teardown and removing the bricks' files (thousands of small
/// files and directories: ≈ 30 s with other work on the machine).
pub fn estimate(quick: bool) -> f64 {
    let p = params(quick);
    matrix::estimate(&PLANS, p.t) + 2.0 * 2.5 * p.budget.as_secs_f64() + 50.0
}

/// Runs the FUSE comparison in `dir`.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let Params { t, files, budget } = params(quick);
    println!(
        "\n## File system: Stretto FUSE vs GlusterFS replica 3 FUSE ({} MiB file, {} s ramp + {} s per cell, median of {}; metadata on {files} files)\n",
        t.size / MIB,
        t.ramp,
        t.secs,
        t.reps
    );
    let Some(help) = stretto_mount_help() else {
        println!("n/a (stretto mount not built)");
        return Ok(());
    };
    let root = dir.join("fuse-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let r = run_in(&root, t, files, budget, &help);
    let t0 = Instant::now();
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "  [fuse] files removed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if let Err(e) = r {
        println!("n/a ({e:#})");
    }
    Ok(())
}

/// A Stretto FUSE mount: the `stretto mount` process (if it stays in the
/// foreground) and its mount point; unmounted and stopped on drop.
struct StrettoMount {
    dir: PathBuf,
    proc: Proc,
}

impl StrettoMount {
    /// `stretto mount VOL DIR --pool … --secret-file …`, with
    /// `--foreground` (so the benchmark holds the PID of the FUSE daemon and
    /// counts its CPU) and a cache directory in `root` when `help` lists
    /// those options.
    fn start(
        bricks: &Bricks,
        pool: &[usize],
        vol: &str,
        dir: &Path,
        root: &Path,
        help: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = procs::server_command(procs::stretto_bin()?);
        cmd.args(["mount", vol])
            .arg(dir)
            .args(["--pool", &bricks.pool_arg(pool)])
            .arg("--secret-file")
            .arg(&bricks.secret)
            .env("STRETTO_LOG", "warn");
        if help.contains("--foreground") {
            cmd.arg("--foreground");
        }
        if help.contains("--cache-dir") {
            cmd.arg("--cache-dir").arg(root.join("mount-cache"));
        }
        let mut proc = Proc::spawn_logged("stretto mount", cmd, &root.join("mount.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(dir) {
            if let Some(st) = proc.exited() {
                if !st.success() {
                    bail!("stretto mount exited ({st}): {}", proc.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "stretto mount did not mount within 30 s: {}",
                    proc.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(StrettoMount {
            dir: dir.to_path_buf(),
            proc,
        })
    }
}

impl Drop for StrettoMount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        self.proc.stop();
    }
}

/// A tarball of `files` small files in 50 directories, made in `root`.
fn make_tarball(root: &Path, files: usize) -> Result<PathBuf> {
    let src = root.join("tree");
    let mut body = [0u8; 2048];
    for (i, b) in body.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    for i in 0..files {
        let d = src.join(format!("d{:02}", i % 50));
        if i < 50 {
            std::fs::create_dir_all(&d)?;
        }
        File::create(d.join(format!("f{i}")))?.write_all(&body[..512 + i % 1536])?;
    }
    let tar = root.join("tree.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(root)
        .arg("tree")
        .status()
        .context("cannot run tar")?;
    if !st.success() {
        bail!("tar -c failed");
    }
    std::fs::remove_dir_all(&src)?;
    Ok(tar)
}

/// One metadata phase: files handled, seconds, and whether it stopped at
/// the time budget before the end.
#[derive(Debug, Clone, Copy)]
struct Phase {
    done: usize,
    secs: f64,
    cut: bool,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.done as f64 / self.secs.max(1e-9)
    }

    fn cell(&self, files: usize) -> String {
        if self.cut {
            format!(
                "{:.0} ({} of {files} in {:.0} s)",
                self.rate(),
                self.done,
                self.secs
            )
        } else {
            format!("{:.0}", self.rate())
        }
    }
}

/// `f` on each of `items` until done or `budget` has passed.
fn budgeted<T>(
    items: &[T],
    budget: Duration,
    mut f: impl FnMut(&T) -> Result<()>,
) -> Result<Phase> {
    let t = Instant::now();
    let mut done = 0;
    for it in items {
        if t.elapsed() > budget {
            break;
        }
        f(it)?;
        done += 1;
    }
    Ok(Phase {
        done,
        secs: t.elapsed().as_secs_f64(),
        cut: done < items.len(),
    })
}

/// A command (run under `timeout`) over `files` files: a phase cut at the
/// budget if the command timed out.
fn command_phase(mut cmd: Command, files: usize) -> Result<Phase> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    // timeout(1) exits 124 when the budget ran out.
    if st.code() == Some(124) {
        return Ok(Phase {
            done: 0,
            secs,
            cut: true,
        });
    }
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(Phase {
        done: files,
        secs,
        cut: false,
    })
}

fn timeout_cmd(budget: Duration, prog: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "--kill-after=10",
        &format!("{}", budget.as_secs().max(1)),
        prog,
    ]);
    c
}

/// The metadata phases in directory `base` (inside a mount), each stopped
/// at `budget`: create (1 KiB each), stat, `ls -lR`, unlink, untar.
fn metadata(base: &Path, files: usize, tar: &Path, budget: Duration) -> Result<[Phase; 5]> {
    let dir = base.join("meta");
    std::fs::create_dir_all(&dir)?;
    let names: Vec<PathBuf> = (0..files).map(|i| dir.join(format!("f{i}"))).collect();
    let body = [7u8; 1024];
    let create = budgeted(&names, budget, |n| {
        File::create(n)?.write_all(&body)?;
        Ok(())
    })?;
    let made = &names[..create.done];
    let stat = budgeted(made, budget, |n| {
        std::fs::metadata(n)?;
        Ok(())
    })?;
    let mut ls = timeout_cmd(budget, "ls");
    ls.arg("-lR").arg(&dir);
    let ls = command_phase(ls, made.len())?;
    let unlink = budgeted(made, budget, |n| {
        std::fs::remove_file(n)?;
        Ok(())
    })?;
    let untar_dir = base.join("untar");
    std::fs::create_dir_all(&untar_dir)?;
    let mut untar = timeout_cmd(budget, "tar");
    untar.arg("-xf").arg(tar).arg("-C").arg(&untar_dir);
    let mut untar = command_phase(untar, files)?;
    if untar.cut {
        // Count what tar extracted before the budget ran out.
        let mut v = Vec::new();
        crate::gluster::walk(&untar_dir, &mut v);
        untar.done = v.iter().filter(|p| p.is_file()).count();
    }
    Ok([create, stat, ls, unlink, untar])
}

fn run_in(root: &Path, t: Timing, files: usize, budget: Duration, help: &str) -> Result<()> {
    procs::need("fio", "fio")?;
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("  [fuse] {what} at {:.1} s", t0.elapsed().as_secs_f64());
    let mut bricks = Bricks::start(&root.join("pool"), 3)?;
    let all: [usize; 3] = [0, 1, 2];
    let (a, b, c) = (
        bricks.addrs[0].clone(),
        bricks.addrs[1].clone(),
        bricks.addrs[2].clone(),
    );
    bricks.volume(&all, &["create", "rep3", "replica", "3", &a, &b, &c])?;
    bricks.volume(&all, &["start", "rep3"])?;
    let s_mnt = root.join("mnt-stretto");
    let smount = StrettoMount::start(&bricks, &all, "rep3", &s_mnt, root, help)?;
    step("stretto mounted");

    let mut g = Glusterd::start(&root.join("glusterfs"))?;
    g.volume("rep3", &["replica", "3"], 3)?;
    let g_mnt = root.join("mnt-gluster");
    let g_fuse = g.mount("rep3", &g_mnt)?;
    step("GlusterFS mounted");

    println!(
        "Stretto: `stretto mount` of a replica-3 volume on three `stretto brick serve` \
         processes; GlusterFS replica 3: three `glusterfsd` bricks, `glusterfs` FUSE client, \
         default options. fio libaio `--direct=1` on one file per mount. Server CPU: bricks + \
         the FUSE daemon of each.{}",
        if procs::pinned() {
            " Servers pinned to CPU 1, fio to CPU 0."
        } else {
            ""
        }
    );
    let mut s_pids = bricks.pids(&all);
    s_pids.push(smount.proc.pid());
    let targets = [
        Bench {
            name: "stretto replica-3 (FUSE)".into(),
            target: Target::File(s_mnt.join("bench.img")),
            pids: s_pids,
            plan: PLANS[0],
        },
        Bench {
            name: "GlusterFS replica 3 (FUSE)".into(),
            target: Target::File(g_mnt.join("bench.img")),
            pids: [g.brick_pids("rep3"), vec![g_fuse]].concat(),
            plan: PLANS[1],
        },
    ];
    let figures = matrix::run(&targets, t)?;
    matrix::print(
        "fuse",
        &targets,
        &figures,
        &[RatioCol {
            num: 0,
            den: 1,
            title: "stretto/GlusterFS",
        }],
    );

    let tar = make_tarball(root, files)?;
    step("fio matrix and tarball done");
    let s = metadata(&s_mnt, files, &tar, budget).context("metadata on the Stretto mount")?;
    step("stretto metadata done");
    let gl = metadata(&g_mnt, files, &tar, budget).context("metadata on the GlusterFS mount")?;
    step("GlusterFS metadata done");
    println!(
        "\n### Metadata, {files} small files (files per second; each phase stops after {} s; \
         ratio = Stretto rate / GlusterFS rate, > 1: Stretto faster)\n",
        budget.as_secs()
    );
    table_header(&[
        "phase",
        "stretto files/s",
        "GlusterFS files/s",
        "stretto/GlusterFS",
    ]);
    let phases = [
        "create (1 KiB each)",
        "stat",
        "ls -lR",
        "unlink",
        "untar (50 dirs)",
    ];
    for (i, p) in phases.iter().enumerate() {
        let r = s[i].rate() / gl[i].rate();
        let ratio = if r.is_finite() && s[i].done > 0 && gl[i].done > 0 {
            record_ratio("fuse", &format!("meta {p}"), r);
            format!("{r:.2}×")
        } else {
            "–".to_string()
        };
        table_row(&[p.to_string(), s[i].cell(files), gl[i].cell(files), ratio]);
    }
    drop(smount);
    step("stretto unmounted");
    g.stop();
    step("GlusterFS stopped");
    bricks.stop();
    step("bricks stopped");
    Ok(())
}
