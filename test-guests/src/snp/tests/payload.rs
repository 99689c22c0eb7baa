//! The payload: its launch ranges, page tables and vCPU set-up, and a run
//! of the whole VMM on the mock backend.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use event_monitor::EventSender;
use hypervisor::mock::{MockEvent, MockHypervisor};
use hypervisor::{Hypervisor, SnpCertsCompletion, SnpPageType, VmType};
use vmm::backend::Backend;
use vmm::payload::{Payload, VcpuStart};
use vmm_api::VmConfig;

use super::super::layout::{
    self, BUFFER_GPA, CODE_GPA, CODE_MAX_SIZE, PAGE_SIZE, PML4_GPA, PT_GPA, SHARED_PAGES,
};
use super::super::{DEFAULT_C_BIT, MIN_MEMORY, program, snp_payload};
use super::table;
use crate::TestGuests;
use crate::attest::{AttestParams, expected_report_for};

#[test]
fn launch_ranges_are_whole_disjoint_pages_inside_memory() {
    let payload = snp_payload(AttestParams::default(), DEFAULT_C_BIT).unwrap();
    let mut ranges = payload.snp_launch_ranges();
    for r in &ranges {
        assert_eq!(r.gpa % PAGE_SIZE, 0, "{r:?}");
        assert!(r.len > 0 && r.len % PAGE_SIZE == 0, "{r:?}");
        assert!(r.gpa + r.len <= payload.min_memory(), "{r:?}");
    }
    let count = |t| ranges.iter().filter(|r| r.page_type == t).count();
    assert_eq!(count(SnpPageType::Secrets), 1);
    assert_eq!(
        count(SnpPageType::Cpuid),
        0,
        "the guest never executes CPUID"
    );
    for r in ranges
        .iter()
        .filter(|r| matches!(r.page_type, SnpPageType::Secrets))
    {
        assert_eq!(r.len, PAGE_SIZE);
    }
    ranges.sort_by_key(|r| r.gpa);
    for pair in ranges.windows(2) {
        assert!(pair[0].gpa + pair[0].len <= pair[1].gpa, "{pair:?}");
    }
    // The code and the page tables are measured as loaded; every shared
    // page was launched (validated), so its validation can be rescinded.
    let covered = |gpa: u64, t: SnpPageType| {
        ranges
            .iter()
            .any(|r| r.page_type == t && (r.gpa..r.gpa + r.len).contains(&gpa))
    };
    assert!(covered(CODE_GPA, SnpPageType::Normal));
    assert!(covered(PML4_GPA, SnpPageType::Normal) && covered(PT_GPA, SnpPageType::Normal));
    assert!(SHARED_PAGES.iter().all(|&p| covered(p, SnpPageType::Zero)));
    assert!(program(&AttestParams::default()).unwrap().len() <= CODE_MAX_SIZE);
    assert!(!payload.needs_doorbell() && payload.needs_snp());
    assert_eq!(payload.min_memory(), MIN_MEMORY);
}

fn pte(tables: &[u8], gpa: u64) -> u64 {
    let at = (PT_GPA - PML4_GPA) as usize + (gpa / PAGE_SIZE) as usize * 8;
    u64::from_le_bytes(tables[at..at + 8].try_into().unwrap())
}

#[test]
fn page_tables_set_the_c_bit_on_private_pages_only() {
    for c_bit in [47u8, 51] {
        let c = 1u64 << c_bit;
        let tables = layout::page_tables(c_bit).unwrap();
        assert_eq!(tables.len() as u64, layout::PAGE_TABLES_SIZE);
        assert_eq!(pte(&tables, 0), 0, "page 0 unmapped");
        for page in 1..(MIN_MEMORY / PAGE_SIZE) {
            let gpa = page * PAGE_SIZE;
            let entry = pte(&tables, gpa);
            assert_eq!(entry & !c & !0xfff, gpa, "identity at {gpa:#x}");
            assert_eq!(entry & 3, 3, "present and writable at {gpa:#x}");
            assert_eq!(entry & c != 0, !SHARED_PAGES.contains(&gpa), "{gpa:#x}");
        }
        let word = |i: usize| u64::from_le_bytes(tables[i * 8..i * 8 + 8].try_into().unwrap());
        // PML4[0], PDPT[0], PD[0] point on with the C-bit; PD[1] is the
        // private 2 MiB alias of GPA 0.
        assert_eq!(word(0), layout::PDPT_GPA | 3 | c);
        assert_eq!(word(512), layout::PD_GPA | 3 | c);
        assert_eq!(word(1024), PT_GPA | 3 | c);
        assert_eq!(word(1025), (1 << 7) | 3 | c);
    }
    for bad in [0u8, 31, 52, 63] {
        assert!(layout::page_tables(bad).is_err(), "{bad}");
        assert!(snp_payload(AttestParams::default(), bad).is_err(), "{bad}");
    }
}

