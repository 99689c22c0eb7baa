#!/usr/bin/env bash
# Applies the patch series in patches/ to the pinned Cloud Hypervisor source,
# builds the patched cloud-hypervisor and ch-remote for KVM and for MSHV, runs
# Cloud Hypervisor's unit tests of the crates the series touches, runs its
# clippy with its lints on those crates, and runs this repository's
# end-to-end test of the patched binaries (tests/ch_plugin.rs). Prints how
# long each step took.
#
#   integrations/cloud-hypervisor/build-and-test.sh
#
# Environment:
#   CARGO_TARGET_DIR        this repository's target directory (default:
#                           target/ in the repository); the patched tree and
#                           its own target directory go to
#                           $CARGO_TARGET_DIR/cloud-hypervisor-plugin, and the
#                           end-to-end test is built where the rest of this
#                           repository's tests are
#   SNP_CH_THIRD_PARTY      the directory holding the pinned archives (default:
#                           ../shared/third_party beside the repository, or beside
#                           the main checkout of a git worktree)
#   SNP_CH_STEPS            the steps to run, default "apply build test clippy e2e"
#                           (clippy also checks rustfmt and the OpenAPI document
#                           where nightly rustfmt and openapi-spec-validator exist)
#   CARGO_PROFILE_DEV_DEBUG, CARGO_INCREMENTAL
#                           for Cloud Hypervisor's builds only; default 0 and 0
#                           (no debug info, no incremental cache: a build from
#                           scratch is faster, and these binaries are not debugged)
#
# The pinned tree is unpacked again when the archives change, and the
# series applied again when the patches change; otherwise the last tree is
# reused, so that Cargo only rebuilds what changed (in this repository's
# snp-certs crate, for example).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# ../shared/third_party beside the repository; for a git worktree, beside
# its main checkout.
default_third_party() {
    local main
    if [ ! -d "$root/../shared/third_party" ] &&
        main=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) &&
        [ -d "$(dirname "$main")/../shared/third_party" ]; then
        echo "$(dirname "$main")/../shared/third_party"
    else
        echo "$root/../shared/third_party"
    fi
}
third_party=${SNP_CH_THIRD_PARTY:-$(default_third_party)}
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
work=$target/cloud-hypervisor-plugin
ch=$work/cloud-hypervisor
steps=" ${SNP_CH_STEPS:-apply build test clippy e2e} "

