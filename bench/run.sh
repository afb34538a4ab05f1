#!/usr/bin/env bash
# Builds the release binaries (stretto and stretto-bench), runs every
# benchmark and writes the markdown report to bench/results/latest.md.
#
#   bench/run.sh            # full mode (under 30 minutes with the build)
#   bench/run.sh --quick    # 1 repetition, ≈ 1 s per cell, small images (under 5 minutes)
#   bench/run.sh --pin      # servers on CPU 1 (taskset), fio on CPU 0
#
# Needs: fio, nbdkit, qemu-utils (qemu-nbd), glusterfs-server and
# glusterfs-client (GlusterFS peer; fio's gfapi engine is built into Debian's
# fio), python3-matplotlib (the plot); scripts/test.sh installs them all.
# The cluster benchmarks start real `stretto brick serve` / `stretto nbd
# serve` / glusterd processes and stop them by PID when done.
set -euo pipefail
cd "$(dirname "$0")/.."

opts=()
for a in "$@"; do
    case "$a" in
        --quick) opts+=(--quick) ;;
        --pin) opts+=(--pin) ;;
        *) echo "usage: bench/run.sh [--quick] [--pin]" >&2; exit 2 ;;
    esac
done

for tool in fio nbdkit qemu-nbd; do
    command -v "$tool" >/dev/null || {
        echo "$tool is not installed (apt-get install -y fio nbdkit qemu-utils; scripts/test.sh does)" >&2
        exit 1
    }
done
# GlusterFS is optional: without it the GlusterFS rows say n/a.
command -v glusterd >/dev/null ||
    echo "note: glusterd not installed (apt-get install -y glusterfs-server glusterfs-client): GlusterFS rows will be n/a" >&2

mmss() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
start=$SECONDS
cargo build --release -j 2 -p stretto --bin stretto
cargo build --release -j 2 -p stretto-bench --bin stretto-bench
build=$((SECONDS - start))
echo "build: $(mmss $build)" >&2

mkdir -p bench/results
out=bench/results/latest.md
tmp="$out.partial"
target/release/stretto-bench all "${opts[@]}" --ratios bench/results/ratios.csv | tee "$tmp"
mv "$tmp" "$out"
echo "wrote $out" >&2
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 bench/plot.py bench/results/ratios.csv bench/results/ratios.png &&
        echo "wrote bench/results/ratios.png" >&2
else
    echo "note: no plot (apt-get install -y python3-matplotlib)" >&2
fi
bench_s=$((SECONDS - start - build))
total=$((SECONDS - start))
echo "elapsed: build $(mmss $build), benchmark $(mmss $bench_s), total $(mmss $total);" \
    "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
