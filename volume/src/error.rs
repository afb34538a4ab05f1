//! The volume client's errors: each says which volume, and where it can,
//! which brick, object and offset.

use thiserror::Error;
use transport::{ErrorReply, TransportError};

use crate::xlator::Fid;

/// What went wrong with a volume operation.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// Too few bricks of a replica set are up (or took the change).
    #[error("volume {volume}: {op} needs {need} of {set} bricks, {up} up")]
    NoQuorum {
        volume: String,
        op: &'static str,
        need: usize,
        set: usize,
        up: usize,
    },
    /// A brick could not be reached or did not answer in time.
    #[error("volume {volume}: {op} of {fid} at {offset} on brick {brick}: {source}")]
    Transport {
        volume: String,
        op: &'static str,
        brick: String,
        fid: Fid,
        offset: u64,
        #[source]
        source: Box<TransportError>,
    },
    /// A brick answered with an error.
    #[error("volume {volume}: {op} of {fid} at {offset} on brick {brick}: {reply}")]
    Brick {
        volume: String,
        op: &'static str,
        brick: String,
        fid: Fid,
        offset: u64,
        reply: ErrorReply,
    },
    /// This client's lease on the object is gone: a newer writer holds it
    /// and the bricks refuse our epoch.
    #[error("volume {volume}: {fid}: fenced, the lease now belongs to a newer writer ({detail})")]
    Fenced {
        volume: String,
        fid: Fid,
        detail: String,
    },
    /// Another writer holds the object's lease.
    #[error("volume {volume}: {fid} is leased by another writer ({detail})")]
    LeaseBusy {
        volume: String,
        fid: Fid,
        detail: String,
    },
    /// Every brick that is up is marked stale for the range (a read, or a
    /// change that would otherwise be acknowledged on stale copies only).
    #[error(
        "volume {volume}: no brick that is up has a good copy of {fid} chunk {chunk} at {offset}"
    )]
    NoGoodCopy {
        volume: String,
        fid: Fid,
        chunk: u64,
        offset: u64,
    },
    /// Every copy that could be read failed its CRC32C check (at rest on
    /// the brick, or on return), so no good data was found.
    #[error("volume {volume}: {fid} chunk {chunk} at {offset}: corrupt on brick {brick} ({detail}) and no other good copy")]
    Corrupt {
        volume: String,
        brick: String,
        fid: Fid,
        chunk: u64,
        offset: u64,
        detail: String,
    },
    /// A chunk whose only copy is on one brick (distribute, stripe) cannot
    /// be reached: that brick is down or failed the call. Chunks on other
    /// bricks are not affected.
    #[error("volume {volume}: {op} of {fid} chunk {chunk} at {offset}: its only brick {brick} is unavailable ({reason}); chunks on other bricks are not affected")]
    Unavailable {
        volume: String,
        op: &'static str,
        brick: String,
        fid: Fid,
        chunk: u64,
        offset: u64,
        reason: String,
    },
    /// A brick answered with a reply of the wrong kind.
    #[error("volume {volume}: {op} on brick {brick}: unexpected reply {reply}")]
    Protocol {
        volume: String,
        op: &'static str,
        brick: String,
        reply: String,
    },
    /// The volume description cannot be used.
    #[error("volume {volume}: {reason}")]
    Spec { volume: String, reason: String },
    /// The namespace records could not be read, committed or healed.
    #[error("volume {volume}: {op}: {detail}")]
    Records {
        volume: String,
        op: &'static str,
        detail: String,
    },
    /// The erasure code refused (a dispersed set).
    #[error("volume {volume}: {source}")]
    Codec {
        volume: String,
        #[source]
        source: crate::ec::EcError,
    },
    /// A split-brain policy names a brick that is not in the set.
    #[error("volume {volume}: {reason}")]
    Heal { volume: String, reason: String },
}

/// Result of volume operations.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
