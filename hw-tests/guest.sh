#!/bin/bash
# Runs inside the lane's qemu guest (see hw-tests/lane.sh). Prints one
# PASS/FAIL/SKIP line per check; BENCH/NOTE lines carry figures.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
S=/host/stretto
W=/tmp/lane
mkdir -p $W
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; }

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

# 1. soft-RoCE device
if rdma link add rxe0 type rxe netdev eth0 && ibv_devinfo 2>/dev/null | grep -q PORT_ACTIVE; then
    pass "rxe: soft-RoCE device rxe0 on eth0 is active"
else
    fail "rxe: no active soft-RoCE device"
fi

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

# 5. SIGKILL one brick during I/O: the client goes on
( dd if=$W/data of=/mnt/x/data2 bs=64k conv=fsync 2>/dev/null; echo $? > $W/dd.rc ) &
DD=$!
sleep 0.5
kill -9 "${PIDS[2]}"
T0=$(date +%s)
wait $DD
T1=$(date +%s)
if [ "$(cat $W/dd.rc)" = 0 ] && [ "$(sha256sum < /mnt/x/data2)" = "$(sha256sum < $W/data)" ] \
    && [ $((T1 - T0)) -lt 60 ]; then
    pass "brick-kill: SIGKILL of one brick during a write; I/O went on and the data verify ($((T1 - T0)) s)"
else
    fail "brick-kill: dd rc=$(cat $W/dd.rc) after $((T1 - T0)) s"
fi
umount /mnt/x 2>/dev/null
if nbd-client -d /dev/nbd0 >/dev/null 2>&1; then pass "nbd-disconnect"; else fail "nbd-disconnect"; fi
kill $NBD "${PIDS[0]}" "${PIDS[1]}" 2>/dev/null

# 6. benchmark: Stretto over RDMA (transport only, memory handler) next to
#    perftest on the same rxe device
echo "NOTE soft-RoCE under TCG emulation shows correctness, not speed: figures below are not performance"
ib_read_lat -x 1 -d rxe0 -n 100 > $W/lat.s 2>&1 &
sleep 1
ib_read_lat -x 1 -d rxe0 -n 100 10.0.2.15 > $W/lat.c 2>&1
wait
ib_write_bw -x 1 -d rxe0 -s 1048576 -n 20 > $W/bw.s 2>&1 &
sleep 1
ib_write_bw -x 1 -d rxe0 -s 1048576 -n 20 10.0.2.15 > $W/bw.c 2>&1
wait
LAT=$(awk '$1 ~ /^[0-9]+$/ && NF >= 5 {v=$5} END {print v}' $W/lat.c)
BW=$(awk '$1 == 1048576 {v=$4} END {print v}' $W/bw.c)
STRETTO_RDMA_ADDR=10.0.2.15 timeout 300 /host/rdma-hw-tests --ignored --nocapture rdma_bench > $W/bench.log 2>&1
R4=$(awk '/^STRETTO 4KiB/ {print $9}' $W/bench.log)
W4=$(awk '/^STRETTO 4KiB/ {print $4}' $W/bench.log)
RM=$(awk '/^STRETTO 1MiB/ {print $11}' $W/bench.log)
WM=$(awk '/^STRETTO 1MiB/ {print $6}' $W/bench.log)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "BENCH ib_read_lat (2 B, typical): ${LAT:-n/a} us; ib_write_bw (1 MiB): ${BW:-n/a} MB/s"
echo "BENCH stretto rdma 4KiB: read ${R4:-n/a} us, write ${W4:-n/a} us; 1MiB: read ${RM:-n/a} MB/s, write ${WM:-n/a} MB/s"
echo "BENCH ratios (stretto / perftest): 4KiB read latency / ib_read_lat = $(ratio "$R4" "$LAT"), 4KiB write latency / ib_read_lat = $(ratio "$W4" "$LAT"); 1MiB write bandwidth / ib_write_bw = $(ratio "$WM" "$BW"); 1MiB read bandwidth / ib_write_bw = $(ratio "$RM" "$BW")"
exit 0
