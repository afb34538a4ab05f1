#!/usr/bin/env bash
# Runs every Stretto test on a fresh Debian 12 machine with a Rust toolchain.
# Installs what the tests need first (apt packages, cargo components), then runs
# formatting and lint checks and the whole workspace's tests. `.ci/run` calls this.
#
#   scripts/test.sh            # everything
#   SKIP_INSTALL=1 scripts/test.sh   # skip the install step
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use (real clients and tools, never mocks).
APT_PACKAGES=(
    e2fsprogs   # mkfs/e2fsck for file-system checks
    fio         # object-store and NBD comparisons in bench/
    fuse3       # fusermount3 for the nbdfuse ext4 test and stretto mount
    nbdkit      # NBD peer in bench/ (stretto-bench nbd: file and null plugins)
    nbd-server  # NBD peer in bench/ (stretto-bench nbd)
    libnbd-bin  # nbdinfo, nbdcopy, nbdsh, nbdfuse (NBD real-client tests)
    python3-libnbd # nbdsh's python module
    qemu-utils  # qemu-img, qemu-io (NBD real-client tests)
    iproute2    # network namespaces for partition tests
    procps      # pkill/pgrep-free process checks (ps)
    libisal2    # ISA-L erasure coding, loaded at run time (volume::ec)
    libisal-dev # (the same; tests compare it with the portable codec)
    glusterfs-server glusterfs-client   # GlusterFS peer in bench/ (fio's gfapi engine is in fio)
    python3-matplotlib  # bench/plot.py: the ratio plot of bench/run.sh
    # The RDMA backend (feature `rdma`, sideway) and the hardware lane
    # (hw-tests/lane.sh: a qemu guest with soft-RoCE and the kernel NBD client).
    cmake clang libibverbs-dev librdmacm-dev   # building sideway / rdma-mummy-sys
    rdma-core ibverbs-utils perftest           # rxe provider, ibv_devinfo, ib_read_lat, ib_write_bw
    qemu-system-x86 nbd-client busybox-static cpio kmod
)

log() { printf '\n=== %s\n' "$*"; }

install_deps() {
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    # Two passes: installing one package can remove another that was there
    # (on a fresh machine, Debian's qemu-system-x86 replaces a newer
    # qemu-utils from elsewhere), so look again after installing.
    local pass updated=0
    for pass in 1 2; do
        local missing=()
        for p in "${APT_PACKAGES[@]}"; do
            dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
        done
        ((${#missing[@]})) || break
        log "installing apt packages (pass $pass): ${missing[*]}"
        if [ "$updated" = 0 ]; then $SUDO apt-get update -qq; updated=1; fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    done
    for tool in qemu-img qemu-io nbdinfo fio; do
        command -v "$tool" >/dev/null || { echo "test.sh: $tool is missing after the install step" >&2; exit 1; }
    done
    # pjdfstest (POSIX conformance of the FUSE mount, tests/fuse_conformance.rs),
    # into ~/.cargo/bin where the test looks for it.
    if ! command -v pjdfstest >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/pjdfstest" ]; then
        log "installing pjdfstest"
        cargo install pjdfstest --locked
    fi
    for comp in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
            log "installing rust component $comp"
            rustup component add "$comp"
        fi
    done
}

[ "${SKIP_INSTALL:-0}" = 1 ] || install_deps

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo clippy (transport with the RDMA backend, feature rdma)"
cargo clippy -p stretto-transport --features rdma --all-targets --locked -- -D warnings

# The tests run in the `ci` profile (Cargo.toml): optimised, with debug
# assertions and overflow checks. End-to-end tests run the `stretto` binary
# of the same profile (CARGO_BIN_EXE_stretto).
log "cargo test (whole workspace, profile ci)"
cargo test --workspace --locked --no-fail-fast --profile ci 2>&1 | tee target/test-output.txt
# Summarise: one closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.txt

# The hardware lane: soft-RoCE and the kernel nbd-client in a qemu guest
# (stock Debian kernel; cached under target/hw-lane). One PASS/FAIL line
# per check; fails the run if any check fails.
log "hardware lane (hw-tests/lane.sh)"
hw-tests/lane.sh
