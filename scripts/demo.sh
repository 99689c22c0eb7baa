#!/usr/bin/env bash
# The main job: boot the built-in attestation guest under KVM and serve it
# the example certificate table in docs/examples/, then print what the
# guest received. Where /dev/kvm is not usable it says so and asks snp-vmm
# for the mock backend explicitly (a Rust model of the guest, no real
# vCPUs); snp-vmm itself never falls back on its own.
# Extra arguments go to snp-vmm (e.g. --payload attest,requests=20 -v).
#
# It needs only what it uses: Cargo and a C linker (cc) to build snp-vmm.
# The test tools scripts/setup.sh installs (curl, cargo-nextest) are not
# needed here. The binary is taken from the Cargo target directory
# (CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1; then
    echo "demo: building snp-vmm needs a C linker (cc): install gcc (scripts/setup.sh does)" >&2
    exit 1
fi
cargo build --release --locked --bin snp-vmm
target_dir=$(scripts/target-dir.sh)
hypervisor=kvm
if ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
    echo "demo: /dev/kvm is not usable here: running on the mock backend (--hypervisor mock)" >&2
    hypervisor=mock
fi
exec "$target_dir/release/snp-vmm" \
    --hypervisor "$hypervisor" \
    --snp certs_file=docs/examples/certs.bin,doorbell=on \
    --payload attest,requests=5,interval_ms=10 \
    "$@"
