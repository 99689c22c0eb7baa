#!/usr/bin/env bash
# Prints the workspace's Cargo target directory, as Cargo itself resolves
# it: CARGO_TARGET_DIR, a `build.target-dir` in a Cargo config file, or
# the workspace's target/ (an absolute path in every case). The other
# scripts take their build outputs, virtual environments and reports from
# there, so a build with CARGO_TARGET_DIR set works the same.
set -euo pipefail
cd "$(dirname "$0")/.."
metadata=$(cargo metadata --format-version 1 --no-deps --locked)
dir=$(printf '%s' "$metadata" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$dir" ]; then
    echo "target-dir.sh: cargo metadata named no target_directory" >&2
    exit 1
fi
printf '%s\n' "$dir"
