//! The FUSE file system and its Venus-like cache manager (attribute, directory
//! and data caching, client modification log, disconnected operation).
//!
//! Not built yet: this crate holds only its purpose until the file-volume issue.
