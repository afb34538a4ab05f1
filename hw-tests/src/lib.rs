//! Tests that need real RDMA (soft-RoCE) or the kernel NBD client, run inside a
//! qemu guest where the host kernel has neither.
//!
//! Not built yet: this crate holds only its purpose until the RDMA issue.
