//! Serves test exports on 127.0.0.1 for the real-client tests and by hand.
//!
//! ```text
//! nbd-test-server [--listen 127.0.0.1:0] [--memory NAME:SIZE]... [--file NAME:PATH[:SIZE]]...
//! ```
//! SIZE takes K/M/G suffixes; a file export with SIZE is created (truncated).
//! Prints `listening on ADDR` once ready; SIGTERM or SIGINT shuts it down
//! cleanly (in-flight requests finish, exports are flushed).

use std::sync::Arc;

use nbd::{ExportSet, FileExport, MemoryExport};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn build() -> Result<(String, ExportSet), String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut set = ExportSet::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = val()?,
            "--memory" => {
                let v = val()?;
                let (name, size) = v.split_once(':').ok_or("--memory NAME:SIZE")?;
                let size = parse_size(size)?;
                set.add(
                    name,
                    format!("memory export of {size} bytes"),
                    Arc::new(MemoryExport::new(size)),
                )
                .map_err(|e| e.to_string())?;
            }
            "--file" => {
                let v = val()?;
                let mut parts = v.splitn(3, ':');
                let name = parts.next().unwrap_or_default();
                let path = parts.next().ok_or("--file NAME:PATH[:SIZE]")?;
                let export = match parts.next() {
                    Some(size) => FileExport::create(path, parse_size(size)?),
                    None => FileExport::open(path),
                }
                .map_err(|e| format!("{path}: {e}"))?;
                set.add(name, format!("file {path}"), Arc::new(export))
                    .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if set.is_empty() {
        set.add(
            "mem",
            "memory export of 64 MiB",
            Arc::new(MemoryExport::new(64 << 20)),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok((listen, set))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let (listen, set) = match build() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("nbd-test-server: {e}");
            std::process::exit(1);
        }
    };
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nbd-test-server: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    println!("listening on {addr}");
    if let Err(e) = nbd::serve(listener, Arc::new(set), rx).await {
        eprintln!("nbd-test-server: {e}");
        std::process::exit(1);
    }
}
