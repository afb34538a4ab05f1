#!/bin/bash
# Runs inside the lane's qemu guest (see hw-tests/lane.sh). Prints one
# PASS/FAIL/SKIP line per check; BENCH/NOTE lines carry figures.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
S=/host/stretto
W=/tmp/lane
mkdir -p $W
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; }
# The console may still hold the firmware's escape codes: start on a line
# of our own so every result line begins with its word.
echo
# Seconds per stage, printed at the end (the lane's time budget).
STAGES=""
T0_STAGE=$SECONDS
stage() { STAGES="$STAGES $1=$((SECONDS - T0_STAGE))s"; T0_STAGE=$SECONDS; }

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

# 1. soft-RoCE device
if rdma link add rxe0 type rxe netdev eth0 && ibv_devinfo 2>/dev/null | grep -q PORT_ACTIVE; then
    pass "rxe: soft-RoCE device rxe0 on eth0 is active"
else
    fail "rxe: no active soft-RoCE device"
fi

stage rxe

# 2. the transport's RDMA tests: the engine on the verbs simulation, then
#    the integration tests on rxe0 (built with the rdma feature)
if /host/transport-tests --test-threads=2 rdma:: > $W/tests.log 2>&1; then
    pass "transport-rdma-sim-tests: $(grep -o '[0-9]* passed' $W/tests.log | head -1)"
else
    fail "transport-rdma-sim-tests"; tail -20 $W/tests.log
fi
if STRETTO_RDMA_ADDR=10.0.2.15 timeout 300 /host/rdma-hw-tests --test-threads=1 > $W/hw.log 2>&1 \
    && ! grep -q skipped $W/hw.log; then
    pass "transport-rdma-device-tests on rxe0: $(grep -o '[0-9]* passed' $W/hw.log | head -1)"
else
    fail "transport-rdma-device-tests"; tail -30 $W/hw.log
fi

stage transport-tests

# 3. a brick serving RDMA on rxe0
$S brick init $W/probe --secret-file $W/secret >/dev/null
$S brick serve $W/probe --listen 10.0.2.15:24099 --transport rdma > $W/probe.out 2> $W/probe.err &
PROBE=$!
for _ in $(seq 100); do grep -q "listening on" $W/probe.out && break; sleep 0.1; done
sleep 1; kill $PROBE 2>/dev/null; wait $PROBE 2>/dev/null
if grep -q "rdma listening on" $W/probe.out; then
    pass "rdma-brick: brick serves RDMA on $(sed -n 's/.*(\(.*\))/\1/p' $W/probe.out)"
    RDMA=rdma
else
    fail "rdma-brick: $(head -c 300 $W/probe.err)"
    RDMA=tcp
fi

# 4. three bricks, a replica-3 volume, NBD export, kernel nbd-client, ext4
PIDS=()
for i in 1 2 3; do
    $S brick init $W/b$i --secret-file $W/secret >/dev/null
    $S brick serve $W/b$i --listen 10.0.2.15:$((24100 + i)) --transport $RDMA > $W/b$i.out 2> $W/b$i.err &
    PIDS+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 100); do grep -q "listening on" $W/b$i.out && break; sleep 0.1; done
done
P=10.0.2.15:24101
V="--pool $P --secret-file $W/secret"
$S volume create vm replica 3 10.0.2.15:24101 10.0.2.15:24102 10.0.2.15:24103 $V >/dev/null \
    && $S volume set vm ping-timeout 5 $V >/dev/null \
    && $S volume start vm $V >/dev/null \
    && $S image create disk 268435456 --volume vm $V >/dev/null \
    || fail "volume: create/start/image failed"
