#!/usr/bin/env bash
# The project's test command: every unit, integration and end-to-end test.
# Tests that need /dev/kvm run when it opens and print "skipped: ..." when
# it does not; tests that need SNP hardware run only from
# scripts/run_snp_host_tests.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "test: /dev/kvm is usable: KVM tests run for real"
else
    echo "test: /dev/kvm is not usable: KVM tests will print that they skipped"
fi

# Doc tests first (nextest does not run them), so the last line printed is
# the summary of the whole suite.
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
