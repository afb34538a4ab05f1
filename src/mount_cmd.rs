//! `stretto mount VOL MOUNTPOINT` and `stretto umount MOUNTPOINT`: a
//! volume as a POSIX file system through FUSE (see docs/fuse.md).
//!
//! Without `--foreground` the command starts itself again in the
//! background with `--foreground` and returns once that process reports
//! the mount live (or prints its error), so a script can use the mount as
//! soon as the command returns.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use fuse_client::fs::{FsOptions, ImageSource};
use fuse_client::mount::{mount, MountConfig};
use transport::{ClientOptions, Secret};
use volume::{manage, Client, VolumeState};

/// What the background process prints on stdout once the mount is live.
const READY: &str = "stretto-mount-ready";

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The volume to mount.
    volume: String,
    /// An existing, empty directory to mount it on.
    mountpoint: PathBuf,
    /// Any brick of the pool, HOST:PORT (several: comma-separated).
    #[arg(long, env = "STRETTO_POOL", value_delimiter = ',')]
    pool: Vec<String>,
    /// The pool secret.
    #[arg(long, env = "STRETTO_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Stay in the foreground until unmounted (default: return once mounted).
    #[arg(long)]
    foreground: bool,
    /// Mount options, comma-separated: ro, rw.
    #[arg(short = 'o', value_delimiter = ',')]
    options: Vec<String>,
    /// The client's cache directory (created if missing); the background
    /// process logs to mount.log in it.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Most bytes of file data kept in the cache directory (e.g. 512M, 4G).
    #[arg(long, default_value = "1G")]
    cache_size: String,
    /// FUSE session threads (requests served at once).
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Internal: print the ready line on stdout (set by the background start).
    #[arg(long, hide = true)]
    ready_line: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where a volume is mounted.
    mountpoint: PathBuf,
}

fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let m = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("mountpoint {} does not exist", p.display())
        }
        _ => anyhow::anyhow!("cannot use mountpoint {}: {e}", p.display()),
    })?;
    if !m.is_dir() {
        bail!("mountpoint {} is not a directory", p.display());
    }
    std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// Whether `p` (canonical) is a Stretto mount, per /proc/self/mounts.
fn is_stretto_mount(p: &Path) -> bool {
    let Ok(m) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    m.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2
            && f[0].starts_with("stretto:")
            && f[2].starts_with("fuse")
            && Path::new(&unescape(f[1])) == p
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn run(args: MountArgs) -> Result<()> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    if is_stretto_mount(&mountpoint) {
        bail!("{} is already a Stretto mount", mountpoint.display());
    }
    let mut read_only = false;
    for o in &args.options {
        match o.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "" => {}
            other => bail!("unknown mount option {other:?} (known: ro, rw)"),
        }
    }
    let secret_file = args
        .secret_file
        .clone()
        .context("no pool secret given (use --secret-file F or STRETTO_SECRET_FILE)")?;
    if args.pool.is_empty() {
        bail!("no pool brick given (use --pool HOST:PORT or STRETTO_POOL)");
    }
    if let Some(d) = &args.cache_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot make the cache directory {}", d.display()))?;
    }
    let cache_size = manage::parse_size(&args.cache_size).with_context(|| {
        format!(
            "bad --cache-size {:?}: expected e.g. 512M, 4G or a byte count",
            args.cache_size
        )
    })?;
    if !args.foreground {
        return start_background(&args, &mountpoint);
    }
    let secret = Secret::load(&secret_file)
        .with_context(|| format!("cannot read the pool secret {}", secret_file.display()))?;
    let rt = crate::runtime()?;
    let volume = args.volume.clone();
    let spec = rt.block_on(manage::fetch(&args.pool, &secret, &volume))?;
    if spec.state != VolumeState::Started {
        bail!(
            "volume {volume} is {}: start it first (stretto volume start {volume})",
            spec.state
        );
    }
    let client = rt
        .block_on(Client::connect_spec(
            spec.clone(),
            secret.clone(),
            ClientOptions::default(),
        ))
        .with_context(|| format!("cannot attach volume {volume}"))?;
    let cfg = MountConfig {
        mountpoint: mountpoint.clone(),
        options: FsOptions {
            read_only,
            images: Some(ImageSource {
                pool: args.pool.clone(),
                secret,
                volume: volume.clone(),
            }),
        },
        threads: args.threads,
        cache: args.cache_dir.clone().map(|d| (d, cache_size)),
    };
    let mounted = mount(rt.handle().clone(), Arc::new(client), cfg)
        .with_context(|| format!("cannot mount volume {volume} on {}", mountpoint.display()))?;
    // The mount answers: the kernel reaches the file system.
    std::fs::metadata(&mountpoint)
        .with_context(|| format!("the mount on {} does not answer", mountpoint.display()))?;
    println!(
        "mounted volume {volume} on {}{}",
        mountpoint.display(),
        if read_only { " (read-only)" } else { "" }
    );
    if args.ready_line {
        // Logged at mount, before the log file was ours: again, into it,
        // before the parent returns (a script reading the log then finds it).
        if let Some(note) = mounted.snapshot_note() {
            detach_fds(args.cache_dir.as_deref(), &[2]);
            tracing::info!("{note}");
        }
        println!("{READY}");
        detach_stdio(args.cache_dir.as_deref());
    }
    let mp = mountpoint.clone();
    rt.spawn(async move {
        crate::wait_for_stop_signal().await;
        let _ = fusermount_u(&mp);
    });
    mounted.wait().context("the FUSE session failed")?;
    Ok(())
}

