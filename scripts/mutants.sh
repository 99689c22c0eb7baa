#!/usr/bin/env bash
# Mutation testing of the request path with cargo-mutants: each mutant is
# one small change to the code (a condition flipped, a call removed, a
# value replaced); a test must fail for it. See docs/testing.md for what
# each pass covers, the last results, and the mutants known to be
# equivalent (no test can tell them from the code: they count as such,
# not as missed).
#
# Usage:
#   scripts/mutants.sh                 the full pass: every group below
#   scripts/mutants.sh --ci            the bounded pass for CI: the lease
#                                      protocol (vcpu_runner) and the busy
#                                      budget (budget.rs and serve's budget
#                                      decisions)
#   scripts/mutants.sh --group NAME    one group (repeatable): certs, vmm,
#                                      kvm-snp, kernel-model
#   scripts/mutants.sh --shard K/N     slice K (0 to N-1) of N of each group
#                                      (run the N slices in parallel, each
#                                      in its own process)
#   scripts/mutants.sh --list          list the mutants; test nothing
#   scripts/mutants.sh ... -- ARGS     ARGS go to cargo mutants (e.g. -j 2)
#
# Each group mutates one crate's files and runs only the tests that can
# catch them (nextest, which stops at the first failure): that crate's
# unit and integration tests, and for the hypervisor's SNP code also the
# test guests', which run the SNP guest through the kernel model. The kvm_* tests run where /dev/kvm is
# usable and are left out elsewhere, as in scripts/test.sh.
#
# Results go to mutants/<group>[-shard-K]/mutants.out/ in the Cargo
# target directory (CARGO_TARGET_DIR when set; scripts/target-dir.sh),
# and the mutated trees are built in mutants/build[-shard-K]/ there,
# without debug information (smaller and faster to link; no mutant needs
# it). At the end a table per file (caught, missed, unviable, timed out)
# is printed (scripts/mutants_table.py) and saved as mutants/table.md.
#
# Exit status: 0 when every mutant tested was caught (or timed out: the
# change made the tests hang, which is noticed too) or is listed as
# equivalent in docs/testing.md; 1 when one was missed, a run did not
# finish (the tests fail without any mutation, say), or on a usage or
# setup error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '/^# Usage:/,/^# Each group/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

mode=full
groups=()
shard=""
list=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --ci) mode=ci ;;
    --group)
        groups+=("${2:?--group needs a name}")
        shift
        ;;
    --shard)
        shard="${2:?--shard needs K/N}"
        shift
        ;;
    --list) list=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *)
        usage >&2
        exit 1
        ;;
    esac
    shift
done
if [ ${#groups[@]} -eq 0 ]; then
    if [ "$mode" = ci ]; then
        groups=(certs vmm)
    else
        groups=(certs vmm kvm-snp kernel-model)
    fi
fi

# What each group mutates and tests. The bounded pass narrows a group to
# the functions named in its --re.
group_args() {
    case "$1" in
    certs)
        args=(-p snp-certs --test-package snp-certs)
        if [ "$mode" = ci ]; then
            args+=(-f snp-certs/src/budget.rs -f snp-certs/src/serve/mod.rs
                --re 'BusyBudget|serve_shared_only|host_trouble')
        else
            args+=(-f snp-certs/src/budget.rs -f 'snp-certs/src/serve/*.rs'
                -f 'snp-certs/src/file/*.rs' -f 'snp-certs/src/lock/*.rs')
        fi
        ;;
    vmm)
        args=(-p vmm --test-package vmm -f vmm/src/vcpu_runner.rs)
        if [ "$mode" = ci ]; then
            args+=(--re 'VcpuRunner::(serve|answer_kvm|answer_doorbell|after_release|finish)\b')
        else
            args+=(-f vmm/src/certs_service.rs -f vmm/src/exit_dispatch.rs)
        fi
        ;;
    kvm-snp)
        # The certificate exit's decoding and completion, its probe, and
        # the SNP launch on KVM (the commands are built in sev_commands,
        # shared with the kernel model). test-guests runs the SNP test
        # guest (its Rust twin and its machine code) through both.
        args=(-p hypervisor --test-package hypervisor,test-guests
            -f hypervisor/src/kvm/snp.rs -f hypervisor/src/kvm/snp_exits.rs -f hypervisor/src/kvm/vcpu.rs
            -f hypervisor/src/kvm/req_certs_probe.rs -f hypervisor/src/kvm/snp_vm.rs
            -f hypervisor/src/kvm/private_memory.rs -f hypervisor/src/kvm/encrypt_op.rs
            -f hypervisor/src/sev_commands.rs)
        ;;
    kernel-model)
        args=(-p hypervisor --test-package hypervisor,test-guests
            -f 'hypervisor/src/mock/kernel_model/*.rs')
        ;;
    *)
        echo "mutants: no group $1 (certs, vmm, kvm-snp, kernel-model)" >&2
        exit 1
        ;;
    esac
}

# cargo-mutants (pinned) and cargo-nextest.
scripts/setup.sh

test_args=()
if ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
    echo "mutants: /dev/kvm is not usable: the kvm_* tests are left out"
    test_args=(-E 'not test(/(^|::)kvm_/)')
fi

target_dir=$(scripts/target-dir.sh)
suffix=""
if [ -n "$shard" ]; then
    suffix="-shard-${shard%%/*}"
fi
out_root="$target_dir/mutants"
build="$out_root/build$suffix"
mkdir -p "$build"
# Incremental state is per source path, and each run copies the tree to
# a new path: what earlier runs left is never used again.
rm -rf "$build/debug/incremental"

outputs=()
start=$(date +%s)
for group in "${groups[@]}"; do
    group_args "$group"
    if [ -n "$shard" ]; then
        args+=(--shard "$shard")
    fi
    if [ "$list" = 1 ]; then
        cargo mutants --list "${args[@]}" "${extra[@]}"
        continue
    fi
    name="$group"
    if [ "$mode" = ci ]; then
        name="ci-$group"
    fi
    out="$out_root/$name$suffix"
    mkdir -p "$out"
    echo "mutants: $name: cargo mutants ${args[*]} ${extra[*]}"
    group_start=$(date +%s)
    group_status=0
    # A test run longer than a minute is a hang (a group's tests take
    # seconds): the floor keeps a loaded machine from passing a slow run
    # for one.
    CARGO_TARGET_DIR="$build" CARGO_PROFILE_DEV_DEBUG=0 \
        cargo mutants --no-shuffle --minimum-test-timeout 60 --output "$out" \
        "${args[@]}" "${extra[@]}" -- "${test_args[@]}" || group_status=$?
    echo "mutants: $name: cargo mutants exit status $group_status after $(($(date +%s) - group_start)) s"
    outputs+=("$out/mutants.out/outcomes.json")
done

if [ "$list" = 1 ]; then
    exit 0
fi
echo "mutants: ${#groups[@]} group(s) in $(($(date +%s) - start)) s"
# The verdict: cargo mutants' own status says "timed out" (3) even when
# it also missed some, and knows nothing of the equivalent mutants that
# docs/testing.md lists; the table does.
status=0
python3 scripts/mutants_table.py "${outputs[@]}" >"$out_root/table$suffix.md" || status=$?
cat "$out_root/table$suffix.md"
if [ "$status" != 0 ]; then
    echo "mutants: FAILED: a mutant was missed (listed above), or a run did not finish" >&2
fi
exit "$status"
