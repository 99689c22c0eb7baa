#!/usr/bin/env bash
# Applies the patch series in patches/ to the pinned Cloud Hypervisor source,
# builds the patched cloud-hypervisor and ch-remote for KVM and for MSHV, runs
# Cloud Hypervisor's unit tests of the crates the series touches, runs its
# clippy with its lints, and runs this repository's end-to-end test of the
# patched binaries (tests/ch_plugin.rs). Prints how long each step took.
#
#   integrations/cloud-hypervisor/build-and-test.sh
#
# Environment:
#   CARGO_TARGET_DIR        where the work tree goes: $CARGO_TARGET_DIR/cloud-hypervisor-plugin
#                           (default: target/ in the repository)
#   SNP_CH_THIRD_PARTY      the directory holding the pinned archives (default:
#                           ../shared/third_party beside the repository, or beside
#                           the main checkout of a git worktree)
#   SNP_CH_STEPS            the steps to run, default "apply build test clippy e2e"
#                           (clippy also checks rustfmt and the OpenAPI document
#                           where nightly rustfmt and openapi-spec-validator exist)
#
# The patched tree is unpacked again whenever the archives, the patches or
# this script change; otherwise the last one is reused, so that Cargo only
# rebuilds what changed (in this repository's snp-certs crate, for example).
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

# Features of the two builds, and the clippy runs of Cloud Hypervisor's CI
# (.github/workflows/ci.yaml: "Clippy (kvm + sev_snp)" and
# "Clippy (mshv + igvm + sev_snp)") that cover them.
kvm_features=(--features kvm,sev_snp,igvm)
mshv_features=(--no-default-features --features mshv,sev_snp,igvm)
clippy_runs=("kvm,sev_snp" "mshv,igvm,sev_snp")

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
    timings+=("$(printf '%-44s %4d s' "$name" "$took")")
    echo "<== $name: ${took} s"
}

skip() {
    timings+=("$(printf '%-44s %s' "$1" "skipped: $2")")
    echo "--- $1 skipped: $2"
}

# Cargo on the patched tree, with its own target directory so that its
# features never mix with this repository's builds.
ch_cargo() {
    (cd "$ch" && CARGO_TARGET_DIR=$work/build cargo "$@")
}

inputs_stamp() {
    cat "$ch_archive" "$micro_http_archive" "${patches[@]}" "$0" | sha256sum | cut -d' ' -f1
}

unpack_and_apply() {
    [ -f "$ch_archive" ] || fail "missing $ch_archive (set SNP_CH_THIRD_PARTY to the directory of the pinned archives)"
    [ -f "$micro_http_archive" ] || fail "missing $micro_http_archive"
    [ -e "${patches[0]}" ] || fail "no patches in $here/patches"
    local stamp
    stamp=$(inputs_stamp)
    if [ -f "$work/applied.stamp" ] && [ "$(cat "$work/applied.stamp")" = "$stamp" ] &&
        git -C "$ch" diff --quiet HEAD -- . ':!Cargo.toml' ':!Cargo.lock'; then
        echo "the series is applied already (same archives, patches and script): reusing $ch"
        return
    fi
    rm -rf "$ch" "$work/micro-http" "$work/applied.stamp"
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
    if ! git -C "$ch" -c user.name=build-and-test -c user.email=build-and-test@invalid \
        am -q --whitespace=nowarn "${patches[@]}"; then
        git -C "$ch" am --show-current-patch=diff | head -40 >&2 || true
        git -C "$ch" am --abort || true
        fail "the patch series does not apply to the pinned Cloud Hypervisor source"
    fi
    echo "applied ${#patches[@]} patches:"
    git -C "$ch" log --format='  %s' --reverse HEAD~${#patches[@]}..HEAD
    # micro_http comes from git, which these machines cannot reach: use the
    # pinned copy (a build setting, not part of the series).
    printf '\n[patch."https://github.com/firecracker-microvm/micro-http"]\nmicro_http = { path = "../micro-http" }\n' \
        >>"$ch/Cargo.toml"
    echo "$stamp" >"$work/applied.stamp"
}

build() {
    local name=$1
    shift
    ch_cargo build -p cloud-hypervisor --bins "$@"
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

# Tests that need neither /dev/kvm nor /dev/mshv: the SEV-SNP certificate
# tests of the series (the exit decode and answer on a kvm_run and a GHCB
# page in memory, the option parsing, the API data, the service).
no_hypervisor_tests=(
    snp_certs_service::
    api::unit_tests::test_vm_snp_certs
    api::http::tests::
    config::unit_tests::test_parse_snp_certs
    kvm::x86_64::sev::
    mshv::tests::
    test_snp_certs_data
)

# test_cli_options_sorted fails on the pinned tree whenever sev_snp and igvm
# are both enabled (--igvm is listed before --host-data); the series does
# not touch that order.
known_failures=(--skip unit_tests::test_cli_options_sorted)

unit_tests_kvm() {
    if kvm_usable; then
        ch_cargo test --lib --bins -p hypervisor -p vmm -p cloud-hypervisor "${kvm_features[@]}" \
            -- "${known_failures[@]}"
    else
        echo "NOTE: /dev/kvm is not usable here: running only the tests that need no hypervisor;"
        echo "      Cloud Hypervisor's other unit tests of these crates open /dev/kvm"
        ch_cargo test --lib --bins -p hypervisor -p vmm -p cloud-hypervisor "${kvm_features[@]}" \
            -- "${no_hypervisor_tests[@]}"
    fi
}

unit_tests_mshv() {
    # Most of Cloud Hypervisor's unit tests open the hypervisor; without
    # /dev/mshv only these can run on an MSHV build.
    if [ -e /dev/mshv ]; then
        ch_cargo test --lib -p hypervisor -p vmm "${mshv_features[@]}" -- "${known_failures[@]}"
    else
        echo "NOTE: no /dev/mshv here: running only the tests that need no hypervisor"
        ch_cargo test --lib -p hypervisor -p vmm "${mshv_features[@]}" -- "${no_hypervisor_tests[@]}"
    fi
}

clippy() {
    # Cloud Hypervisor's CI runs these with --locked; the patched tree's
    # Cargo.lock follows this repository's snp-certs crate, whose own
    # dependencies may have moved on since the series was made, so Cargo is
    # allowed to update it here.
    ch_cargo clippy --all --all-targets --no-default-features --tests --examples \
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
    (cd "$root" && SNP_CH_BIN_DIR=$work/bin/kvm cargo test --locked --test ch_plugin -- --ignored)
}

case $steps in *" apply "*) step "apply the series" unpack_and_apply ;; esac
[ -d "$ch" ] || fail "no patched tree in $ch: run with the apply step"

if [[ $steps == *" build "* ]]; then
    step "build (kvm,sev_snp,igvm)" build kvm "${kvm_features[@]}"
    step "build (mshv,sev_snp,igvm)" build mshv "${mshv_features[@]}"
fi

if [[ $steps == *" test "* ]]; then
    step "unit tests (kvm,sev_snp,igvm)" unit_tests_kvm
    step "unit tests (mshv,sev_snp,igvm)" unit_tests_mshv
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
printf '  %-44s %4d s\n' "total" $((SECONDS - script_start))
