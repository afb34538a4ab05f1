//! The client side of a Stretto volume: layout translators (distribute,
//! replicate; later disperse and stripe) stacked over brick connections, with
//! failure detection, quorum, leases and heal marks; and the management of
//! volume descriptions (volfiles) across a pool's bricks.
//!
//! - [`spec`]: the volume description as a value.
//! - [`volfile`]: its byte encoding and how it is stored on bricks.
//! - [`manage`]: `stretto volume create | start | stop | delete | info | status | set | get`.
//! - [`xlator`]: the translator interface ("an object at byte offsets"),
//!   chunking and placement.
//! - [`replicate`], [`distribute`], [`stripe`]: the layout translators.
//! - [`scrub`]: re-check data at rest against its CRCs and repair it.
//! - [`capacity`]: the volume's usable size from its bricks' disks.
//! - [`client`]: connect to a volume, get object handles.
//! - [`heal`]: self-heal from pending marks, heal info, split-brain.
//! - [`records`]: versioned records with all-or-nothing commits and a change
//!   feed, the store a file volume's namespace lives in.
//! - [`records_replicated`]: that store on the bricks of the volume's first
//!   set, replicated with quorum in one order ([`Client::records`]).
//!
//! It must never import `nbd` or `fuse-client` (they sit above it), nor
//! `brick` or `storage` (a client reaches bricks only through `transport`).

pub mod capacity;
pub mod client;
pub mod disperse;
pub mod distribute;
pub mod ec;
pub mod error;
pub mod heal;
pub mod link;
pub mod manage;
pub mod records;
pub mod records_replicated;
pub mod replicate;
pub mod scrub;
pub mod spec;
pub mod stripe;
pub mod volfile;
pub mod xlator;

pub use client::{Client, Object};
pub use disperse::Disperse;
pub use distribute::Distribute;
pub use error::{Result, VolumeError};
pub use replicate::{Quorum, Replicate};
pub use spec::{VolumeKind, VolumeSpec, VolumeState, DEFAULT_CHUNK_SIZE, DEFAULT_STRIPE_UNIT};
pub use stripe::Stripe;
pub use xlator::{Fid, LeaseAction, LeaseOutcome, Translator};
