#!/usr/bin/env bash
# Runs every snp-certs fuzz target (fuzz/fuzz_targets/*.rs; fuzz/src/lib.rs
# says what each checks) for SECONDS each, and fails (exit 1) on the first
# target that finds a failure or cannot run.
#
# Usage: scripts/fuzz.sh [--libfuzzer] SECONDS [SEED]
#
#   (default)    the stable driver (fuzz/src/bin/driver.rs): seeded random
#                and mutated inputs, no coverage feedback; prints the
#                executions and the answers reached, and fails when a
#                target's run reached too few of them to have tested
#                anything. Runs on stable Rust. A target the driver does
#                not know fails the run.
#   --libfuzzer  cargo-fuzz (libFuzzer, coverage-guided), installed with
#                `cargo install --locked cargo-fuzz` if missing. Needs a
#                nightly toolchain; without one, RUSTC_BOOTSTRAP=1 makes
#                stable accept cargo-fuzz's unstable flags. No sanitizer
#                (`-s none`): the targets are safe Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

libfuzzer=0
if [ "${1:-}" = "--libfuzzer" ]; then
    libfuzzer=1
    shift
fi
seconds="${1:?usage: scripts/fuzz.sh [--libfuzzer] SECONDS [SEED]}"
seed="${2:-$(date +%s)}"
targets=()
for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
done
echo "fuzz.sh: targets ${targets[*]}, $seconds s each, seed $seed"

if [ "$libfuzzer" = 1 ]; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install --locked cargo-fuzz
    fi
    toolchain=()
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        toolchain=(+nightly)
    else
        export RUSTC_BOOTSTRAP=1
    fi
    cd fuzz
    for t in "${targets[@]}"; do
        cargo "${toolchain[@]}" fuzz run -s none --features libfuzzer "$t" -- \
            -max_total_time="$seconds" -seed="$seed"
    done
    exit 0
fi

# The workspace's target directory (CARGO_TARGET_DIR when set).
target_dir=$(scripts/target-dir.sh)
cargo build --release --locked --manifest-path fuzz/Cargo.toml --target-dir "$target_dir" --bin driver
for t in "${targets[@]}"; do
    "$target_dir/release/driver" "$t" "$seconds" "$seed"
done
echo "fuzz.sh: every target ran $seconds s without a failure"