$S nbd serve --volume vm --listen 127.0.0.1:10809 $V --transport $RDMA > $W/nbd.out 2> $W/nbd.err &
NBD=$!
for _ in $(seq 100); do grep -q "listening on" $W/nbd.out && break; sleep 0.1; done
if nbd-client 127.0.0.1 10809 /dev/nbd0 -N disk -b 4096 > $W/nbdc.log 2>&1 \
    && mkfs.ext4 -q -F /dev/nbd0 && mkdir -p /mnt/x && mount /dev/nbd0 /mnt/x \
    && dd if=/dev/urandom of=$W/data bs=1M count=8 2>/dev/null && cp $W/data /mnt/x/data && sync \
    && umount /mnt/x && mount /dev/nbd0 /mnt/x \
    && [ "$(sha256sum < /mnt/x/data)" = "$(sha256sum < $W/data)" ]; then
    pass "nbd-ext4: kernel nbd-client on a replica-3 volume ($RDMA bricks): mkfs, mount, write, remount, verify"
else
    fail "nbd-ext4: $(tail -3 $W/nbdc.log; tail -3 $W/nbd.err)"
fi

stage bricks+nbd-ext4

# 5. SIGKILL one brick during I/O: the client goes on. 32 MiB in O_DIRECT
#    1 MiB writes, so every write goes to the volume while it happens (not
#    into the page cache), and the kill waits until the first MiB is on the
#    volume and checks the writer is still running: a kill that comes too
#    late fails the check instead of passing it vacuously.
for _ in 1 2 3 4; do cat $W/data; done > $W/data4
( dd if=$W/data4 of=/mnt/x/data2 bs=1M oflag=direct conv=fsync 2>/dev/null; echo $? > $W/dd.rc ) &
DD=$!
for _ in $(seq 300); do
    [ "$(stat -c %s /mnt/x/data2 2>/dev/null || echo 0)" -ge 1048576 ] && break
    sleep 0.1
done
if kill -0 $DD 2>/dev/null; then DURING=yes; else DURING=no; fi
kill -9 "${PIDS[2]}"
T0=$(date +%s)
AT=$(stat -c %s /mnt/x/data2 2>/dev/null || echo 0)
wait $DD
T1=$(date +%s)
if [ "$DURING" = yes ] && [ "$(cat $W/dd.rc)" = 0 ] \
    && [ "$(sha256sum < /mnt/x/data2)" = "$(sha256sum < $W/data4)" ] && [ $((T1 - T0)) -lt 60 ]; then
    pass "brick-kill: SIGKILL of one brick $((AT >> 20)) MiB into a 32 MiB O_DIRECT write; the write went on and the data verify ($((T1 - T0)) s after the kill)"
else
    fail "brick-kill: writer running at the kill: $DURING, dd rc=$(cat $W/dd.rc) after $((T1 - T0)) s"
fi
umount /mnt/x 2>/dev/null
if nbd-client -d /dev/nbd0 >/dev/null 2>&1; then pass "nbd-disconnect"; else fail "nbd-disconnect"; fi
kill $NBD "${PIDS[0]}" "${PIDS[1]}" 2>/dev/null

stage brick-kill

