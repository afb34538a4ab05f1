//! The NBD server: exports an object of a volume (an image) as a block device.
//!
//! Not built yet: this crate holds only its purpose until the NBD export issue.
