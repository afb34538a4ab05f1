//! `stretto nbd serve`: exports images of a volume over NBD.
//!
//! The server holds each exported image's write lease for as long as it runs
//! (one writer per object), so flush and FUA hold across all connections to
//! an export. SIGTERM or Ctrl-C: stop accepting, finish requests in flight,
//! flush every export, release the leases, exit.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nbd::volume_export::VolumeExport;
use nbd::ExportSet;
use transport::{ClientOptions, Secret};
use volume::manage;
use volume::{Client, Fid, VolumeState};

#[derive(Args, Debug)]
pub struct NbdArgs {
    #[command(subcommand)]
    cmd: NbdCmd,
}

#[derive(Subcommand, Debug)]
enum NbdCmd {
    /// Serve a volume's images as NBD exports (export name = image name) until SIGTERM or Ctrl-C.
    Serve {
        /// The volume whose images to export.
        #[arg(long, env = "STRETTO_VOLUME")]
        volume: String,
        /// Address to listen on (the NBD port is 10809).
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: String,
        /// Transport to the bricks: tcp, rdma or auto (default: the volume's
        /// `transport` option).
        #[arg(long, value_parser = ["tcp", "rdma", "auto"])]
        transport: Option<String>,
        /// Export only these images (repeat the option); default: every image of the volume.
        #[arg(long = "export")]
        exports: Vec<String>,
        /// Any brick of the pool, HOST:PORT (several: comma-separated).
        #[arg(long, env = "STRETTO_POOL", value_delimiter = ',', required = true)]
        pool: Vec<String>,
        /// The pool secret.
        #[arg(long, env = "STRETTO_SECRET_FILE")]
        secret_file: PathBuf,
    },
}

/// Takes the image's write lease. If another writer holds it (a server that
/// died holds it until it expires), waits for it, saying so once, for at
/// most two lease lives.
async fn open_writer(client: &Client, fid: Fid, name: &str) -> Result<volume::Object> {
    let lease = volume::client::DEFAULT_LEASE;
    let deadline = tokio::time::Instant::now() + 2 * lease;
    let mut said = false;
    loop {
        match client.open_writer(fid, lease).await {
            Ok(o) => return Ok(o),
            Err(volume::VolumeError::LeaseBusy { detail, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    tracing::warn!(image = name, %detail, "image is leased by another writer; waiting for the lease to be released or to expire");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot take the write lease of image {name}"))
            }
        }
    }
}

pub async fn run(args: NbdArgs) -> Result<()> {
    match args.cmd {
        NbdCmd::Serve {
            volume,
            listen,
            exports,
            pool,
            secret_file,
            transport,
        } => {
            if let Some(t) = transport {
                let kind = t
                    .parse::<transport::TransportKind>()
                    .map_err(anyhow::Error::msg)?;
                let kind = transport::rdma::resolve_client_transport(kind)?;
                transport::rdma::set_client_transport(kind);
            }
            serve(&volume, &listen, &exports, &pool, &secret_file).await
        }
    }
}

async fn serve(
    volume: &str,
    listen: &str,
    wanted: &[String],
    pool: &[String],
    secret_file: &std::path::Path,
) -> Result<()> {
    let secret = Secret::load(secret_file)
        .with_context(|| format!("cannot read the pool secret {}", secret_file.display()))?;
    let addr = crate::demo::resolve(listen)?;
    let (spec, table) = manage::image_list(pool, &secret, volume).await?;
    if spec.state != VolumeState::Started {
        bail!(
            "volume {volume} is {}: start it first (stretto volume start {volume})",
            spec.state
        );
    }
    let mut chosen = Vec::new();
    if wanted.is_empty() {
        chosen.extend(table.images.iter().map(|(n, e)| (n.clone(), *e)));
    } else {
        for name in wanted {
            let e = table
                .images
                .get(name)
                .with_context(|| format!("volume {volume} has no image named {name}"))?;
            chosen.push((name.clone(), *e));
        }
    }
    if chosen.is_empty() {
        bail!("volume {volume} has no images to export (stretto image create NAME SIZE --volume {volume})");
    }
    let client = Client::connect_spec(spec.clone(), secret, ClientOptions::default())
        .await
        .with_context(|| format!("cannot attach volume {volume}"))?;
    let mut set = ExportSet::new();
    let mut handles = Vec::new();
    for (name, e) in &chosen {
        let fid = Fid {
            volume: spec.id,
            vnode: e.vnode,
            unique: e.unique,
        };
        let object = open_writer(&client, fid, name).await?;
        let description = format!("image {name} of volume {volume} ({} bytes)", e.size);
        let export = Arc::new(VolumeExport::new(object, e.size));
        set.add(name, &description, export.clone())
            .with_context(|| format!("cannot export image {name}"))?;
        handles.push((name.clone(), export));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(volume, listen = %local, exports = chosen.len(), "nbd serving");
    println!("listening on {local}");
    for (name, e) in &chosen {
        println!("export {name}: {} bytes, nbd://{local}/{name}", e.size);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::wait_for_stop_signal().await;
        tracing::info!("stop requested: finishing requests in flight and flushing");
        let _ = stop_tx.send(true);
    });
    nbd::serve(listener, Arc::new(set), stop_rx)
        .await
        .context("nbd server failed")?;
    // The server has flushed every export and dropped its references: flush
    // once more and release each lease cleanly, so the next writer need not
    // wait for it to expire.
    for (name, export) in handles {
        match Arc::try_unwrap(export) {
            Ok(export) => {
                if let Err(e) = export.close().await {
                    tracing::warn!(image = %name, error = %e, "could not release the image's lease");
                }
            }
            Err(_) => {
                tracing::warn!(image = %name, "export still in use at exit; its lease will expire")
            }
        }
    }
    client.close().await;
    tracing::info!("nbd server stopped cleanly");
    Ok(())
}
