#!/usr/bin/env bash
# Tests that need a real SEV-SNP host (bare metal or a nested SNP CI runner)
# with a kernel that has SNP certificate requests (Linux 7.0 or later).
# See docs/snp-hosts.md for what such a runner needs.
#
# On a host without SNP it says why and exits 0 (skipped), unless
# SNP_HOST_REQUIRED=1, in which case a missing SNP host is a failure.
#
# Either way it leaves a JUnit report in nextest/snp-host/junit.xml in the
# Cargo target directory (CARGO_TARGET_DIR when set), or $SNP_HOST_JUNIT:
# nextest's own when the tests run (the snp-host profile), otherwise one
# test case, `snp_host_tests`, that is skipped with the reason (or, with
# SNP_HOST_REQUIRED=1, failed with it), so CI systems show why nothing ran.
set -euo pipefail
cd "$(dirname "$0")/.."

report="$(scripts/target-dir.sh)/nextest/snp-host/junit.xml"
junit=${SNP_HOST_JUNIT:-$report}

# Escapes text for an XML attribute.
xml_escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' -e "s/'/\&apos;/g"
}

# Writes the JUnit report of a run that did not happen: one test case,
# skipped (or failed, when an SNP host was required) with reason $1.
write_skip_junit() {
    local reason failures=0 skipped=1 element=skipped
    reason=$(xml_escape "$1")
    if [ "${SNP_HOST_REQUIRED:-0}" = 1 ]; then
        failures=1 skipped=0 element=failure
        reason="SNP host required but not found: $reason"
    fi
    mkdir -p "$(dirname "$junit")"
    cat >"$junit" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="snp-host" tests="1" failures="$failures" errors="0" skipped="$skipped">
    <testsuite name="hypervisor::snp_host" tests="1" failures="$failures" errors="0" skipped="$skipped" timestamp="$(date -u +%Y-%m-%dT%H:%M:%SZ)">
        <testcase name="snp_host_tests" classname="hypervisor::snp_host" time="0">
            <$element message="$reason"/>
        </testcase>
    </testsuite>
</testsuites>
XML
    echo "run_snp_host_tests: JUnit report: $junit"
}

skip() {
    echo "run_snp_host_tests: skipped: $*"
    write_skip_junit "$*"
    if [ "${SNP_HOST_REQUIRED:-0}" = 1 ]; then
        exit 1
    fi
    exit 0
}

[ -e /dev/kvm ] || skip "/dev/kvm does not exist"
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    skip "/dev/kvm is not readable and writable by $(id -un)"
fi
if [ -r /sys/module/kvm_amd/parameters/sev_snp ]; then
    snp=$(cat /sys/module/kvm_amd/parameters/sev_snp)
    case "$snp" in
        Y|y|1) ;;
        *) skip "kvm_amd is loaded with sev_snp=$snp (SNP disabled)" ;;
    esac
else
    modules=()
    for m in /sys/module/kvm*; do
        [ -e "$m" ] && modules+=("${m##*/}")
    done
    skip "kvm_amd is not loaded or has no sev_snp parameter (not an AMD SEV-SNP host; KVM modules here: ${modules[*]:-none})"
fi

echo "run_snp_host_tests: SNP host found; running the hardware tests:"
echo "  the kernel interface (probe, SNP VM, certificate-exit enable before vCPUs),"
echo "  then snp-vmm --platform sev_snp=on with the SNP guest end to end: size query"
echo "  and delivery, busy while snp-certs lock holds the file, the empty-table"
echo "  fallback after the busy budget, a start during an update, and the lease"
echo "  released after the immediate exit (a writer gets in between requests)"
cargo run --locked --quiet --bin snp-vmm -- --check-host || true
rm -f "$report"
status=0
# The snp_host_* tests are #[ignore]d everywhere else; run just them.
cargo nextest run --locked --workspace --profile snp-host --run-ignored only -E "test(/^snp_host_/)" --test-threads=1 || status=$?
if [ -f "$report" ]; then
    if [ "$junit" != "$report" ]; then
        mkdir -p "$(dirname "$junit")"
        cp "$report" "$junit"
    fi
    echo "run_snp_host_tests: JUnit report: $junit"
else
    write_skip_junit "nextest wrote no report (exit status $status): the tests did not build or start"
fi
exit "$status"
