#!/usr/bin/env bash
# Builds the benchmarks in release mode (Cargo's `bench` profile) and runs
# them, printing their tables. See docs/performance.md for what each one
# measures and how to read it.
#
# Usage: scripts/bench.sh [--long] [lock_wake|serve_cost|doorbell_e2e ...]
#
#   (no names)  run all three, about 30 s after the build
#   --long      about 5x the samples of each (a few minutes); any knob set
#               in the environment (LOCK_WAKE_ITERS, SERVE_COST_ROUNDS, ...)
#               wins over both defaults
#
# doorbell_e2e needs /dev/kvm; without it, it prints that it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

long=0
benches=()
for arg in "$@"; do
    case "$arg" in
        --long) long=1 ;;
        -h | --help) usage; exit 0 ;;
        lock_wake | serve_cost | doorbell_e2e) benches+=("$arg") ;;
        *) echo "bench.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if [ ${#benches[@]} -eq 0 ]; then
    benches=(lock_wake serve_cost doorbell_e2e)
fi

if [ "$long" = 1 ]; then
    export LOCK_WAKE_ITERS="${LOCK_WAKE_ITERS:-1000}"
    export LOCK_WAKE_LONG_ITERS="${LOCK_WAKE_LONG_ITERS:-100}"
    export SERVE_COST_ROUNDS="${SERVE_COST_ROUNDS:-101}"
    export SERVE_COST_QEMU_ITERS="${SERVE_COST_QEMU_ITERS:-50}"
    export DOORBELL_E2E_ROUNDS="${DOORBELL_E2E_ROUNDS:-15}"
    export DOORBELL_E2E_REQUESTS="${DOORBELL_E2E_REQUESTS:-200}"
fi

echo "bench.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r)"
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "bench.sh: /dev/kvm is usable"
else
    echo "bench.sh: /dev/kvm is not usable: doorbell_e2e will say it skipped"
fi

build_start=$SECONDS
cargo bench -p snp-certs-vmm --locked --no-run
echo "bench.sh: build took $((SECONDS - build_start)) s"

for bench in "${benches[@]}"; do
    echo
    start=$SECONDS
    cargo bench -p snp-certs-vmm --locked --bench "$bench"
    echo "bench.sh: $bench took $((SECONDS - start)) s"
done