ch_archive=$third_party/cloud-hypervisor-ae44c29.tar.gz
micro_http_archive=$third_party/micro-http-7975fe0.tar.gz
patches=("$here"/patches/*.patch)

# The two feature sets, and the clippy runs of Cloud Hypervisor's CI
# (.github/workflows/ci.yaml: "Clippy (kvm + sev_snp)" and
# "Clippy (mshv + igvm + sev_snp)") that cover them.
kvm_features=(--features kvm,sev_snp,igvm)
mshv_features=(--no-default-features --features mshv,sev_snp,igvm)
clippy_runs=("kvm,sev_snp" "mshv,igvm,sev_snp")

# The crates the series touches: their unit tests run, clippy lints them.
touched=(-p hypervisor -p vmm -p cloud-hypervisor)

script_start=$SECONDS
timings=()

fail() {
    echo "build-and-test: $*" >&2
    exit 1
}

# step NAME COMMAND...: runs COMMAND, records how long it took.
step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    local took=$((SECONDS - start))
    timings+=("$(printf '%-52s %4d s' "$name" "$took")")
    echo "<== $name: ${took} s"
}

skip() {
    timings+=("$(printf '%-52s %s' "$1" "skipped: $2")")
    echo "--- $1 skipped: $2"
}

# Cargo on the patched tree, with its own target directory so that its
# features never mix with this repository's builds. Only these builds get
# the CI settings (debug info and incremental compilation off): this
# repository's own builds keep theirs, so the end-to-end test reuses what
# its test run built.
#
# Cloud Hypervisor's integration-test helpers (test_infra, a dev-dependency
# of its cloud-hypervisor crate, and so part of that crate's unit-test
# builds) build OpenSSL from source for ssh2 unless told otherwise: with the
# system's OpenSSL there (pkg-config finds it), use it.
ch_cargo() {
    local openssl=()
    if pkg-config --exists openssl 2>/dev/null; then
        openssl=(OPENSSL_NO_VENDOR=1)
    fi
    (cd "$ch" && env "${openssl[@]}" CARGO_TARGET_DIR="$work/build" \
        CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}" \
        CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}" cargo "$@")
}

# The build setting unpack_and_apply adds to the patched tree.
micro_http_patch='
[patch."https://github.com/firecracker-microvm/micro-http"]
micro_http = { path = "../micro-http" }'

# What the unpacked tree and the applied series are made from.
archives_stamp() {
    cat "$ch_archive" "$micro_http_archive" | sha256sum | cut -d' ' -f1
}
series_stamp() {
    { cat "${patches[@]}"; echo "$micro_http_patch"; } | sha256sum | cut -d' ' -f1
}

# Unpacks the pinned tree (when there is none, or the archives changed)
# and applies the series. An unpacked tree is reused: the series is applied
# again on its pinned commit (when the patches changed), and git rewrites
# only the files whose content changes, so Cargo rebuilds only the crates
# those belong to (and what depends on them).
unpack_and_apply() {
    [ -f "$ch_archive" ] || fail "missing $ch_archive (set SNP_CH_THIRD_PARTY to the directory of the pinned archives)"
    [ -f "$micro_http_archive" ] || fail "missing $micro_http_archive"
    [ -e "${patches[0]}" ] || fail "no patches in $here/patches"
    local archives series
    archives=$(archives_stamp)
    series=$(series_stamp)
    if [ "$(cat "$work/archives.stamp" 2>/dev/null)" = "$archives" ] &&
        git -C "$ch" rev-parse -q --verify pinned >/dev/null 2>&1; then
        if [ "$(cat "$work/applied.stamp" 2>/dev/null)" = "$series" ] &&
            git -C "$ch" diff --quiet HEAD -- . ':!Cargo.toml' ':!Cargo.lock'; then
            echo "the series is applied already (same archives and patches): reusing $ch"
            return
        fi
        echo "applying the series again to the pinned tree in $ch"
        rm -f "$work/applied.stamp"
        git -C "$ch" am --abort >/dev/null 2>&1 || true
        git -C "$ch" reset -q --hard pinned
        git -C "$ch" clean -q -f -d
    else
        rm -rf "$ch" "$work/micro-http" "$work/archives.stamp" "$work/applied.stamp"
        mkdir -p "$work"
        tar -xzf "$ch_archive" -C "$work"
        tar -xzf "$micro_http_archive" -C "$work"
        # The series depends on this repository's snp-certs crate by path, as
        # ../../snp-certs-vmm/snp-certs from the vmm crate: a checkout beside
        # the Cloud Hypervisor tree.
        ln -sfn "$root" "$work/snp-certs-vmm"
        git -C "$ch" init -q
        git -C "$ch" add -A
        # Cloud Hypervisor's .gitignore leaves out Cargo.lock; the series changes it.
        git -C "$ch" add -f Cargo.lock
        git -C "$ch" -c user.name=pinned -c user.email=pinned@invalid \
            commit -q -m "Cloud Hypervisor ae44c29 (pinned)"
        git -C "$ch" tag pinned
        echo "$archives" >"$work/archives.stamp"
    fi
    if ! git -C "$ch" -c user.name=build-and-test -c user.email=build-and-test@invalid \
        am -q --whitespace=nowarn "${patches[@]}"; then
        git -C "$ch" am --show-current-patch=diff | head -40 >&2 || true
        git -C "$ch" am --abort || true
        fail "the patch series does not apply to the pinned Cloud Hypervisor source"
    fi
    echo "applied ${#patches[@]} patches:"
    git -C "$ch" log --format='  %s' --reverse pinned..HEAD
    # micro_http comes from git, which these machines cannot reach: use the
    # pinned copy (a build setting, not part of the series).
    printf '%s\n' "$micro_http_patch" >>"$ch/Cargo.toml"
    echo "$series" >"$work/applied.stamp"
}

# Builds cloud-hypervisor and ch-remote and, in the same Cargo run, the
# unit-test binaries of the touched crates. One run, because building the
# tests turns on the features the crates' dev-dependencies ask of shared
# dependencies (bitflags' std, through tempfile): a separate `cargo build`
# of the binaries would build vmm and everything it shares with them twice.
# The integration test integration_cvm is there for Cargo to build the
# binaries themselves (it compiles to nothing outside Cloud Hypervisor's
# test environment); it is not run.
build() {
    local name=$1
    shift
    ch_cargo test --no-run --lib --bins --test integration_cvm "${touched[@]}" "$@"
    mkdir -p "$work/bin/$name"
    cp "$work/build/debug/cloud-hypervisor" "$work/build/debug/ch-remote" "$work/bin/$name/"
    "$work/bin/$name/cloud-hypervisor" --help | grep -q -- "--snp-certs" ||
        fail "the $name cloud-hypervisor --help does not name --snp-certs"
    "$work/bin/$name/ch-remote" --help | grep -q "certs_file" ||
        fail "the $name ch-remote --help does not name the certs options"
    echo "built $work/bin/$name/{cloud-hypervisor,ch-remote}"
}

kvm_usable() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ]
}

# The unit tests of the libraries that need neither /dev/kvm nor
# /dev/mshv: all of the hypervisor crate's, and in vmm the SEV-SNP
# certificate tests of the series (the service, the vCPU side with its
# seccomp filter, the option parsing, the API data and statuses).
no_hypervisor_tests=(
    arch::x86::
    kvm::x86_64::
    mshv::
    snp_certs_service::
    snp_certs_vcpu::
    api::unit_tests::test_vm_snp_certs
    api::http::tests::
    config::unit_tests::test_parse_snp_certs
)

# test_cli_options_sorted fails on the pinned tree whenever sev_snp and igvm
# are both enabled (--igvm is listed before --host-data); the series does
# not touch that order.
known_failures=(--skip unit_tests::test_cli_options_sorted)

# unit_tests DEVICE FEATURES...: the unit tests of the touched crates. The
# binaries' tests (command-line parsing) need no hypervisor; most of vmm's
# other tests open DEVICE.
unit_tests() {
    local device=$1
    shift
    if [ -r "$device" ] && [ -w "$device" ]; then
        ch_cargo test --lib --bins "${touched[@]}" "$@" -- "${known_failures[@]}"
    else
        echo "NOTE: $device is not usable here: of the libraries' tests, only those that need no"
        echo "      hypervisor run; Cloud Hypervisor's other unit tests of vmm open $device"
        ch_cargo test --bins "${touched[@]}" "$@" -- "${known_failures[@]}"
        ch_cargo test --lib "${touched[@]}" "$@" -- "${no_hypervisor_tests[@]}"
    fi
}

# Cloud Hypervisor's CI runs these on the whole workspace (--all) with
# --locked; here they lint the crates the series touches, all their targets
# (the crates they depend on are compiled, not linted: the series does not
# change them). The patched tree's Cargo.lock follows this repository's
# snp-certs crate, whose own dependencies may have moved on since the series
# was made, so Cargo is allowed to update it here.
clippy() {
    ch_cargo clippy "${touched[@]}" --all-targets --no-default-features --tests --examples \
        --features "$1" -- -D warnings
}

openapi_check() {
    # Cloud Hypervisor's CI validates the document with openapi-generator;
    # openapi-spec-validator checks the same OpenAPI 3 rules.
    python3 - "$ch/vmm/src/api/openapi/cloud-hypervisor.yaml" <<'PY'
import sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename
spec, _ = read_from_filename(sys.argv[1])
validate(spec)
paths = spec["paths"]
assert "get" in paths["/vm.snp-certs"] and "put" in paths["/vm.snp-certs"], "no /vm.snp-certs"
assert "snp_certs" in spec["components"]["schemas"]["VmConfig"]["properties"], "no VmConfig.snp_certs"
print(f"{sys.argv[1]}: a valid OpenAPI document with /vm.snp-certs and VmConfig.snp_certs")
PY
}

rustfmt_check() {
    # Cloud Hypervisor formats with nightly-only rustfmt options.
    ch_cargo +nightly fmt --all -- --check
}

end_to_end() {
    # The patched binaries against a real API socket, real certs files and
    # a real management lock (tests/ch_plugin.rs; ignored unless asked for).
    # --workspace resolves features as the workspace's test run does
    # (scripts/test.sh), so after it this builds only the test binary.
    (cd "$root" && SNP_CH_BIN_DIR=$work/bin/kvm \
        cargo test --workspace --locked --test ch_plugin -- --ignored)
}

case $steps in *" apply "*) step "apply the series" unpack_and_apply ;; esac
[ -d "$ch" ] || fail "no patched tree in $ch: run with the apply step"

if [[ $steps == *" build "* ]]; then
    step "build (kvm,sev_snp,igvm): binaries and unit tests" build kvm "${kvm_features[@]}"
fi
if [[ $steps == *" test "* ]]; then
    step "unit tests (kvm,sev_snp,igvm)" unit_tests /dev/kvm "${kvm_features[@]}"
fi
if [[ $steps == *" build "* ]]; then
    step "build (mshv,sev_snp,igvm): binaries and unit tests" build mshv "${mshv_features[@]}"
fi
if [[ $steps == *" test "* ]]; then
    step "unit tests (mshv,sev_snp,igvm)" unit_tests /dev/mshv "${mshv_features[@]}"
fi

if [[ $steps == *" clippy "* ]]; then
    for features in "${clippy_runs[@]}"; do
        step "clippy -D warnings ($features)" clippy "$features"
    done
    if python3 -c 'import openapi_spec_validator' 2>/dev/null; then
        step "OpenAPI document" openapi_check
    else
        skip "OpenAPI document" "python3 has no openapi_spec_validator (pip install openapi-spec-validator)"
    fi
    if (cd "$ch" && cargo +nightly fmt --version >/dev/null 2>&1); then
        step "rustfmt --check (nightly)" rustfmt_check
    else
        skip "rustfmt --check (nightly)" "no nightly rustfmt installed"
    fi
fi

if [[ $steps == *" e2e "* ]]; then
    if kvm_usable; then
        step "end-to-end test (tests/ch_plugin.rs)" end_to_end
    else
        skip "end-to-end test (tests/ch_plugin.rs)" "/dev/kvm is not usable (Cloud Hypervisor opens it at start)"
    fi
fi

echo
echo "build-and-test: done"
printf '  %s\n' "${timings[@]}"
printf '  %-52s %4d s\n' "total" $((SECONDS - script_start))
