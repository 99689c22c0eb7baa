#!/usr/bin/env bash
# Soak: VMs serving a shared certs file while a writer rewrites it as fast
# as it can (sometimes by rename) and hostile guests hammer it. Fails
# (exit 1) on a delivered table that is not one complete version or is
# older than the last version fully written before the request began; on
# a delivery without its lease, or the writer holding the exclusive lock
# during a VM's firmware step (the immediate-exit run); on any fallback
# answer; and when the writer makes no progress. Prints the answers, busy
# and fallback by reason. See benches/soak.rs.
#
# Usage: scripts/soak.sh DURATION   (seconds; SOAK_VMS, SOAK_HOSTILE tune it)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/soak.sh DURATION}"
cargo bench -p snp-certs-vmm --locked --bench soak -- "$seconds"
