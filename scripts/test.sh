#!/usr/bin/env bash
# The project's test command: every unit, integration and end-to-end test.
#
# Tests named kvm_* need a usable /dev/kvm. Where it is usable they run for
# real (and fail if KVM then misbehaves); where it is not, they are left
# out and the runner's summary counts them as skipped. Tests named
# snp_host_* need SEV-SNP hardware: they are #[ignore]d with that reason
# (skipped by every runner, plain `cargo test` included) and run only from
# scripts/run_snp_host_tests.sh. Tests named ch_remote_* run Cloud
# Hypervisor's own ch-remote, which scripts/build-ch-remote.sh builds from
# the pinned sources in ../shared/third_party first (a few minutes the
# first time, about a second after); they are left out, and counted as
# skipped, only where those sources are not there (CH_REMOTE_REQUIRED=1
# makes that a failure; CH_REMOTE=PATH uses that binary instead). A failed
# build fails the run. Extra arguments go to nextest.
#
# NEXTEST_PROFILE=ci (as .ci/run sets) writes a JUnit report to
# nextest/ci/junit.xml in the Cargo target directory (CARGO_TARGET_DIR
# when set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

skip=()
skips=(--filtered-reason "left out by the run's filter")
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    echo "test: /dev/kvm is usable: the kvm_* tests run for real"
    # A kvm_* test skipped here (ignored, say) fails the CI report below.
    skips+=(--require-run '(^|::)kvm_')
else
    echo "test: /dev/kvm is not usable: the kvm_* tests are skipped (the summary counts them)"
    skip+=('test(/(^|::)kvm_/)')
    skips+=(--filtered "(^|::)kvm_=needs /dev/kvm, which is not usable on this host")
fi

if [ -z "${CH_REMOTE:-}" ]; then
    status=0
    CH_REMOTE="$(scripts/build-ch-remote.sh)" || status=$?
    if [ "$status" = 3 ] && [ "${CH_REMOTE_REQUIRED:-0}" != 1 ]; then
        echo "test: Cloud Hypervisor's sources are not there: the ch_remote_* tests are skipped (the summary counts them)"
        skip+=('test(/^ch_remote_/)')
        skips+=(--filtered "^ch_remote_=needs Cloud Hypervisor's pinned sources (../shared/third_party), which are not there")
        CH_REMOTE=""
    elif [ "$status" != 0 ]; then
        echo "test: FAILED to build Cloud Hypervisor's ch-remote (scripts/build-ch-remote.sh)" >&2
        exit 1
    fi
fi
if [ -n "$CH_REMOTE" ]; then
    echo "test: the ch_remote_* tests run Cloud Hypervisor's $("$CH_REMOTE" --version) ($CH_REMOTE)"
    export CH_REMOTE
fi

filter=()
if [ ${#skip[@]} -gt 0 ]; then
    expr="${skip[0]}"
    for s in "${skip[@]:1}"; do
        expr="$expr or $s"
    done
    filter=(-E "not ($expr)")
fi

# Doc tests first (nextest does not run them), so the last line printed is
# the summary of the whole suite.
cargo test --workspace --locked --doc
status=0
cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}" "$@" || status=$?

# A CI profile's JUnit report lists only the tests that ran: add the
# skipped ones, each with its reason (scripts/junit_skips.py).
junit="$(scripts/target-dir.sh)/nextest/${NEXTEST_PROFILE:-default}/junit.xml"
if [ -n "${NEXTEST_PROFILE:-}" ] && [ $# -eq 0 ] && [ -f "$junit" ]; then
    listing=$(mktemp)
    trap 'rm -f "$listing"' EXIT
    cargo nextest list --workspace --locked --message-format json "${filter[@]}" >"$listing"
    python3 scripts/junit_skips.py "$junit" "$listing" "${skips[@]}" || status=1
fi
exit "$status"