#[test]
fn vcpu_zero_starts_in_long_mode_and_the_others_idle() {
    let payload = snp_payload(AttestParams::default(), DEFAULT_C_BIT).unwrap();
    let hv = MockHypervisor::new();
    let log = hv.log();
    let vm = hv.create_vm(VmType::Snp).unwrap();
    let mut vcpu0 = vm.create_vcpu(0).unwrap();
    let mut vcpu1 = vm.create_vcpu(1).unwrap();
    assert_eq!(
        payload.setup_vcpu(0, vcpu0.as_mut()).unwrap(),
        VcpuStart::Run
    );
    assert_eq!(
        payload.setup_vcpu(1, vcpu1.as_mut()).unwrap(),
        VcpuStart::Idle
    );
    let setups: Vec<MockEvent> = log
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                MockEvent::SetupLongMode { .. } | MockEvent::SetupRealMode { .. }
            )
        })
        .collect();
    assert_eq!(
        setups,
        [MockEvent::SetupLongMode {
            vcpu: 0,
            entry: CODE_GPA,
            page_table: PML4_GPA
        }]
    );
    assert!(payload.mock_guest(0).is_some() && payload.mock_guest(1).is_none());
}

#[test]
fn the_whole_vmm_runs_the_twin_on_the_mock_backend() {
    let certs = table([1400, 1700, 1700]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, &certs).unwrap();
    let hv = MockHypervisor::new();
    let log = hv.log();
    let backend = Backend::Mock(hv);
    let factory = TestGuests::new(false);
    // The configuration a user gives: an SNP VM running the SNP guest.
    let config: VmConfig = serde_json::from_value(serde_json::json!({
        "cpus": {"boot_vcpus": 1},
        "memory": {"size": 1 << 20},
        "platform": {"sev_snp": true},
        "snp": {"certs_file": path},
        "payload": {"test_guest": {"kind": "snp-attest"}},
    }))
    .unwrap();
    let mut vm = vmm::vm::Vm::create(
        &backend,
        config,
        EventSender::disabled(),
        &factory,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    vm.boot().unwrap();
    assert!(
        vm.wait_for_end(Duration::from_secs(20)),
        "the guest did not end"
    );
    let info = vm.info();
    assert_eq!(
        info.vcpus[0].state,
        "terminated by the guest (reason 0:128)"
    );
    vm.shutdown();

    let events = log.events();
    let position = |want: &dyn Fn(&MockEvent) -> bool| {
        events
            .iter()
            .position(want)
            .unwrap_or_else(|| panic!("missing event in {events:#?}"))
    };
    // The start-up, in the kernel's order.
    let order = [
        position(&|e| {
            matches!(
                e,
                MockEvent::CreateVm {
                    vm_type: VmType::Snp
                }
            )
        }),
        position(&|e| {
            matches!(
                e,
                MockEvent::MapMemory {
                    guest_memfd: true,
                    ..
                }
            )
        }),
        position(&|e| matches!(e, MockEvent::EnableSnpReqCerts { accepted: true })),
        position(&|e| matches!(e, MockEvent::CreateVcpu { id: 0 })),
        position(&|e| {
            *e == MockEvent::SetupLongMode {
                vcpu: 0,
                entry: CODE_GPA,
                page_table: PML4_GPA,
            }
        }),
        position(&|e| matches!(e, MockEvent::SnpLaunchStart { .. })),
        position(&|e| matches!(e, MockEvent::SnpLaunchUpdate { .. })),
        position(&|e| matches!(e, MockEvent::SnpLaunchFinish { .. })),
        position(&|e| matches!(e, MockEvent::Run { vcpu: 0, .. })),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let updates: Vec<(u64, u64, SnpPageType)> = events
        .iter()
        .filter_map(|e| match e {
            MockEvent::SnpLaunchUpdate {
                gpa,
                len,
                page_type,
            } => Some((*gpa, *len, *page_type)),
            _ => None,
        })
        .collect();
    let ranges: Vec<_> = layout::launch_ranges()
        .iter()
        .map(|r| (r.gpa, r.len, r.page_type))
        .collect();
    assert_eq!(updates, ranges);

    // Every shared page converted before the first certificate request.
    let first_request = position(&|e| matches!(e, MockEvent::SnpReqCertsCompleted { .. }));
    for &page in &SHARED_PAGES {
        let converted = position(&|e| {
            *e == MockEvent::SetMemoryAttributes {
                gpa: page,
                len: PAGE_SIZE,
                private: false,
            }
        });
        assert!(converted < first_request, "{page:#x}");
    }
    // The size query, then the delivery, served from the certs file.
    // (KVM ignores npages but with ENOSPC.)
    let served: Vec<(u64, u64, u64)> = log
        .snp_completions(0)
        .into_iter()
        .map(|(r, c)| (r.gpa, r.npages, c.ret))
        .collect();
    assert_eq!(
        served,
        [
            (BUFFER_GPA, 0, SnpCertsCompletion::RET_ENOSPC),
            (BUFFER_GPA, 2, SnpCertsCompletion::RET_OK),
        ]
    );
    assert_eq!(log.snp_completions(0)[0].1.npages, 2);
    // The report matches what was delivered; the termination is last.
    let records = factory.last_log().unwrap().records();
    assert_eq!(records.len(), 1);
    assert!(records[0].matches, "{:?}", records[0]);
    let (entries, table_len, checksum) = expected_report_for(&certs).unwrap();
    let r = records[0].report;
    assert_eq!(
        (r.entries, r.table_len, r.checksum),
        (entries, table_len, checksum)
    );
    let last_exit = events
        .iter()
        .rev()
        .find_map(|e| match e {
            MockEvent::Exit { vcpu: 0, exit } => Some(exit.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        last_exit,
        hypervisor::VmExit::Terminated {
            reason_set: 0,
            reason_code: super::super::ghcb::TERM_DONE
        }
    );
}

/// On an SNP host without the certificate exit (Linux before 7.0) the VM
/// runs, says requests do not reach the VMM, and refuses a certs file at
/// creation and over the API.
#[test]
fn a_host_without_the_certificate_exit_refuses_certs_files() {
    use vmm::api_impl::Vmm;
    use vmm_api::{SnpCertsUpdate, VmmAction, VmmApi, VmmData};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, table([1400, 1700, 1700])).unwrap();
    let config = |certs: Option<&std::path::Path>| -> VmConfig {
        serde_json::from_value(serde_json::json!({
            "memory": {"size": 1 << 20},
            "platform": {"sev_snp": true},
            "snp": {"certs_file": certs},
            "payload": {"test_guest": {"kind": "snp-attest"}},
        }))
        .unwrap()
    };
    let vmm = Vmm::new(
        Backend::Mock(MockHypervisor::new().with_snp_req_certs(false)),
        EventSender::disabled(),
        Arc::new(TestGuests::new(false)),
    );
    let err = vmm.create_vm(config(Some(&path))).unwrap_err();
    assert!(
        err.to_string().contains("KVM_SEV_SNP_ENABLE_REQ_CERTS"),
        "{err}"
    );
    vmm.create_vm(config(None)).unwrap();
    let Ok(VmmData::SnpCerts(info)) = vmm.handle(VmmAction::GetSnpCerts) else {
        panic!("no certs info");
    };
    assert!(!info.requests_reach_vmm);
    let refused = vmm
        .handle(VmmAction::PutSnpCerts(SnpCertsUpdate::set_file(&path)))
        .unwrap_err();
    assert_eq!(refused.kind.status(), 409, "{refused}");
}
