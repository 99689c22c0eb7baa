#!/usr/bin/env bash
# Builds the benchmarks in release mode (Cargo's `bench` profile) and runs
# them, printing their tables and writing every figure to
# bench/results.json in the Cargo target directory (CARGO_TARGET_DIR when
# set; BENCH_RESULTS wins; schema in docs/performance.md). See
# docs/performance.md for what each one measures and how to read it.
#
# Usage: scripts/bench.sh [--quick|--long] [--plot] [BENCH ...]
#
#   (no names)  every [[bench]] target in Cargo.toml (lock_wake serve_cost
#               doorbell_e2e writer_starvation update_herd serve_scale
#               api_load footprint soak)
#   --quick     a few seconds each (BENCH_QUICK=1): checks they still work,
#               figures only indicative
#   --long      about 5x the samples of the older benches; any knob set in
#               the environment (LOCK_WAKE_ITERS, SERVE_COST_ROUNDS, ...)
#               wins over both defaults
#   --plot      afterwards, draw docs/*.svg from results.json
#               (scripts/plot_bench.py, matplotlib in plot-venv in the
#               target directory)
#
# Every bench runs even when an earlier one failed; the summary at the end
# lists each bench with its time and result, and the script exits 1 if
# any failed (a bench fails on any error or failed check: a panic or a
# non-zero exit). doorbell_e2e needs a usable /dev/kvm: where there is
# none it is left out and the summary counts it as skipped, with the
# reason (run anyway, it fails). soak runs 20 s (2 s with --quick;
# scripts/soak.sh runs it for longer). results.json is started afresh when
# all benches run, and updated in place (figures replaced) when some are
# named.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
}

# The benches are Cargo.toml's [[bench]] targets: a new one runs here
# without being listed twice.
mapfile -t all < <(awk '/^\[\[bench\]\]/ { in_bench = 1; next }
    in_bench && /^name *=/ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); print; in_bench = 0 }' Cargo.toml)
if [ ${#all[@]} -eq 0 ]; then
    echo "bench.sh: no [[bench]] targets found in Cargo.toml" >&2
    exit 2
fi
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
        -*) echo "bench.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
        *)
            if [[ " ${all[*]} " != *" $arg "* ]]; then
                echo "bench.sh: no bench named $arg (there are: ${all[*]})" >&2
                exit 2
            fi
            benches+=("$arg") ;;
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
kvm_usable=0
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    kvm_usable=1
    echo "bench.sh: /dev/kvm is usable"
else
    echo "bench.sh: /dev/kvm is not usable: doorbell_e2e is skipped"
fi

build_start=$SECONDS
cargo bench -p snp-certs-vmm --locked --no-run
echo "bench.sh: build took $((SECONDS - build_start)) s"

summary=()
failed=0
skipped=0
for bench in "${benches[@]}"; do
    if [ "$bench" = doorbell_e2e ] && [ "$kvm_usable" = 0 ]; then
        summary+=("$(printf '  %-18s skipped: needs /dev/kvm, which is not usable on this host' "$bench")")
        skipped=$((skipped + 1))
        continue
    fi
    echo
    start=$SECONDS
    status=0
    cargo bench -p snp-certs-vmm --locked --bench "$bench" || status=$?
    took=$((SECONDS - start))
    if [ "$status" = 0 ]; then
        echo "bench.sh: $bench took $took s"
        summary+=("$(printf '  %-18s ok (%d s)' "$bench" "$took")")
    else
        echo "bench.sh: $bench FAILED (exit $status) after $took s" >&2
        summary+=("$(printf '  %-18s FAILED: exit %d after %d s' "$bench" "$status" "$took")")
        failed=$((failed + 1))
    fi
done
echo
echo "bench.sh: figures in $results"
echo "bench.sh: $((${#benches[@]} - skipped - failed)) passed, $failed failed, $skipped skipped (total $((SECONDS - build_start)) s with the build)"
printf '%s\n' "${summary[@]}"

if [ "$plot" = 1 ] && [ "$failed" = 0 ]; then
    venv="$target_dir/plot-venv"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet matplotlib
    fi
    "$venv/bin/python" scripts/plot_bench.py "$results" docs
fi
if [ "$failed" != 0 ]; then
    exit 1
fi