/// Points stdout and stderr at the log (or /dev/null) once the parent has
/// stopped listening.
fn detach_stdio(cache_dir: Option<&Path>) {
    detach_fds(cache_dir, &[1, 2]);
}

/// Points the descriptors `fds` (1, 2) at the log (or /dev/null).
fn detach_fds(cache_dir: Option<&Path>, fds: &[i32]) {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let target = cache_dir
        .and_then(|d| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("mount.log"))
                .ok()
        })
        .or_else(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
        });
    if let Some(f) = target {
        use std::os::fd::AsRawFd;
        for &fd in fds {
            // SAFETY: dup2 onto a standard descriptor with a file we own;
            // the descriptor stays valid for the life of the process.
            unsafe {
                libc::dup2(f.as_raw_fd(), fd);
            }
        }
    }
}

fn start_background(args: &MountArgs, mountpoint: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the stretto binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(&args.volume)
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--ready-line")
        .arg("--threads")
        .arg(args.threads.to_string());
    cmd.arg("--pool").arg(args.pool.join(","));
    if let Some(s) = &args.secret_file {
        cmd.arg("--secret-file").arg(s);
    }
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    if let Some(d) = &args.cache_dir {
        cmd.arg("--cache-dir").arg(d);
    }
    cmd.arg("--cache-size").arg(&args.cache_size);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the mount process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = Vec::new();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line == READY {
            ready = true;
            break;
        }
        lines.push(line);
    }
    if ready {
        for l in lines {
            println!("{l}");
        }
        println!("mount process {}", child.id());
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    let msg = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stretto: "))
        .unwrap_or("the mount process ended before the mount was live")
        .to_string();
    bail!("{msg}")
}

fn fusermount_u(p: &Path) -> Result<()> {
    let out = match Command::new("fusermount3")
        .arg("-u")
        .arg(p)
        .output()
        .or_else(|_| Command::new("fusermount").arg("-u").arg(p).output())
    {
        Ok(out) => out,
        // Without fuse3's helper, root can unmount with the system call
        // (the mount itself was made the same way).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_root() => {
            return umount_syscall(p);
        }
        Err(e) => {
            return Err(e).context("cannot run fusermount3 (Debian package fuse3)");
        }
    };
    if !out.status.success() {
        let e = String::from_utf8_lossy(&out.stderr);
        bail!(
            "cannot unmount {}: {}",
            p.display(),
            e.trim().lines().last().unwrap_or("fusermount3 failed")
        );
    }
    Ok(())
}

pub fn umount(args: UmountArgs) -> Result<()> {
    let p = check_mountpoint(&args.mountpoint)?;
    if !is_stretto_mount(&p) {
        bail!("{} is not a Stretto mount", p.display());
    }
    fusermount_u(&p)?;
    println!("unmounted {}", p.display());
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `umount2(2)` of `p`, for root on a machine without fusermount3.
fn umount_syscall(p: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).context("mount point path")?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot unmount {}: {e}", p.display());
    }
    Ok(())
}
