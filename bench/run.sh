#!/usr/bin/env bash
# Builds the release binaries (stretto and stretto-bench), runs every
# benchmark and writes the markdown report to bench/results/latest.md.
#
#   bench/run.sh            # full mode (tens of minutes)
#   bench/run.sh --quick    # 1 repetition, 3 s per cell, small images
#
# Needs: fio, nbdkit, qemu-utils (qemu-nbd). The cluster benchmarks start
# real `stretto brick serve` / `stretto nbd serve` processes from
# target/release/stretto and stop them by PID when done.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
for a in "$@"; do
    case "$a" in
        --quick) quick=(--quick) ;;
        *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
    esac
done

for tool in fio nbdkit qemu-nbd; do
    command -v "$tool" >/dev/null || {
        echo "$tool is not installed (apt-get install -y fio nbdkit qemu-utils)" >&2
        exit 1
    }
done

cargo build --release -j 2 -p stretto --bin stretto
cargo build --release -j 2 -p stretto-bench --bin stretto-bench

mkdir -p bench/results
out=bench/results/latest.md
tmp="$out.partial"
target/release/stretto-bench all "${quick[@]}" | tee "$tmp"
mv "$tmp" "$out"
echo "wrote $out" >&2
