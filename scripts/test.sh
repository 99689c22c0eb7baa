#!/usr/bin/env bash
# The project's test command: every unit, integration and end-to-end test.
#
# Tests named kvm_* need a usable /dev/kvm. Where it is usable they run for
# real (and fail if KVM then misbehaves); where it is not, they are left
# out and the runner's summary counts them as skipped. Tests named
# snp_host_* need SEV-SNP hardware and run only from
# scripts/run_snp_host_tests.sh (the nextest default filter leaves them
# out, so they too show as skipped). Extra arguments go to nextest.
#
# NEXTEST_PROFILE=ci (as .ci/run sets) writes a JUnit report to
# nextest/ci/junit.xml in the Cargo target directory (CARGO_TARGET_DIR
# when set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

filter=()
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "test: /dev/kvm is usable: the kvm_* tests run for real"
else
    echo "test: /dev/kvm is not usable: the kvm_* tests are skipped (the summary counts them)"
    filter=(-E 'not test(/^kvm_/)')
fi

# Doc tests first (nextest does not run them), so the last line printed is
# the summary of the whole suite.
cargo test --workspace --locked --doc
cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}" "$@"
