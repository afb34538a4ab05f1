//! The client side of a Stretto volume: layout translators (distribute,
//! replicate, disperse, stripe) stacked over brick connections, with failure
//! detection, quorum, leases and heal marks.
//!
//! Not built yet: this crate holds only its purpose until the "Volumes I"
//! issue. It must never import `nbd` or `fuse-client` (they sit above it).
