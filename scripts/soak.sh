#!/usr/bin/env bash
# Soak: VMs serving a shared certs file while a writer rewrites it as fast
# as it can (sometimes by rename) and hostile guests hammer it; checks
# every delivered table is one complete version, never older than the last
# version fully written before the request began. See benches/soak.rs.
#
# Usage: scripts/soak.sh DURATION   (seconds; SOAK_VMS, SOAK_HOSTILE tune it)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:?usage: scripts/soak.sh DURATION}"
cargo bench --locked --bench soak -- "$seconds"
