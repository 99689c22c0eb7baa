#!/usr/bin/env bash
# Tests that need a real SEV-SNP host (bare metal or a nested SNP CI runner)
# with a kernel that has SNP certificate requests (Linux 7.0 or later).
# See docs/snp-hosts.md for what such a runner needs.
#
# On a host without SNP it says why and exits 0 (skipped), unless
# SNP_HOST_REQUIRED=1, in which case a missing SNP host is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "run_snp_host_tests: skipped: $*"
    if [ "${SNP_HOST_REQUIRED:-0}" = 1 ]; then
        exit 1
    fi
    exit 0
}

[ -e /dev/kvm ] || skip "/dev/kvm does not exist"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is not readable and writable by $(id -un)"
if [ -r /sys/module/kvm_amd/parameters/sev_snp ]; then
    snp=$(cat /sys/module/kvm_amd/parameters/sev_snp)
    case "$snp" in
        Y|y|1) ;;
        *) skip "kvm_amd is loaded with sev_snp=$snp (SNP disabled)" ;;
    esac
else
    skip "kvm_amd is not loaded or has no sev_snp parameter (not an AMD SEV-SNP host; KVM modules here: $(ls /sys/module | grep '^kvm' | tr '\n' ' '))"
fi

echo "run_snp_host_tests: SNP host found; running the hardware tests"
cargo nextest run --locked -p hypervisor --test snp_host --profile snp-host --ignore-default-filter -E "test(/^snp_host_/)" --test-threads=1
