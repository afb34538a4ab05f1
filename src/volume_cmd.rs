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
    /// Create a volume: `create NAME [replica N | disperse K+M | stripe S] BRICK...` (BRICK = HOST:PORT of a running brick).
    /// With no type, chunks are distributed over the bricks by hash (no redundancy).
    Create {
        /// The volume's name.
        name: String,
        /// `[replica N | disperse K+M | stripe S] BRICK...`
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
    /// Set an option: quorum-type (auto|fixed|none), quorum-count N, ping-timeout SECONDS,
    /// transport tcp|rdma|rdma,tcp, stripe-unit SIZE (stripe volumes, before the first start; default 128K).
    Set {
        name: String,
        key: String,
        /// The value (may start with `-`; it is then refused by validation, not by the parser).
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Show an option's value (or `all`).
    Get { name: String, key: String },
    /// Heal a volume: `heal NAME` (copy what bricks missed), `heal NAME info`,
    /// `heal NAME info split-brain`, `heal NAME split-brain source-brick BRICK`,
    /// `heal NAME split-brain bigger-version`, `heal NAME full [BRICK]` (copy
    /// every chunk to BRICK, or to every brick the chunks it lacks).
    Heal {
        name: String,
        #[arg(num_args = 0..=3)]
        args: Vec<String>,
    },
    /// Check every chunk at rest against its stored CRC32Cs and repair bad
    /// blocks from another copy: `scrub NAME`; `scrub NAME status` shows
    /// the last run's counts.
    Scrub {
        name: String,
        #[arg(num_args = 0..=1)]
        args: Vec<String>,
    },
    /// Replace brick OLD of volume NAME (it may be down) with NEW (running,
    /// empty, in no volume), then copy the set's data to NEW.
    ReplaceBrick {
        name: String,
        old: String,
        new: String,
    },
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
        VolumeCmd::Heal { name, args } => {
            let spec = manage::fetch(&pool, &secret, &name).await?;
            heal(&spec, secret, &args).await?;
        }
        VolumeCmd::Scrub { name, args } => {
            let spec = manage::fetch(&pool, &secret, &name).await?;
            match args.as_slice() {
                [] => scrub(&spec, secret).await?,
                [s] if s == "status" => scrub_status(&spec, secret).await?,
                _ => bail!("usage: stretto volume scrub NAME [status]"),
            }
        }
        VolumeCmd::ReplaceBrick { name, old, new } => {
            replace_brick(&pool, secret, &name, &old, &new).await?;
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

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn heal(spec: &VolumeSpec, secret: Secret, args: &[String]) -> Result<()> {
    use volume::heal::{self, SplitBrainPolicy};
    let name = &spec.name;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let policy = match words.as_slice() {
        [] => None,
        ["info"] => {
            let info = heal::heal_info(spec, secret).await?;
            for b in &info.bricks {
                println!(
                    "Brick {} (set {}): {}",
                    b.brick,
                    b.set,
                    if b.up { "online" } else { "offline" }
                );
                println!(
                    "Number of entries: {} regions, {} pending",
                    b.pending_regions,
                    human(b.pending_bytes)
                );
            }
            println!("Regions in split-brain: {}", info.split_brain.len());
            for r in &info.records {
                match r.backlog {
                    Some(n) => println!(
                        "Records on {}: head {}, backlog {n} commits{}",
                        r.brick,
                        r.head_seq.unwrap_or(0),
                        if r.syncing { " (sync under way)" } else { "" }
                    ),
                    None => println!("Records on {}: offline", r.brick),
                }
            }
            if info.incomplete {
                println!("(some brick could not be asked: the picture may be incomplete)");
            }
            return Ok(());
        }
        ["info", "split-brain"] => {
            let info = heal::heal_info(spec, secret).await?;
            if info.split_brain.is_empty() {
                println!("No regions in split-brain");
            }
            for sb in &info.split_brain {
                println!(
                    "set {} object {}.{}.{} chunk {} region {}: bricks {}",
                    sb.set,
                    sb.object.volume,
                    sb.object.vnode,
                    sb.object.unique,
                    sb.object.chunk,
                    sb.region,
                    sb.bricks.join(" <-> ")
                );
            }
            return Ok(());
        }
        ["split-brain", "source-brick", brick] => {
            if !spec.bricks.iter().any(|b| b == brick) {
                bail!("{brick} is not a brick of volume {name}");
            }
            Some(SplitBrainPolicy::SourceBrick(brick.to_string()))
        }
        ["split-brain", "bigger-version"] => Some(SplitBrainPolicy::BiggerVersion),
        ["full"] => return full_heal(spec, secret, &heal::FullHealTarget::Missing, "heal").await,
        ["full", brick] => {
            if !spec.bricks.iter().any(|b| b == brick) {
                bail!("{brick} is not a brick of volume {name}");
            }
            let t = heal::FullHealTarget::Brick(brick.to_string());
            return full_heal(spec, secret, &t, "heal").await;
        }
        _ => bail!(
            "usage: stretto volume heal NAME [info | info split-brain | split-brain source-brick BRICK | split-brain bigger-version | full [BRICK]]"
        ),
    };
    let report = match policy {
        Some(p) => heal::resolve_split_brain(spec, secret, p).await?,
        None => {
            let mut regions = 0u64;
            let mut bytes = 0u64;
            let r = heal::heal_volume(spec, secret, |p| {
                regions += 1;
                bytes += p.bytes;
                if regions % 64 == 0 {
                    eprintln!(
                        "heal {name}: {regions} regions, {} copied so far",
                        human(bytes)
                    );
                }
            })
            .await?;
            r
        }
    };
    println!(
        "volume heal: {name}: {} regions healed, {} copied, {} skipped, {} in split-brain",
        report.regions_healed,
        human(report.bytes_copied),
        report.regions_skipped,
        report.split_brain.len()
    );
    if let Some(r) = &report.records {
        println!(
            "volume heal: {name}: records at commit {}, {} bricks brought in step{}",
            r.head.seq,
            r.synced.len(),
            if r.down.is_empty() {
                String::new()
            } else {
                format!(", {} down", r.down.len())
            }
        );
    }
    if let Some(e) = &report.records_error {
        println!("volume heal: {name}: records not healed: {e}");
    }
    if !report.split_brain.is_empty() {
        println!("see: stretto volume heal {name} info split-brain");
    }
    Ok(())
}

/// The counts of a scrub report, one per line (`scrub` and `scrub status`).
fn format_scrub(r: &volume::scrub::ScrubReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "chunks checked: {}", r.chunks);
    let _ = writeln!(s, "bytes checked: {} ({})", r.bytes, human(r.bytes));
    let _ = writeln!(s, "corrupt blocks: {}", r.corrupt);
    let _ = writeln!(s, "repaired: {}", r.repaired);
    let _ = writeln!(s, "unrepairable: {}", r.unrepairable);
    for b in &r.bricks_skipped {
        let _ = writeln!(
            s,
            "brick {b}: down or could not list its chunks, not checked"
        );
    }
    s
}

/// `volume scrub NAME`: progress on stdout per brick, then the counts.
async fn scrub(spec: &VolumeSpec, secret: Secret) -> Result<()> {
    let name = spec.name.clone();
    let mut last_brick = String::new();
    let r = volume::scrub::scrub(spec, secret, |p| {
        // One line per brick started and per 100 chunks: enough to see it move.
        if p.brick != last_brick || p.done % 100 == 0 || p.done == p.total {
            println!(
                "scrub {name}: brick {}: {}/{} chunks, {} corrupt so far",
                p.brick, p.done, p.total, p.report.corrupt
            );
            last_brick = p.brick.clone();
        }
    })
    .await
    .with_context(|| format!("scrub of volume {name} stopped"))?;
    println!("volume scrub: {name}: done");
    print!("{}", format_scrub(&r));
    if r.unrepairable > 0 {
        bail!(
            "volume {name}: {} corrupt blocks could not be repaired",
            r.unrepairable
        );
    }
    Ok(())
}

/// Runs a full heal with progress lines on stderr and a summary on stdout;
/// fails (exit 1) if anything was left uncopied, so scripts can retry.
async fn full_heal(
    spec: &VolumeSpec,
    secret: Secret,
    target: &volume::heal::FullHealTarget,
    what: &str,
) -> Result<()> {
    use volume::heal::{self, FullHealTarget};
    let name = &spec.name;
    let redo = match target {
        FullHealTarget::Brick(b) => format!("stretto volume heal {name} full {b}"),
        FullHealTarget::Missing => format!("stretto volume heal {name} full"),
    };
    let r = heal::full_heal(spec, secret, target, |p| {
        eprintln!(
            "{what} {name}: set {}: chunk {}/{} ({}.{}.{} chunk {}) copied from {} to {} ({})",
            p.set,
            p.done,
            p.total,
            p.object.volume,
            p.object.vnode,
            p.object.unique,
            p.object.chunk,
            p.source,
            p.target,
            human(p.bytes)
        );
    })
    .await
    .with_context(|| format!("full heal of volume {name} stopped; run `{redo}` to finish it"))?;
    println!(
        "volume {what}: {name}: full heal: {} chunks copied, {} written, {} already present, {} objects busy",
        r.chunks_copied,
        human(r.bytes_copied),
        r.chunks_present,
        r.objects_busy.len()
    );
    for f in &r.objects_busy {
        println!("busy (a writer holds it; run the full heal again later): object {f}");
    }
    for b in &r.targets_down {
        println!("down (nothing copied to it): {b}");
    }
    if r.incomplete {
        println!("some brick was down or could not list its chunks: run the full heal again when it is up");
    }
    if !r.objects_busy.is_empty() || !r.targets_down.is_empty() || r.incomplete {
        bail!("volume {name}: full heal incomplete; run `{redo}` again later");
    }
    Ok(())
}

async fn replace_brick(
    pool: &[String],
    secret: Secret,
    name: &str,
    old: &str,
    new: &str,
) -> Result<()> {
    let r = manage::replace_brick(pool, &secret, name, old, new).await?;
    println!(
        "volume replace-brick: {name}: {old} replaced by {new} in set {} (generation {})",
        r.set, r.spec.generation
    );
    if !r.old_reachable {
        println!(
            "note: {old} was unreachable; if it comes back it holds an older description and is no longer part of {name}"
        );
    }
    let t = volume::heal::FullHealTarget::Brick(new.to_string());
    full_heal(&r.spec, secret, &t, "replace-brick").await
}

/// `[replica N | disperse K+M] BRICK...`
fn parse_layout(args: &[String]) -> Result<(VolumeKind, Vec<String>)> {
    match args {
        [kw, n, bricks @ ..] if kw == "replica" => {
            let replica: u32 = n
                .parse()
                .with_context(|| format!("bad replica count {n:?}: expected a number"))?;
            Ok((VolumeKind::Replicate { replica }, bricks.to_vec()))
        }
        [kw, ..] if kw == "replica" => bail!("replica needs a count, e.g. `replica 3`"),
        [kw, n, bricks @ ..] if kw == "stripe" => {
            let count: u32 = n
                .parse()
                .with_context(|| format!("bad stripe count {n:?}: expected a number"))?;
            Ok((VolumeKind::Stripe { count }, bricks.to_vec()))
        }
        [kw, ..] if kw == "stripe" => bail!("stripe needs a count, e.g. `stripe 4`"),
        [kw, g, bricks @ ..] if kw == "disperse" => {
            let bad = || {
                anyhow::anyhow!("bad disperse geometry {g:?}: expected K+M, e.g. `disperse 4+2`")
            };
            let (k, m) = g.split_once('+').ok_or_else(bad)?;
            let data: u32 = k.parse().map_err(|_| bad())?;
            let redundancy: u32 = m.parse().map_err(|_| bad())?;
            Ok((VolumeKind::Disperse { data, redundancy }, bricks.to_vec()))
        }
        [kw, ..] if kw == "disperse" => bail!("disperse needs K+M, e.g. `disperse 4+2`"),
        bricks => Ok((VolumeKind::Distribute, bricks.to_vec())),
    }
}

fn type_name(spec: &VolumeSpec) -> &'static str {
    match (spec.kind, spec.set_count() > 1) {
        (VolumeKind::Distribute, _) => "Distribute",
        (VolumeKind::Replicate { .. }, false) => "Replicate",
        (VolumeKind::Replicate { .. }, true) => "Distributed-Replicate",
        (VolumeKind::Stripe { .. }, false) => "Stripe",
        (VolumeKind::Stripe { .. }, true) => "Distributed-Stripe",
        (VolumeKind::Disperse { .. }, false) => "Disperse",
        (VolumeKind::Disperse { .. }, true) => "Distributed-Disperse",
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
        VolumeKind::Replicate { replica: k } | VolumeKind::Stripe { count: k } => {
            let _ = writeln!(s, "Number of Bricks: {} x {k} = {n}", spec.set_count());
        }
        VolumeKind::Disperse { data, redundancy } => {
            let _ = writeln!(
                s,
                "Number of Bricks: {} x ({data} + {redundancy}) = {n}",
                spec.set_count()
            );
        }
    }
    if let VolumeKind::Stripe { .. } = spec.kind {
        let unit = volume::client::stripe_unit(spec).unwrap_or(volume::DEFAULT_STRIPE_UNIT);
        let _ = writeln!(s, "Stripe Unit: {}", format_size(unit));
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
    if detail {
        let space: Vec<_> = st
            .bricks
            .iter()
            .map(|b| b.stats.map(|x| (x.capacity_bytes, x.free_bytes)))
            .collect();
        let _ = match volume::capacity::of_bricks(&st.spec, &space) {
            Ok(c) => writeln!(
                s,
                "Capacity: {} free of {} (by the volume type, from the bricks' disks)",
                format_size(c.free_bytes),
                format_size(c.total_bytes)
            ),
            Err(e) => writeln!(s, "Capacity: unknown ({e})"),
        };
    }
    s
}

/// `volume scrub NAME status`: the last run's counts, as the bricks keep
/// them.
async fn scrub_status(spec: &VolumeSpec, secret: Secret) -> Result<()> {
    let name = spec.name.clone();
    match volume::scrub::scrub_status(spec, secret).await? {
        None => println!("volume scrub status: {name}: never scrubbed"),
        Some(c) => {
            println!(
                "volume scrub status: {name}: last run started {} finished {} (Unix seconds)",
                c.started, c.finished
            );
            let r = volume::scrub::ScrubReport {
                chunks: c.chunks,
                bytes: c.bytes,
                corrupt: c.corrupt,
                repaired: c.repaired,
                unrepairable: c.unrepairable,
                ..Default::default()
            };
            print!("{}", format_scrub(&r));
        }
    }
    Ok(())
}
