//! The hardware lane: tests that need real RDMA (soft-RoCE) or the kernel NBD
//! client, run inside a qemu guest where the host kernel has neither.
//!
//! The lane is a script, `hw-tests/lane.sh` (host side: kernel, initramfs,
//! qemu) with `hw-tests/guest.sh` (guest side: the checks); the Rust tests it
//! runs are the transport's (`transport/tests/rdma_hw.rs`, built with the
//! `rdma` feature) and the `stretto` binary itself. See `docs/rdma.md`.
