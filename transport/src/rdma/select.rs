//! Choosing the transport: `--transport tcp|rdma|auto` and the volume
//! option `transport` (`tcp`, `rdma`, `rdma,tcp`).
//!
//! - `tcp`: TCP only.
//! - `rdma`: RDMA only; without a device, or in a binary built without the
//!   `rdma` feature, fails with an error naming what is missing.
//! - `auto`: RDMA when a device is present and the peer accepts an RDMA
//!   connection, else TCP, with one log line saying why.

use super::conn::RdmaClient;
use super::verbs::Fabric;
use crate::auth::Secret;
use crate::channel::Channel;
use crate::error::TransportError;
use crate::tcp::{ClientOptions, TcpClient};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use thiserror::Error;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    #[default]
    Tcp,
    Rdma,
    Auto,
}

impl FromStr for TransportKind {
    type Err = String;
    /// Accepts `tcp`, `rdma`, `auto`, and the volume option's lists
    /// `rdma,tcp` / `tcp,rdma` (both meaning: RDMA if possible, else TCP).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        match parts.as_slice() {
            ["tcp"] => Ok(TransportKind::Tcp),
            ["rdma"] => Ok(TransportKind::Rdma),
            ["auto"] | ["rdma", "tcp"] | ["tcp", "rdma"] => Ok(TransportKind::Auto),
            _ => Err(format!(
                "unknown transport `{s}` (expected tcp, rdma, auto, or rdma,tcp)"
            )),
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
            TransportKind::Auto => "auto",
        })
    }
}

static CLIENT_TRANSPORT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the transport this process's clients use, overriding volume
/// options (what `--transport` on a client command does).
pub fn set_client_transport(kind: TransportKind) {
    let v = match kind {
        TransportKind::Tcp => 1,
        TransportKind::Rdma => 2,
        TransportKind::Auto => 3,
    };
    CLIENT_TRANSPORT.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The transport set by [`set_client_transport`], if any.
pub fn client_transport() -> Option<TransportKind> {
    match CLIENT_TRANSPORT.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(TransportKind::Tcp),
        2 => Some(TransportKind::Rdma),
        3 => Some(TransportKind::Auto),
        _ => None,
    }
}

/// Checks a client transport choice against this machine once, up front:
/// `rdma` without RDMA is an error naming what is missing; `auto` without
/// it becomes `tcp` with one log line.
pub fn resolve_client_transport(kind: TransportKind) -> Result<TransportKind, RdmaUnavailable> {
    match kind {
        TransportKind::Tcp => Ok(TransportKind::Tcp),
        TransportKind::Rdma => rdma_fabric().map(|_| TransportKind::Rdma),
        TransportKind::Auto => match rdma_fabric() {
            Ok(_) => Ok(TransportKind::Auto),
            Err(e) => {
                tracing::warn!("transport auto: using TCP: {e}");
                Ok(TransportKind::Tcp)
            }
        },
    }
}

/// Why RDMA cannot be used here.
#[derive(Debug, Error)]
pub enum RdmaUnavailable {
    #[error("RDMA transport unavailable: this stretto binary was built without RDMA support (rebuild with `cargo build --features rdma`, which needs cmake, clang, libibverbs-dev and librdmacm-dev)")]
    NotBuilt,
    #[error("RDMA transport unavailable: no RDMA device found (libibverbs lists none; for soft-RoCE: `modprobe rdma_rxe` and `rdma link add rxe0 type rxe netdev IFACE`)")]
    NoDevice,
    #[error("RDMA transport unavailable: this kernel offers no RDMA verbs ({path} is missing; libibverbs could not list devices: {reason}); load an RDMA driver and ib_uverbs, e.g. for soft-RoCE `modprobe rdma_rxe ib_uverbs rdma_ucm` and `rdma link add rxe0 type rxe netdev IFACE`")]
    NoKernelSupport { path: &'static str, reason: String },
    #[error("RDMA transport unavailable: {reason}")]
    Library { reason: String },
}

/// The RDMA fabric of this machine: the first verbs device, through
/// rdma_cm.
pub fn rdma_fabric() -> Result<Arc<dyn Fabric>, RdmaUnavailable> {
    #[cfg(feature = "rdma")]
    {
        super::hw::HwFabric::open().map(|f| Arc::new(f) as Arc<dyn Fabric>)
    }
    #[cfg(not(feature = "rdma"))]
    {
        Err(RdmaUnavailable::NotBuilt)
    }
}

/// Connects a client channel to `addr` by `kind`. `fabric` overrides the
/// machine's RDMA fabric (tests pass the simulation).
pub async fn connect_channel(
    kind: TransportKind,
    addr: &str,
    secret: Secret,
    opts: ClientOptions,
    fabric: Option<Arc<dyn Fabric>>,
) -> Result<Arc<dyn Channel>, TransportError> {
    let unavailable = |e: RdmaUnavailable| TransportError::Connect {
        addr: addr.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, e.to_string()),
    };
    match kind {
        TransportKind::Tcp => Ok(Arc::new(TcpClient::connect(addr, secret, opts).await?)),
        TransportKind::Rdma => {
            let fabric = match fabric {
                Some(f) => f,
                None => rdma_fabric().map_err(unavailable)?,
            };
            Ok(Arc::new(
                RdmaClient::connect(fabric, addr, secret, opts).await?,
            ))
        }
        TransportKind::Auto => {
            let fabric = match fabric.map(Ok).unwrap_or_else(rdma_fabric) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("transport auto: using TCP to {addr}: {e}");
                    return Ok(Arc::new(TcpClient::connect(addr, secret, opts).await?));
                }
            };
            match RdmaClient::connect(fabric, addr, secret.clone(), opts.clone()).await {
                Ok(c) => Ok(Arc::new(c)),
                Err(e @ TransportError::Auth { .. }) => Err(e),
                Err(e) => {
                    tracing::warn!(
                        "transport auto: using TCP to {addr}: the brick does not offer RDMA ({e})"
                    );
                    Ok(Arc::new(TcpClient::connect(addr, secret, opts).await?))
                }
            }
        }
    }
}
