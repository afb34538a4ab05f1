//! `stretto demo`: everything built so far, on loopback, in a temporary
//! directory.
//!
//! It makes a pool secret and three bricks, starts three `stretto brick
//! serve` processes, creates and starts a replica-3 volume, writes and reads
//! an object through the volume client (replicated to all three bricks),
//! creates an image and exports it with a `stretto nbd serve` process, then
//! prints the commands a user can run against it. Ctrl-C (or `--once`)
//! stops the daemons with SIGTERM and removes the directory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use transport::{ClientOptions, Secret};
use volume::manage;
use volume::{Client, Fid, VolumeKind};

/// Options of `stretto demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Do everything, print it, stop and clean up (no waiting for Ctrl-C).
    #[arg(long)]
    once: bool,
    /// Keep the demo's files here instead of a new temporary directory (it is
    /// not removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address for the NBD export (default: the NBD port if free, else any).
    #[arg(long)]
    nbd_listen: Option<String>,
}

/// Resolves `HOST:PORT` to one socket address, with a clear error.
pub fn resolve(s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("`{s}` is not a HOST:PORT address"))?
        .next()
        .ok_or_else(|| anyhow!("`{s}` resolves to no address"))
}

/// A daemon started by the demo; stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    what: String,
}

impl Daemon {
    /// Starts `stretto ARGS...` and waits for its `listening on ADDR` line.
    fn start(what: &str, args: &[&str]) -> Result<Daemon> {
        let exe = std::env::current_exe().context("cannot find the stretto binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .args(["--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdout = child.stdout.take().context("no stdout from the daemon")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .with_context(|| format!("reading {what}'s ready line"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("{what} did not start (it printed {line:?})"))?;
        let addr = resolve(addr)?;
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(Daemon {
            child,
            addr,
            what: what.to_string(),
        })
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) with our own child's pid and a valid signal number.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8 ^ (i >> 12) as u8)
        .collect()
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let (root, keep) = match &args.dir {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("stretto-demo-{}", std::process::id())),
            false,
        ),
    };
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        bail!(
            "{} is not empty; give an empty or new --dir",
            root.display()
        );
    }
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let result = demo_in(&root, &args).await;
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn nbd_listen(args: &DemoArgs) -> String {
    if let Some(l) = &args.nbd_listen {
        return l.clone();
    }
    // The NBD port when it is free (clients default to it), else any port.
    match std::net::TcpListener::bind("127.0.0.1:10809") {
        Ok(l) => {
            drop(l);
            "127.0.0.1:10809".into()
        }
        Err(_) => "127.0.0.1:0".into(),
    }
}

