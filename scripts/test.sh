#!/usr/bin/env bash
# The project's test command: every unit, integration and end-to-end test.
#
# Tests named kvm_* need a usable /dev/kvm. Where it is usable they run for
# real (and fail if KVM then misbehaves); where it is not, they are left
# out and the runner's summary counts them as skipped. Tests named
# snp_host_* need SEV-SNP hardware: they are #[ignore]d with that reason
# (skipped by every runner, plain `cargo test` included) and run only from
# scripts/run_snp_host_tests.sh. Extra arguments go to nextest.
#
# NEXTEST_PROFILE=ci (as .ci/run sets) writes a JUnit report to
# ${CARGO_TARGET_DIR:-target}/nextest/ci/junit.xml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

filter=()
skips=(--filtered-reason "left out by the run's filter")
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "test: /dev/kvm is usable: the kvm_* tests run for real"
    # A kvm_* test skipped here (ignored, say) fails the CI report below.
    skips+=(--require-run '^kvm_')
else
    echo "test: /dev/kvm is not usable: the kvm_* tests are skipped (the summary counts them)"
    filter=(-E 'not test(/^kvm_/)')
    skips=(--filtered-reason "needs /dev/kvm, which is not usable on this host")
fi

# Doc tests first (nextest does not run them), so the last line printed is
# the summary of the whole suite.
cargo test --workspace --locked --doc
status=0
cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}" "$@" || status=$?

# A CI profile's JUnit report lists only the tests that ran: add the
# skipped ones, each with its reason (scripts/junit_skips.py).
junit="${CARGO_TARGET_DIR:-target}/nextest/${NEXTEST_PROFILE:-default}/junit.xml"
if [ -n "${NEXTEST_PROFILE:-}" ] && [ $# -eq 0 ] && [ -f "$junit" ]; then
    listing=$(mktemp)
    trap 'rm -f "$listing"' EXIT
    cargo nextest list --workspace --locked --message-format json "${filter[@]}" >"$listing"
    python3 scripts/junit_skips.py "$junit" "$listing" "${skips[@]}" || status=1
fi
exit "$status"
