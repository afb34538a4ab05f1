//! `stretto volume ...`: argument parsing and GlusterFS-like output around
//! [`volume::manage`]. Everything that talks to bricks lives there.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use transport::Secret;
use volume::manage::{self, VolumeStatus};
use volume::{VolumeKind, VolumeSpec, DEFAULT_CHUNK_SIZE};

#[derive(Args, Debug)]
pub struct VolumeArgs {
    /// Any brick of the pool, HOST:PORT (several: comma-separated).
    #[arg(long, env = "STRETTO_POOL", global = true, value_delimiter = ',')]
    pool: Vec<String>,
    /// The pool secret.
    #[arg(long, env = "STRETTO_SECRET_FILE", global = true)]
    secret_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: VolumeCmd,
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume: `create NAME [replica N] BRICK...` (BRICK = HOST:PORT of a running brick).
    Create {
        /// The volume's name.
        name: String,
        /// `[replica N] BRICK...`
        #[arg(required = true, num_args = 1..)]
        layout: Vec<String>,
        /// Chunk size, e.g. 64M, 1G (a power of two, at least 1M).
        #[arg(long)]
        chunk_size: Option<String>,
    },
    /// Start a volume (clients may attach).
    Start { name: String },
    /// Stop a started volume.
    Stop { name: String },
    /// Delete a created or stopped volume.
    Delete { name: String },
    /// Show a volume's description.
    Info { name: String },
    /// Show which bricks of a volume are up: `status [detail] NAME`.
    Status {
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// List the pool's volumes.
    List,
    /// Set an option: quorum-type (auto|fixed|none), quorum-count N, ping-timeout SECONDS, transport tcp.
    Set {
        name: String,
        key: String,
        /// The value (may start with `-`; it is then refused by validation, not by the parser).
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Show an option's value (or `all`).
    Get { name: String, key: String },
}

pub async fn run(args: VolumeArgs) -> Result<()> {
    let secret_file = args
        .secret_file
        .context("no pool secret given (use --secret-file F or STRETTO_SECRET_FILE)")?;
    let secret = Secret::load(&secret_file)
        .with_context(|| format!("cannot read the pool secret {}", secret_file.display()))?;
    let pool = args.pool;
    match args.cmd {
        VolumeCmd::Create {
            name,
            layout,
            chunk_size,
        } => {
            let (kind, bricks) = parse_layout(&layout)?;
            let chunk_size = match chunk_size {
                None => DEFAULT_CHUNK_SIZE,
                Some(s) => manage::parse_size(&s)
                    .with_context(|| format!("bad chunk size {s:?}: expected e.g. 64M or 1G"))?,
            };
            // Without --pool, the new volume's own bricks are the pool.
            let pool = if pool.is_empty() {
                bricks.clone()
            } else {
                pool
            };
            let spec = manage::create(&pool, &secret, &name, kind, &bricks, chunk_size).await?;
            println!(
                "volume create: {name}: success: volume id {}; start the volume to use it",
                spec.id
            );
        }
        VolumeCmd::Start { name } => {
            manage::start(&pool, &secret, &name).await?;
            println!("volume start: {name}: success");
        }
        VolumeCmd::Stop { name } => {
            manage::stop(&pool, &secret, &name).await?;
            println!("volume stop: {name}: success");
        }
        VolumeCmd::Delete { name } => {
            manage::delete(&pool, &secret, &name).await?;
            println!("volume delete: {name}: success");
        }
        VolumeCmd::Info { name } => {
            let spec = manage::info(&pool, &secret, &name).await?;
            print!("{}", format_info(&spec));
        }
        VolumeCmd::Status { args } => {
            let (detail, name) = match args.as_slice() {
                [name] => (false, name),
                [d, name] if d == "detail" => (true, name),
                _ => bail!("usage: stretto volume status [detail] NAME"),
            };
            let st = manage::status(&pool, &secret, name, detail).await?;
            print!("{}", format_status(&st, detail));
        }
        VolumeCmd::List => {
            let names = manage::list(&pool, &secret).await?;
            if names.is_empty() {
                println!("No volumes present in cluster");
            }
            for n in names {
                println!("{n}");
            }
        }
        VolumeCmd::Set { name, key, value } => {
            manage::set(&pool, &secret, &name, &key, &value).await?;
            println!("volume set: {name}: success");
        }
        VolumeCmd::Get { name, key } => {
            let opts = manage::get(&pool, &secret, &name, &key).await?;
            println!("{:<24} Value", "Option");
            println!("{:<24} -----", "------");
            for (k, v) in opts {
                println!("{k:<24} {v}");
            }
        }
    }
    Ok(())
}

/// `[replica N] BRICK...`
fn parse_layout(args: &[String]) -> Result<(VolumeKind, Vec<String>)> {
    match args {
        [kw, n, bricks @ ..] if kw == "replica" => {
            let replica: u32 = n
                .parse()
                .with_context(|| format!("bad replica count {n:?}: expected a number"))?;
            Ok((VolumeKind::Replicate { replica }, bricks.to_vec()))
        }
        [kw, ..] if kw == "replica" => bail!("replica needs a count, e.g. `replica 3`"),
        [kw, ..] if kw == "disperse" || kw == "stripe" => {
            bail!("{kw} volumes are not available in this build (distribute and replica are)")
        }
        bricks => Ok((VolumeKind::Distribute, bricks.to_vec())),
    }
}

fn type_name(spec: &VolumeSpec) -> &'static str {
    match (spec.kind, spec.set_count() > 1) {
        (VolumeKind::Distribute, _) => "Distribute",
        (VolumeKind::Replicate { .. }, false) => "Replicate",
        (VolumeKind::Replicate { .. }, true) => "Distributed-Replicate",
    }
}

/// `volume info`, laid out like GlusterFS's.
pub fn format_info(spec: &VolumeSpec) -> String {
    let mut s = String::new();
    let n = spec.bricks.len();
    let _ = writeln!(s);
    let _ = writeln!(s, "Volume Name: {}", spec.name);
    let _ = writeln!(s, "Type: {}", type_name(spec));
    let _ = writeln!(s, "Volume ID: {}", spec.id);
    let _ = writeln!(s, "Status: {}", spec.state);
    let _ = writeln!(s, "Generation: {}", spec.generation);
    let _ = writeln!(s, "Chunk Size: {}", format_size(spec.chunk_size));
    match spec.kind {
        VolumeKind::Distribute => {
            let _ = writeln!(s, "Number of Bricks: {n}");
        }
        VolumeKind::Replicate { replica } => {
            let _ = writeln!(
                s,
                "Number of Bricks: {} x {replica} = {n}",
                spec.set_count()
            );
        }
    }
    let _ = writeln!(s, "Transport-type: {}", spec.option("transport", "tcp"));
    let _ = writeln!(s, "Bricks:");
    for (i, b) in spec.bricks.iter().enumerate() {
        let _ = writeln!(s, "Brick{}: {b}", i + 1);
    }
    if !spec.options.is_empty() {
        let _ = writeln!(s, "Options Reconfigured:");
        for (k, v) in &spec.options {
            let _ = writeln!(s, "{k}: {v}");
        }
    }
    s
}

fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// `volume status [detail]`.
fn format_status(st: &VolumeStatus, detail: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Status of volume: {}", st.spec.name);
    let _ = writeln!(
        s,
        "{:<32} {:<7} {:<11} Generation",
        "Brick", "Online", "Volume"
    );
    let _ = writeln!(s, "{}", "-".repeat(64));
    for b in &st.bricks {
        let gen = b
            .generation
            .map_or_else(|| "-".to_string(), |g| g.to_string());
        let _ = writeln!(
            s,
            "{:<32} {:<7} {:<11} {gen}",
            b.brick,
            if b.online { "Y" } else { "N" },
            st.spec.state.to_string()
        );
        if let Some(e) = &b.error {
            let _ = writeln!(s, "    error: {e}");
        }
        if detail {
            if let Some(x) = &b.stats {
                let _ = writeln!(
                    s,
                    "    uptime {}s, requests {}, errors {}, reads {} ({} bytes), writes {} ({} bytes), disk {} free of {}",
                    x.uptime_secs,
                    x.requests,
                    x.errors,
                    x.reads,
                    x.read_bytes,
                    x.writes,
                    x.written_bytes,
                    format_size(x.free_bytes),
                    format_size(x.capacity_bytes)
                );
            }
        }
    }
    s
}
