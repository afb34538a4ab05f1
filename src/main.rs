//! `stretto`: the one command line of Stretto — brick daemons, management
//! commands and the demo.
//!
//! Every command prints errors as one clear line on stderr and exits non-zero.

mod demo;
mod image_cmd;
mod mount_cmd;
mod nbd_cmd;
mod volume_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Stretto: distributed block and file storage.
#[derive(Parser, Debug)]
#[command(name = "stretto", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `stretto=debug`); also RUST_LOG.
    #[arg(long, global = true, env = "STRETTO_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, serve and inspect bricks (one directory + one daemon each).
    #[command(subcommand)]
    Brick(BrickCmd),
    /// Create, change and inspect volumes (any brick of the pool answers: --pool HOST:PORT).
    Volume(volume_cmd::VolumeArgs),
    /// Create, list, resize and delete images (named objects of a volume, e.g. VM disks).
    Image(image_cmd::ImageArgs),
    /// Export a volume's images as NBD block devices (qemu, nbd-client, nbdinfo...).
    Nbd(nbd_cmd::NbdArgs),
    /// Mount a volume as a POSIX file system (FUSE); returns once the mount is live.
    Mount(mount_cmd::MountArgs),
    /// Unmount a mounted volume.
    Umount(mount_cmd::UmountArgs),
    /// Start a brick on loopback in a temporary directory, write and read an object through it, and show how to reach it.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand, Debug)]
enum BrickCmd {
    /// Make DIR a new brick: object directory, RVM segment and log, and a copy of the pool secret.
    Init {
        /// The brick directory (created if missing; must be empty or absent).
        dir: PathBuf,
        /// The pool secret; created with mode 0600 if it does not exist yet.
        #[arg(long, env = "STRETTO_SECRET_FILE")]
        secret_file: PathBuf,
    },
    /// Serve the brick in DIR on HOST:PORT until SIGTERM or Ctrl-C.
    Serve {
        /// The brick directory made by `stretto brick init`.
        dir: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:24007.
        #[arg(long)]
        listen: String,
        /// Transport: the brick always serves TCP (management, TCP clients);
        /// `rdma` also serves RDMA verbs on the same port number and fails if
        /// it cannot, `auto` serves RDMA too when a device is present.
        #[arg(long, default_value = "auto", value_parser = ["tcp", "rdma", "auto"])]
        transport: String,
    },
    /// Show a running brick's counters (operations, bytes, latency).
    Stats {
        /// The brick's HOST:PORT.
        addr: String,
        /// The pool secret.
        #[arg(long, env = "STRETTO_SECRET_FILE")]
        secret_file: PathBuf,
    },
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Brick(BrickCmd::Init { dir, secret_file }) => {
            let info = brick::init(&dir, &secret_file)?;
            println!(
                "brick {} initialised in {} (pool secret {})",
                info.id,
                dir.display(),
                secret_file.display()
            );
            Ok(())
        }
        Command::Brick(BrickCmd::Serve {
            dir,
            listen,
            transport,
        }) => {
            let addr = demo::resolve(&listen)?;
            let kind = transport
                .parse::<transport::TransportKind>()
                .map_err(anyhow::Error::msg)?;
            Ok(runtime()?.block_on(brick::serve_until_signal_via(&dir, addr, kind))?)
        }
        Command::Brick(BrickCmd::Stats { addr, secret_file }) => {
            let addr = demo::resolve(&addr)?;
            let stats = runtime()?.block_on(brick::fetch_stats(addr, &secret_file))?;
            print!("{stats}");
            Ok(())
        }
        Command::Volume(args) => runtime()?.block_on(volume_cmd::run(args)),
        Command::Image(args) => runtime()?.block_on(image_cmd::run(args)),
        Command::Nbd(args) => runtime()?.block_on(nbd_cmd::run(args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Mount(args) => mount_cmd::run(args),
        Command::Umount(args) => mount_cmd::umount(args),
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process can only be killed.
        _ => std::future::pending::<()>().await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes, joined.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                // Some errors already print their source inline; say it once.
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("stretto: {line}");
            ExitCode::FAILURE
        }
    }
}
