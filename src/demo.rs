//! `stretto demo`: everything built so far, on loopback, in a temporary
//! directory.
//!
//! It makes a pool secret and a brick, starts `stretto brick serve` as a real
//! child process, writes an object through the authenticated wire protocol,
//! flushes, reads it back and compares, then prints what it did and the
//! commands a user can try against the running brick. Ctrl-C (or `--once`)
//! stops the brick with SIGTERM and removes the directory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use iobuf::IoBuf;
use transport::wire::{DataRef, ObjectId, ObjectReq, ReadReq, WriteReq};
use transport::{Payload, Request, Response};

/// Options of `stretto demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Do the round trip, print it, stop and clean up (no waiting for Ctrl-C).
    #[arg(long)]
    once: bool,
    /// Keep the demo's files here instead of a new temporary directory (it is
    /// not removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Resolves `HOST:PORT` to one socket address, with a clear error.
pub fn resolve(s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("`{s}` is not a HOST:PORT address"))?
        .next()
        .ok_or_else(|| anyhow!("`{s}` resolves to no address"))
}

/// A brick daemon started by the demo; stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path) -> Result<Daemon> {
        let exe = std::env::current_exe().context("cannot find the stretto binary")?;
        let mut child = Command::new(exe)
            .args(["brick", "serve"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start `stretto brick serve`")?;
        let stdout = child.stdout.take().context("no stdout from the brick")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the brick's ready line")?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("brick did not start (it printed {line:?})"))?;
        let addr = resolve(addr)?;
        Ok(Daemon { child, addr })
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
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
    let result = demo_in(&root, args.once).await;
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

async fn demo_in(root: &Path, once: bool) -> Result<()> {
    let secret = root.join("pool.secret");
    let brick_dir = root.join("brick0");
    let info = brick::init(&brick_dir, &secret)?;
    println!("made brick {} in {}", info.id, brick_dir.display());

    let mut daemon = Daemon::start(&brick_dir)?;
    println!(
        "started `stretto brick serve` (pid {}) on {}",
        daemon.child.id(),
        daemon.addr
    );

    let client = brick::server::connect(daemon.addr, &secret).await?;
    println!("connected and authenticated with the pool secret (HMAC-SHA256, both ways)");

    let object = ObjectId {
        volume: 1,
        vnode: 1,
        unique: 1,
        chunk: 0,
    };
    let len = 1 << 20;
    let data = pattern(len);
    let t = Instant::now();
    let (resp, _) = client
        .call(
            Request::Write(WriteReq {
                object,
                offset: 4096,
                epoch: 0,
                flags: 0,
                crc32c: 0,
                data: DataRef::Inline { len: len as u32 },
            }),
            Payload::Out(IoBuf::from_slice(&data)),
        )
        .await?;
    expect(&resp, "write")?;
    let (resp, _) = client
        .call(Request::Flush(ObjectReq { object }), Payload::None)
        .await?;
    expect(&resp, "flush")?;
    println!(
        "wrote 1 MiB to object 1.1.1 chunk 0 at offset 4096 and flushed it to disk ({:.1} ms)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut sink = IoBuf::alloc(len);
    sink.set_len(len);
    let (resp, back) = client
        .call(
            Request::Read(ReadReq {
                object,
                offset: 4096,
                len: len as u32,
                data: DataRef::Inline { len: len as u32 },
            }),
            Payload::In(sink),
        )
        .await?;
    expect(&resp, "read")?;
    let back = back.into_buf().context("read returned no buffer")?;
    if back.as_slice() != data.as_slice() {
        bail!("read back different bytes than were written");
    }
    println!("read it back: all 1048576 bytes match");
    let (resp, _) = client
        .call(Request::Stat(ObjectReq { object }), Payload::None)
        .await?;
    if let Response::Stat(s) = resp {
        println!(
            "stat: size {} bytes, version {}, {} bytes allocated on the brick's disk",
            s.size, s.version, s.allocated
        );
    }
    client.close().await;

    println!();
    println!("Try, while the demo runs:");
    println!(
        "  stretto brick stats {} --secret-file {}",
        daemon.addr,
        secret.display()
    );
    println!("  ls -R {}/objects", brick_dir.display());
    if once {
        daemon.stop();
        println!("\nstopped the brick (SIGTERM: drained, flushed, log applied)");
        return Ok(());
    }
    println!("\nCtrl-C stops the brick and removes {}", root.display());
    tokio::signal::ctrl_c().await.ok();
    daemon.stop();
    println!("stopped");
    Ok(())
}

fn expect(resp: &Response, what: &str) -> Result<()> {
    match resp {
        Response::Error(e) => bail!("{what} failed on the brick: {}", e.message),
        _ => Ok(()),
    }
}
