//! The FUSE file system and its Venus-like cache manager.
//!
//! - [`inode`]: record formats and keys of the namespace.
//! - [`cache`]: whole files on local disk, per inode version, LRU within a size limit.
//! - [`cml`]: the client modification log; every namespace change is an entry.
//! - [`namespace`]: directories and inodes over the volume's record store
//!   (guarded all-or-nothing commits, planned again on conflict).
//! - [`fs`]: the FUSE adapter (fuser), data through volume objects.
//! - [`mount`]: mounting, the callback task that breaks stale caches.
//! - [`snapshot`]: cached attributes and names kept across an unmount,
//!   checked against the change feed at the next mount.
//!
//! It must never import `brick`: it reaches bricks only through `volume`.
//! From `storage` it uses only RVM, for the client's own log.

pub mod cache;
pub mod cml;
pub mod fs;
pub mod inode;
pub mod mount;
pub mod namespace;
pub mod snapshot;

pub use cml::{Cml, CmlEntry};
pub use inode::{Dirent, Inode, Kind, Timespec};
pub use namespace::{Namespace, NsError};
