#!/usr/bin/env bash
# Builds Cloud Hypervisor's own, unmodified `ch-remote` from the pinned
# source archives, for the end-to-end tests that drive snp-vmm with it
# (tests/ch_remote.rs).
#
#   scripts/build-ch-remote.sh          prints the path of the binary
#
# Exit status: 0 built (or already built); 3 the pinned archives are not
# there (nothing to build from); anything else the build failed.
#
# * The archives are read from ../shared/third_party beside the repository
#   (or, in a git worktree, beside the main checkout); CH_THIRD_PARTY=DIR
#   overrides: cloud-hypervisor-ae44c29.tar.gz and micro-http-7975fe0.tar.gz,
#   CH's one git dependency.
# * They are unpacked under ${CARGO_TARGET_DIR:-target}/ch-remote/src; the
#   only change to the copy is a [patch] section in CH's workspace
#   Cargo.toml that points micro_http at the pinned micro-http tree, as
#   the archives' README says. Not one line of CH's code changes.
# * Every other dependency comes from crates.io (the one network access).
# * The binary ends up at ${CARGO_TARGET_DIR:-target}/ch-remote/ch-remote;
#   the last line printed is its path.
# * Idempotent: an unpacked tree is reused while the archives are the same,
#   and a binary built from them is reused without calling cargo.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

third_party="${CH_THIRD_PARTY:-}"
if [ -z "$third_party" ]; then
    third_party="$repo/../shared/third_party"
    main_checkout="$(cd "$repo" && git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
    if [ ! -d "$third_party" ] && [ -n "$main_checkout" ]; then
        third_party="$(dirname "$main_checkout")/../shared/third_party"
    fi
fi
ch_archive="$third_party/cloud-hypervisor-ae44c29.tar.gz"
http_archive="$third_party/micro-http-7975fe0.tar.gz"
for archive in "$ch_archive" "$http_archive"; do
    if [ ! -r "$archive" ]; then
        echo "build-ch-remote: $archive not found (set CH_THIRD_PARTY to the directory holding the pinned archives)" >&2
        exit 3
    fi
done

target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
out="$target/ch-remote"
src="$out/src"
binary="$out/ch-remote"
# What the tree and the binary were made from: the archives' checksums.
stamp="$(sha256sum "$ch_archive" "$http_archive" | awk '{print $1}' | tr '\n' ' ')"

if [ -x "$binary" ] && [ "$(cat "$out/built-from" 2>/dev/null)" = "$stamp" ]; then
    echo "$binary"
    exit 0
fi

if [ "$(cat "$src/unpacked-from" 2>/dev/null)" != "$stamp" ]; then
    echo "build-ch-remote: unpacking the pinned sources into $src" >&2
    rm -rf "$src"
    mkdir -p "$src"
    tar xzf "$ch_archive" -C "$src"
    tar xzf "$http_archive" -C "$src"
    printf '\n[patch."https://github.com/firecracker-microvm/micro-http"]\nmicro_http = { path = "../micro-http" }\n' \
        >>"$src/cloud-hypervisor/Cargo.toml"
    echo "$stamp" >"$src/unpacked-from"
fi

echo "build-ch-remote: building ch-remote (a few minutes the first time)" >&2
start=$SECONDS
# CH's build script names the version after `git describe`; the unpacked
# tree has no .git of its own, and must not describe this repository's.
(
    cd "$src/cloud-hypervisor"
    # No debug info: a smaller, faster build of a binary nobody debugs here.
    GIT_DIR=/nonexistent CARGO_TARGET_DIR="$out/target" CARGO_PROFILE_DEV_DEBUG=0 \
        cargo build --quiet -p cloud-hypervisor --bin ch-remote
)
cp "$out/target/debug/ch-remote" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "$stamp" >"$out/built-from"
echo "build-ch-remote: built in $((SECONDS - start)) s" >&2
echo "$binary"