async fn demo_in(root: &Path, args: &DemoArgs) -> Result<()> {
    let secret_path = root.join("pool.secret");
    let mut bricks = Vec::new();
    for i in 0..3 {
        let dir = root.join(format!("brick{i}"));
        let info = brick::init(&dir, &secret_path)?;
        let d = Daemon::start(
            &format!("brick {i}"),
            &[
                "brick",
                "serve",
                dir.to_str().context("non-UTF-8 path")?,
                "--listen",
                "127.0.0.1:0",
            ],
        )?;
        println!(
            "brick {i}: {} in {} served by pid {} on {}",
            info.id,
            dir.display(),
            d.child.id(),
            d.addr
        );
        bricks.push(d);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let secret = Secret::load(&secret_path)?;

    let spec = manage::create(
        &addrs,
        &secret,
        "demo",
        VolumeKind::Replicate { replica: 3 },
        &addrs,
        volume::DEFAULT_CHUNK_SIZE,
    )
    .await?;
    manage::start(&addrs, &secret, "demo").await?;
    println!(
        "volume demo: replica 3 over the three bricks (id {}), started",
        spec.id
    );
    let spec = manage::fetch(&addrs, &secret, "demo").await?;

    // An object through the volume client: written to all three bricks.
    let client = Client::connect_spec(spec.clone(), secret.clone(), ClientOptions::default())
        .await
        .context("attach volume demo")?;
    let fid = Fid {
        volume: spec.id,
        vnode: 0x7fff_0000,
        unique: 1,
    };
    let obj = client
        .open_writer(fid, volume::client::DEFAULT_LEASE)
        .await
        .context("take a write lease")?;
    let data = pattern(4 << 20);
    let t = Instant::now();
    obj.write(4096, &data).await?;
    obj.flush().await?;
    let back = obj.read(4096, data.len() as u64).await?;
    if back != data {
        bail!("the volume read back different bytes than were written");
    }
    println!(
        "wrote 4 MiB to object {fid} on all three bricks, flushed, read it back: identical ({:.1} ms)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    obj.close().await?;
    client.close().await;

    let image_size = 1u64 << 30;
    manage::image_create(&addrs, &secret, "demo", "disk0", image_size).await?;
    println!("image disk0: 1 GiB, sparse, in volume demo");
    let listen = nbd_listen(args);
    let pool_arg = addrs.join(",");
    let secret_arg = secret_path.to_str().context("non-UTF-8 path")?;
    let mut nbd = Daemon::start(
        "nbd server",
        &[
            "nbd",
            "serve",
            "--volume",
            "demo",
            "--listen",
            &listen,
            "--pool",
            &pool_arg,
            "--secret-file",
            secret_arg,
        ],
    )?;
    let uri = format!("nbd://{}/disk0", nbd.addr);
    println!(
        "nbd export disk0 served by pid {} on {}",
        nbd.child.id(),
        nbd.addr
    );

    // The volume as a file system: `stretto mount` returns once it is live.
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).context("cannot make the demo's mount point")?;
    let mnt_arg = mnt.to_str().context("non-UTF-8 path")?;
    let exe = std::env::current_exe().context("cannot find the stretto binary")?;
    let out = Command::new(&exe)
        .args(["mount", "demo", mnt_arg, "--pool", &pool_arg])
        .args(["--secret-file", secret_arg, "--log", "warn"])
        .output()
        .context("cannot run stretto mount")?;
    if !out.status.success() {
        bail!(
            "stretto mount failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mounted = MountGuard(mnt.clone());
    std::fs::write(mnt.join("hello.txt"), b"hello from stretto\n")
        .context("cannot write through the mount")?;
    let back = std::fs::read(mnt.join("hello.txt")).context("cannot read through the mount")?;
    let images: Vec<String> = std::fs::read_dir(mnt.join("images"))
        .context("cannot list /images")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    println!(
        "mounted volume demo on {} (FUSE); hello.txt written and read back: {}; images/: {}",
        mnt.display(),
        if back == b"hello from stretto\n" {
            "identical"
        } else {
            "DIFFERENT"
        },
        images.join(" ")
    );

    println!();
    println!("Try, while the demo runs:");
    println!("  ls -l {}  {}/images", mnt.display(), mnt.display());
    println!("  nbdinfo {uri}");
    println!("  qemu-img info {uri}");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {uri}");
    println!("  qemu-img convert -n -f raw -O raw SOME.raw {uri}");
    println!(
        "  nbd-client {} {} /dev/nbd0 -N disk0    # needs the kernel nbd module",
        nbd.addr.ip(),
        nbd.addr.port()
    );
    println!(
        "  stretto volume info demo --pool {} --secret-file {secret_arg}",
        addrs[0]
    );
    println!(
        "  stretto image list --volume demo --pool {} --secret-file {secret_arg}",
        addrs[0]
    );
    println!(
        "  stretto brick stats {} --secret-file {secret_arg}",
        addrs[0]
    );
    if args.once {
        drop(mounted);
        println!("\nunmounted {}", mnt.display());
        nbd.stop();
        for b in &mut bricks {
            b.stop();
        }
        println!("\nstopped the nbd server and the bricks (SIGTERM: drained, flushed)");
        return Ok(());
    }
    println!("\nCtrl-C stops everything and removes {}", root.display());
    tokio::signal::ctrl_c().await.ok();
    drop(mounted);
    nbd.stop();
    for b in &mut bricks {
        b.stop();
    }
    println!("stopped ({} and the bricks)", nbd.what);
    Ok(())
}

/// Unmounts the demo's mount when dropped (also on an error path).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                Command::new(exe)
                    .arg("umount")
                    .arg(&self.0)
                    .stdout(Stdio::null())
                    .status()
                    .ok()
            })
            .is_some_and(|s| s.success());
        if !ok {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
        }
    }
}
