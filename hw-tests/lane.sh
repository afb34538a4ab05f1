#!/usr/bin/env bash
# The hardware lane: boots the stock Debian kernel in qemu (TCG; KVM only
# when the CPU has vmx/svm) and, inside, on soft-RoCE (rdma_rxe) and the
# kernel NBD client, runs the checks below. One PASS/FAIL/SKIP line per
# check; the exit code is 0 only if no check failed. See docs/rdma.md.
#
#   hw-tests/lane.sh                 # builds and uses target/$LANE_PROFILE/stretto (profile ci by default)
#   LANE_KEEP=1 hw-tests/lane.sh     # keep the guest work directory
#
# Kernel .deb, modules and the initramfs are cached under target/hw-lane so
# reruns skip the download and image build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/target/hw-lane
mkdir -p "$CACHE"
log() { printf '=== lane: %s\n' "$*" >&2; }
# Seconds per host stage, printed with the results (the CI time budget).
STAGES=""
T0_STAGE=$SECONDS
stage() { STAGES="$STAGES $1=$((SECONDS - T0_STAGE))s"; T0_STAGE=$SECONDS; }

# The stretto binary with the RDMA backend, and the transport's RDMA test
# binaries (engine on the simulation; integration tests on the device),
# built on the host with the `rdma` feature and run in the guest from 9p.
# Never target-cpu=native: the guest CPU is qemu64.
log "building stretto and the transport tests (feature rdma)"
# Profile `ci` by default, as the tests use, so the dependencies the test
# run compiled are reused (LANE_PROFILE=release to try a release build).
PROFILE=${LANE_PROFILE:-ci}
cargo build --profile "$PROFILE" --locked --features rdma --bin stretto
STRETTO=$ROOT/target/$PROFILE/stretto
JSON=$(cargo test --profile "$PROFILE" --locked -p stretto-transport --features rdma --lib --test rdma_hw --no-run --message-format=json 2>/dev/null)
LIB_BIN=$(printf '%s\n' "$JSON" | grep '"name":"stretto_transport"\|"name":"transport"' | grep '"kind":\["lib"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
HW_BIN=$(printf '%s\n' "$JSON" | grep '"name":"rdma_hw"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$LIB_BIN" ] && [ -x "$HW_BIN" ] || { echo "FAIL build: transport test binaries"; exit 1; }
stage build

# --- kernel -------------------------------------------------------------
KPKG=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
KVER=${KPKG#linux-image-}
KDIR=$CACHE/$KPKG
if [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
    log "fetching $KPKG"
    rm -rf "$KDIR" && mkdir -p "$KDIR"
    (cd "$CACHE" && apt-get download "$KPKG" >/dev/null 2>&1)
    dpkg -x "$CACHE"/${KPKG}_*.deb "$KDIR"
    /sbin/depmod -b "$KDIR" "$KVER"   # the .deb ships no modules.dep
fi
stage kernel

# --- initramfs ----------------------------------------------------------
INITRD=$CACHE/initrd-$KVER.gz
STAMP=$(cat "$0" | sha256sum | cut -c1-16)-v2
if [ ! -f "$INITRD" ] || [ "$(cat "$CACHE/initrd.stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "building the initramfs"
    IR=$CACHE/initrd-root
    rm -rf "$IR" && mkdir -p "$IR"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,host,lib/modules,run,var/tmp}
    cp /bin/busybox "$IR/bin/busybox"
    for a in $(busybox --list); do
        [ "$a" = busybox ] || [ -e "$IR/bin/$a" ] || ln -s busybox "$IR/bin/$a"
    done
    copy_bin() { # binary with the libraries ldd lists
        local b; b=$(command -v "$1")
        mkdir -p "$IR$(dirname "$b")"; cp -L "$b" "$IR$b"
        ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
            mkdir -p "$IR$(dirname "$l")"; cp -Ln "$l" "$IR$l" 2>/dev/null || true
        done
    }
    for b in "$STRETTO" "$LIB_BIN" "$HW_BIN"; do   # their libraries (libgcc_s, ...), not the binaries
        ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
            mkdir -p "$IR$(dirname "$l")"; cp -Ln "$l" "$IR$l" 2>/dev/null || true
        done
    done
    for b in bash kmod rdma ibv_devinfo ib_write_bw ib_read_bw ib_read_lat nbd-client mkfs.ext4 ip sha256sum dd sync; do copy_bin "$b"; done
    for l in /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so; do
        mkdir -p "$IR$(dirname "$l")"; cp -L "$l" "$IR$l"
        ldd "$l" | grep -o '/[^ ]*' | while read -r d; do mkdir -p "$IR$(dirname "$d")"; cp -Ln "$d" "$IR$d" 2>/dev/null || true; done
    done
    mkdir -p "$IR/etc/libibverbs.d" && cp /etc/libibverbs.d/rxe.driver "$IR/etc/libibverbs.d/"
    ln -sf /usr/bin/kmod "$IR/sbin/modprobe"; ln -sf /usr/bin/kmod "$IR/sbin/insmod"
    rm -f "$IR/bin/bash"; ln -s /usr/bin/bash "$IR/bin/bash"   # host has merged /usr; the guest's /bin is busybox
    rm -f "$IR/bin/modprobe" "$IR/bin/insmod" "$IR/bin/ip"
    MODS="crc32_generic crc32_pclmul crc32c_generic crc32c-intel virtio_pci virtio_net virtio_blk rdma_rxe ib_uverbs rdma_ucm nbd ext4 9pnet_virtio 9p"
    /sbin/modprobe -d "$KDIR" -S "$KVER" --show-depends -a $MODS 2>/dev/null | awk '/^insmod/ {print $2}' | sort -u | while read -r m; do
        rel=${m#"$KDIR"}; mkdir -p "$IR$(dirname "$rel")"; cp "$m" "$IR$rel"
    done
    cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin}* "$IR/lib/modules/$KVER/" 2>/dev/null || true
    /sbin/depmod -b "$IR" "$KVER"
    cat > "$IR/init" <<'INIT'
#!/usr/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in crc32_generic crc32c_generic virtio_pci virtio_net 9pnet_virtio 9p rdma_rxe ib_uverbs rdma_ucm nbd ext4; do modprobe $m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host
bash /host/guest.sh
echo "LANE-DONE rc=$?"
echo o > /proc/sysrq-trigger
sleep 10
INIT
    chmod +x "$IR/init"
    (cd "$IR" && find . | cpio -H newc -o --quiet | gzip -1 > "$INITRD")
    echo "$STAMP" > "$CACHE/initrd.stamp"
fi
stage initramfs

# --- share and boot -----------------------------------------------------
SHARE=$CACHE/share
rm -rf "$SHARE" && mkdir -p "$SHARE"
cp "$STRETTO" "$SHARE/stretto"
cp "$LIB_BIN" "$SHARE/transport-tests"
cp "$HW_BIN" "$SHARE/rdma-hw-tests"
cp "$ROOT/hw-tests/guest.sh" "$SHARE/guest.sh"

ACCEL="-accel tcg,thread=multi"
if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && [ -w /dev/kvm ]; then ACCEL="-accel kvm"; fi
log "booting $KVER ($ACCEL)"
OUT=$CACHE/serial.log
timeout 420 qemu-system-x86_64 $ACCEL -smp 2 -m 1536 -nographic -nodefaults -no-reboot -serial stdio \
    -kernel "$KDIR/boot/vmlinuz-$KVER" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    -virtfs local,path="$SHARE",mount_tag=host,security_model=none,readonly=on \
    > "$OUT" 2>&1 || true
stage guest
# The serial log carries the firmware's and the kernel's escape codes and
# CRs: strip them, then keep the result lines.
RES=$CACHE/results.txt
sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[A-Za-z]//g' -e 's/\r$//' "$OUT" \
    | grep -aE '^(PASS|FAIL|SKIP|BENCH|NOTE) ' > "$RES" || true
cat "$RES"
echo "NOTE lane host stages:$STAGES total=${SECONDS}s"
if ! grep -aq 'LANE-DONE' "$OUT"; then
    echo "FAIL guest: did not finish (serial log: $OUT)"
    tail -20 "$OUT" >&2
    exit 1
fi
if grep -q '^FAIL ' "$RES"; then exit 1; fi
exit 0
