#!/usr/bin/env bash
# Builds the benchmarks in release mode (Cargo's `bench` profile) and runs
# them, printing their tables and writing every figure to
# bench/results.json in the Cargo target directory (CARGO_TARGET_DIR when
# set; BENCH_RESULTS wins; schema in docs/performance.md). See
# docs/performance.md for what each one measures and how to read it.
#
# Usage: scripts/bench.sh [--quick|--long] [--plot] [BENCH ...]
#
#   (no names)  run all of them: lock_wake serve_cost doorbell_e2e
#               writer_starvation update_herd serve_scale api_load footprint
#   --quick     a few seconds each (BENCH_QUICK=1): checks they still work,
#               figures only indicative
#   --long      about 5x the samples of the older benches; any knob set in
#               the environment (LOCK_WAKE_ITERS, SERVE_COST_ROUNDS, ...)
#               wins over both defaults
#   --plot      afterwards, draw docs/*.svg from results.json
#               (scripts/plot_bench.py, matplotlib in plot-venv in the
#               target directory)
#
# doorbell_e2e needs /dev/kvm; without it, it prints that it skipped.
# results.json is started afresh when all benches run, and updated in
# place (figures replaced) when some are named.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
}

all=(lock_wake serve_cost doorbell_e2e writer_starvation update_herd serve_scale api_load footprint)
long=0
quick=0
plot=0
benches=()
for arg in "$@"; do
    case "$arg" in
        --long) long=1 ;;
        --quick) quick=1 ;;
        --plot) plot=1 ;;
        -h | --help) usage; exit 0 ;;
        lock_wake | serve_cost | doorbell_e2e | writer_starvation | update_herd | serve_scale | api_load | footprint)
            benches+=("$arg") ;;
        *) echo "bench.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$long" = 1 ] && [ "$quick" = 1 ]; then
    echo "bench.sh: --quick and --long exclude each other" >&2
    exit 2
fi
target_dir=$(scripts/target-dir.sh)
results="${BENCH_RESULTS:-$target_dir/bench/results.json}"
export BENCH_RESULTS="$results"
if [ ${#benches[@]} -eq 0 ]; then
    benches=("${all[@]}")
    rm -f "$results"
fi

if [ "$quick" = 1 ]; then
    export BENCH_QUICK=1
fi
if [ "$long" = 1 ]; then
    export LOCK_WAKE_ITERS="${LOCK_WAKE_ITERS:-1500}"
    export LOCK_WAKE_QEMU_ITERS="${LOCK_WAKE_QEMU_ITERS:-500}"
    export LOCK_WAKE_LONG_ITERS="${LOCK_WAKE_LONG_ITERS:-100}"
    export SERVE_COST_ROUNDS="${SERVE_COST_ROUNDS:-501}"
    export SERVE_COST_QEMU_ITERS="${SERVE_COST_QEMU_ITERS:-25}"
    export SERVE_COST_KIB_ROUNDS="${SERVE_COST_KIB_ROUNDS:-201}"
    export DOORBELL_E2E_ROUNDS="${DOORBELL_E2E_ROUNDS:-15}"
    export DOORBELL_E2E_REQUESTS="${DOORBELL_E2E_REQUESTS:-200}"
    export WRITER_STARVATION_TRIES="${WRITER_STARVATION_TRIES:-1000}"
    export UPDATE_HERD_REPS="${UPDATE_HERD_REPS:-20}"
    export SERVE_SCALE_ROUNDS="${SERVE_SCALE_ROUNDS:-61}"
    export API_LOAD_ITERS="${API_LOAD_ITERS:-10000}"
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
echo
echo "bench.sh: figures in $results"

if [ "$plot" = 1 ]; then
    venv="$target_dir/plot-venv"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet matplotlib
    fi
    "$venv/bin/python" scripts/plot_bench.py "$results" docs
fi
