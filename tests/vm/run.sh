#!/usr/bin/env bash
# Run the kernel-feature tests (pytest -m kernelvm: ipvlan, vlan, dummy, vrf) inside a VM that boots
# Debian's full kernel (linux-image-amd64) with virtme-ng and shares this machine's filesystem.
#
# usage: tests/vm/run.sh [extra pytest args...]      (as root, from anywhere)
# env:   VM_KERNEL=/boot/vmlinuz-X   kernel to boot (default: newest /boot/vmlinuz-*-amd64 with modules)
#        VM_MEMORY=2G VM_CPUS=2      guest size
#        VM_TIMEOUT=3600             seconds before the whole run is abandoned
#        VM_BOOT_TIMEOUT=360         seconds for the guest to start its tests; then it is stopped and
#        VM_BOOT_TRIES=2             booted again, this many times in all (an emulated boot can hang)
#        VM_TEST_TIMEOUT=1800        pytest-timeout per test inside the guest (emulation is slow)
#        VM_KVM=1                    use KVM instead of emulation (only where the host allows it)
#        VM_QUIET=1                  do not stream the guest console while it runs
# needs: Debian packages linux-image-amd64 qemu-system-x86 busybox-static; virtme-ng in the venv.
# Exit status: pytest's (5 = no kernelvm tests collected), or 2 when the VM could not be started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"   # vng execs virtme-run from the venv

die() { echo "tests/vm/run.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, module loading in the guest)"
command -v vng >/dev/null || die "virtme-ng missing: $VENV/bin/pip install virtme-ng"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86 missing: apt-get install qemu-system-x86"
[ -x /bin/busybox ] || command -v busybox >/dev/null || die "busybox-static missing: apt-get install busybox-static"

pick_kernel() {
    local k v best=""
    for k in /boot/vmlinuz-*-amd64; do
        [ -e "$k" ] || continue
        v="${k#/boot/vmlinuz-}"
        [ -d "/lib/modules/$v/kernel" ] && best="$k"   # glob order is version order for Debian's names
    done
    echo "$best"
}
KERNEL="${VM_KERNEL:-$(pick_kernel)}"
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no Debian kernel with modules found: apt-get install linux-image-amd64"
KVER="${KERNEL#/boot/vmlinuz-}"

# Collect here on the host (seconds; the emulated guest takes minutes to import every test module):
# the guest is given only the files that hold kernelvm tests, unless paths were passed. Collecting
# also leaves those modules' assertion-rewritten bytecode, and compileall the package's, for the
# guest, which can write none (and may start before the host suite has written any).
"$VENV/bin/python" -m compileall -q "$ROOT/reconciler" >/dev/null || die "compileall failed"
FILES=() explicit=0
for arg in "$@"; do [[ "$arg" != -* && -e "$ROOT/${arg%%::*}" ]] && explicit=1; done
if [ "$explicit" = 0 ]; then
    mapfile -t FILES < <(cd "$ROOT" && "$VENV/bin/python" -m pytest -p no:cacheprovider -m kernelvm \
        -o addopts="" --collect-only -q 2>/dev/null | sed -n 's/::.*//p' | sort -u)
    [ ${#FILES[@]} -gt 0 ] || { echo "tests/vm/run.sh: no kernelvm tests collected on the host" >&2; exit 5; }
fi

# The guest sees / read-only; results come back through one writable directory.
OUT="$(mktemp -d /tmp/rcn-vm.XXXXXX)"
VNG_PID="" TAIL_PID=""
cleanup() {  # the VM runs in a session of its own (below): stop it with us
    if [ -n "$VNG_PID" ]; then kill -- -"$VNG_PID" 2>/dev/null || true; fi
    if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null || true; fi
    rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

# What runs inside the guest: check the modules load, then pytest against the project's venv.
cat >"$OUT/guest.sh" <<EOF
#!/bin/bash
: >"$OUT/started"
cd "$ROOT"
echo "guest kernel \$(uname -r)"
for m in ipvlan 8021q dummy vrf; do
    modprobe "\$m" 2>>"$OUT/modprobe.err" || echo "guest: modprobe \$m failed" >&2
done
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RCN_IN_VM=1 TMPDIR=/tmp
"$VENV/bin/python" -m pytest -p no:cacheprovider -p no:hypothesispytest -p no:benchmark -m kernelvm \
    -o addopts="" -ra --durations=10 --timeout="${VM_TEST_TIMEOUT:-1800}" --junitxml="$OUT/junit.xml" "\$@" \
    2>&1 | tee "$OUT/pytest.log"
rc=\${PIPESTATUS[0]}
echo "\$rc" >"$OUT/rc"
exit "\$rc"
EOF
chmod +x "$OUT/guest.sh"

accel=(--disable-kvm)
[ "${VM_KVM:-0}" = 1 ] && accel=()
start=$(date +%s)
vng_rc=0
for attempt in $(seq 1 "${VM_BOOT_TRIES:-2}"); do
    echo "booting $KVER under virtme-ng (${accel[*]:-with KVM}): this takes a while (attempt $attempt)"
    rm -f "$OUT/started"
    : >"$OUT/console.log"
    # a session of its own, so that a guest that never boots can be stopped with its qemu
    setsid timeout "${VM_TIMEOUT:-3600}" vng "${accel[@]}" --run "$KERNEL" --user root \
        --memory "${VM_MEMORY:-2G}" --cpus "${VM_CPUS:-2}" --rwdir "$OUT" --cwd "$ROOT" \
        -- "$OUT/guest.sh" ${FILES[@]+"${FILES[@]}"} "$@" </dev/null >>"$OUT/console.log" 2>&1 &
    VNG_PID=$!
    if [ "${VM_QUIET:-0}" != 1 ]; then tail -n +1 -f "$OUT/console.log" & TAIL_PID=$!; fi
    waited=0
    while kill -0 "$VNG_PID" 2>/dev/null && [ ! -e "$OUT/started" ]; do
        if [ "$waited" -ge "${VM_BOOT_TIMEOUT:-360}" ]; then
            echo "tests/vm/run.sh: the guest had not started its tests after ${waited}s: stopping it" >&2
            tail -n 20 "$OUT/console.log" >&2
            kill -- -"$VNG_PID" 2>/dev/null || true
            break
        fi
        sleep 5
        waited=$((waited + 5))
    done
    set +e
    wait "$VNG_PID"
    vng_rc=$?
    set -e
    VNG_PID=""
    if [ -n "$TAIL_PID" ]; then
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
        TAIL_PID=""
    fi
    if [ -e "$OUT/started" ]; then break; fi
done
elapsed=$(( $(date +%s) - start ))

if [ ! -s "$OUT/rc" ]; then
    echo "tests/vm/run.sh: the guest did not report a pytest result (vng exit $vng_rc after ${elapsed}s):" >&2
    tail -n 40 "$OUT/console.log" >&2
    exit 2
fi
rc=$(cat "$OUT/rc")
[ "${VM_QUIET:-0}" = 1 ] && cat "$OUT/pytest.log"
[ -s "$OUT/modprobe.err" ] && { echo "--- modprobe errors in the guest:"; cat "$OUT/modprobe.err"; }
echo "kernelvm tests in $KVER: pytest exit $rc, ${elapsed}s including boot"
exit "$rc"
