#!/usr/bin/env bash
# The main job: boot the built-in attestation guest under KVM (or the mock
# backend where /dev/kvm is missing) and serve it the example certificate
# table in docs/examples/, then print what the guest received.
# Extra arguments go to snp-vmm (e.g. --payload attest,requests=20 -v).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked -p vmm --bin snp-vmm
exec target/release/snp-vmm \
    --snp certs-file=docs/examples/certs.bin,doorbell=on \
    --payload attest,requests=5,interval-ms=10 \
    "$@"