# 6. benchmark: Stretto over RDMA (transport only, memory handler) next to
#    perftest on the same rxe device, like with like: Stretto's 4 KiB read
#    latency against ib_read_lat -s 4096, its 1 MiB write and read bandwidth
#    against ib_write_bw / ib_read_bw -s 1048576. Every figure is checked to
#    be a positive number; one that is not prints as "n/a (reason)", and so
#    does every ratio built on it. Bandwidths are MiB/s on both sides
#    (perftest's "MB/sec" is 2^20 bytes per second).
echo "NOTE bench: soft-RoCE under TCG emulation shows correctness, not speed: the figures and ratios below are not performance"
isnum() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v v="$1" 'BEGIN { exit !(v > 0) }'; }
# perf TOOL SIZE ITERS COLUMN: run TOOL's server and client on rxe0 and
# print COLUMN of the client's result row for SIZE, or "n/a (reason)".
perf() {
    local tool=$1 size=$2 iters=$3 col=$4 rc v
    timeout 90 "$tool" -x 1 -d rxe0 -s "$size" -n "$iters" > "$W/$tool.s" 2>&1 &
    local srv=$!
    sleep 1
    timeout 90 "$tool" -x 1 -d rxe0 -s "$size" -n "$iters" 10.0.2.15 > "$W/$tool.c" 2>&1
    rc=$?
    wait $srv
    v=$(awk -v s="$size" -v c="$col" '$1 == s && NF >= c { v = $c } END { print v }' "$W/$tool.c")
    if [ $rc -ne 0 ]; then
        echo "n/a ($tool exited $rc: $(grep -v '^ *$' "$W/$tool.c" | tail -1 | tr -d '\r' | cut -c1-80))"
    elif isnum "$v"; then
        echo "$v"
    else
        echo "n/a ($tool printed no result row for $size B)"
    fi
}
# Columns: ib_read_lat "#bytes #iterations t_min t_max t_typical t_avg ..."
# (t_avg, the mean, as Stretto's figure is); ib_*_bw "#bytes #iterations
# BW-peak BW-average MsgRate" (BW average).
P_LAT=$(perf ib_read_lat 4096 200 6)
P_WBW=$(perf ib_write_bw 1048576 20 4)
P_RBW=$(perf ib_read_bw 1048576 20 4)
STRETTO_RDMA_ADDR=10.0.2.15 timeout 300 /host/rdma-hw-tests --ignored --nocapture --exact rdma_bench > $W/bench.log 2>&1
BRC=$?
# stretto OP SIZE FIELD: one field of the rdma_bench line, or "n/a (reason)".
stretto() {
    local v
    v=$(awk -v op="$1" -v sz="$2" -v k="$3" '
        $1 == "STRETTO_BENCH" {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            if (f["op"] == op && f["size"] == sz) v = f[k]
        }
        END { print v }' $W/bench.log)
    if isnum "$v"; then echo "$v"
    elif [ $BRC -ne 0 ]; then echo "n/a (rdma_bench exited $BRC: $(grep -m1 -E 'panicked|error' $W/bench.log | cut -c1-80))"
    else echo "n/a (rdma_bench printed no $1 $2 B figure)"
    fi
}
S_R4=$(stretto read 4096 avg_us)
S_W4=$(stretto write 4096 avg_us)
S_WBW=$(stretto write 1048576 mib_s)
S_RBW=$(stretto read 1048576 mib_s)
# fig VALUE UNIT: "VALUE UNIT", or the "n/a (reason)" alone.
fig() { if isnum "$1"; then echo "$1 $2"; else echo "$1"; fi; }
# ratio A B NAME_A NAME_B: A / B to two places, or why not.
ratio() {
    if ! isnum "$1"; then echo "n/a (no $3 figure)"
    elif ! isnum "$2"; then echo "n/a (no $4 figure)"
    else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    fi
}
echo "BENCH 4KiB read latency: stretto $(fig "$S_R4" us), ib_read_lat -s 4096 $(fig "$P_LAT" us) (means); stretto / ib_read_lat = $(ratio "$S_R4" "$P_LAT" stretto ib_read_lat) (lower is better; a Stretto read is a SEND, an RDMA WRITE and a SEND, ib_read_lat one RDMA READ)"
echo "BENCH 1MiB write bandwidth: stretto $(fig "$S_WBW" MiB/s), ib_write_bw -s 1048576 $(fig "$P_WBW" MiB/s); stretto / ib_write_bw = $(ratio "$S_WBW" "$P_WBW" stretto ib_write_bw) (higher is better; stretto one call at a time, perftest many in flight)"
echo "BENCH 1MiB read bandwidth: stretto $(fig "$S_RBW" MiB/s), ib_read_bw -s 1048576 $(fig "$P_RBW" MiB/s); stretto / ib_read_bw = $(ratio "$S_RBW" "$P_RBW" stretto ib_read_bw) (higher is better; stretto one call at a time, perftest many in flight)"
echo "BENCH 4KiB write latency: stretto $(fig "$S_W4" us) (no perftest counterpart: a Stretto write is a SEND, an RDMA READ by the brick and a SEND)"
stage bench
echo "NOTE guest stages:$STAGES"
exit 0
