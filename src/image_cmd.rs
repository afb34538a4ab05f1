//! `stretto image ...`: named objects of a volume (VM disks), around the
//! image functions of [`volume::manage`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use transport::Secret;
use volume::manage;

#[derive(Args, Debug)]
pub struct ImageArgs {
    /// Any brick of the pool, HOST:PORT (several: comma-separated).
    #[arg(long, env = "STRETTO_POOL", global = true, value_delimiter = ',')]
    pool: Vec<String>,
    /// The pool secret.
    #[arg(long, env = "STRETTO_SECRET_FILE", global = true)]
    secret_file: Option<PathBuf>,
    /// The volume that holds the images.
    #[arg(long, env = "STRETTO_VOLUME", global = true)]
    volume: Option<String>,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Create an empty (sparse) image of SIZE bytes (e.g. 10G, 512M; a multiple of 512).
    Create { name: String, size: String },
    /// List the volume's images with their sizes.
    List,
    /// Grow an image to SIZE (new bytes read as zeros; shrinking is refused).
    Resize { name: String, size: String },
    /// Delete an image and its data.
    Delete { name: String },
}

fn size_arg(s: &str) -> Result<u64> {
    manage::parse_size(s)
        .with_context(|| format!("bad size {s:?}: expected e.g. 512M, 10G or a byte count"))
}

pub async fn run(args: ImageArgs) -> Result<()> {
    let secret_file = args
        .secret_file
        .context("no pool secret given (use --secret-file F or STRETTO_SECRET_FILE)")?;
    let secret = Secret::load(&secret_file)
        .with_context(|| format!("cannot read the pool secret {}", secret_file.display()))?;
    let volume = args
        .volume
        .context("no volume given (use --volume VOL or STRETTO_VOLUME)")?;
    if args.pool.is_empty() {
        anyhow::bail!("no pool brick given (use --pool HOST:PORT or STRETTO_POOL)");
    }
    let pool = args.pool;
    match args.cmd {
        ImageCmd::Create { name, size } => {
            let size = size_arg(&size)?;
            let (spec, e) = manage::image_create(&pool, &secret, &volume, &name, size).await?;
            println!(
                "image create: {name}: success: {size} bytes in volume {volume} (object {}.{}.{})",
                spec.id, e.vnode, e.unique
            );
        }
        ImageCmd::List => {
            let (spec, t) = manage::image_list(&pool, &secret, &volume).await?;
            if t.images.is_empty() {
                println!("No images in volume {volume}");
            } else {
                println!("{:<32} {:>20}  object", "Image", "Size (bytes)");
                for (name, e) in &t.images {
                    println!(
                        "{name:<32} {:>20}  {}.{}.{}",
                        e.size, spec.id, e.vnode, e.unique
                    );
                }
            }
        }
        ImageCmd::Resize { name, size } => {
            let size = size_arg(&size)?;
            manage::image_resize(&pool, &secret, &volume, &name, size).await?;
            println!("image resize: {name}: success: {size} bytes");
        }
        ImageCmd::Delete { name } => {
            let unreachable = manage::image_delete(&pool, &secret, &volume, &name).await?;
            if unreachable > 0 {
                println!(
                    "image delete: {name}: success; {unreachable} brick(s) were unreachable and keep orphan chunks"
                );
            } else {
                println!("image delete: {name}: success");
            }
        }
    }
    Ok(())
}
