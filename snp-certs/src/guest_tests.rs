use std::cell::RefCell;
use std::fs;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::guid::CertKind;
use crate::lock::{self, LockKind};
use crate::serve::{CertsRequest, GuestFault, OutcomeKind, Problem, Reason, serve};
use crate::table::TableBuilder;
use crate::{BusyBudget, CertsConfig, CertsReader};

/// A writer that records what it was asked to write, as a VMM writing
/// through its hypervisor would see it, and refuses one address.
struct Recorder {
    writes: RefCell<Vec<(u64, Vec<u8>)>>,
    refuse: u64,
}

impl Recorder {
    fn refusing(refuse: u64) -> Recorder {
        Recorder {
            writes: RefCell::new(Vec::new()),
            refuse,
        }
    }
}

impl GuestWrite for Recorder {
    fn write_all_at(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotGuestRam> {
        if gpa == self.refuse {
            return Err(NotGuestRam);
        }
        self.writes.borrow_mut().push((gpa, bytes.to_vec()));
        Ok(())
    }
}

fn req(gpa: u64, npages: u64) -> CertsRequest {
    CertsRequest { gpa, npages }
}

#[test]
fn guest_memory_writes_inside_ram_and_refuses_outside() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
    assert!(mem.writable(0x1000, 16));
    assert_eq!(mem.write_all_at(0x1000, &[7; 16]), Ok(()));
    let mut back = [0u8; 16];
    mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
    assert_eq!(back, [7; 16]);
    assert!(!mem.writable(0x1ff8, 16));
    assert_eq!(mem.write_all_at(0x1ff8, &[9; 16]), Err(NotGuestRam));
    mem.read_slice(&mut back[..8], GuestAddress(0x1ff8))
        .unwrap();
    assert_eq!(back[..8], [0; 8], "a refused write leaves memory untouched");
}

#[test]
fn serve_writes_the_empty_table_through_a_writer_of_its_own_and_fails_on_its_refusal() {
    let writer = Recorder::refusing(0x5000);
    let config = CertsConfig::default();
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    let served = serve(&mut reader, &config, &budget, req(0x3000, 1), &writer);
    assert_eq!(served.kind, OutcomeKind::Delivered);
    assert_eq!(served.reason, Reason::NoCertsFile);
    assert_eq!(*writer.writes.borrow(), vec![(0x3000, vec![0u8; 24])]);

    let refused = serve(&mut reader, &config, &budget, req(0x5000, 1), &writer);
    assert_eq!(refused.kind, OutcomeKind::Failed);
    assert_eq!(refused.reason, Reason::OutsideGuestRam);
    assert!(
        matches!(
            refused.problem,
            Some(Problem::Guest(GuestFault::OutsideRam {
                gpa: 0x5000,
                len: 24
            }))
        ),
        "{:?}",
        refused.problem
    );
}

/// The path a VMM that writes through its hypervisor takes: no direct
/// read into guest memory, the table copied from the reader's buffer,
/// every time (also once the file's version validated), with the lease
/// held after the write.
#[test]
fn a_certs_file_reaches_a_writer_of_its_own_whole_under_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    let mut b = TableBuilder::new();
    let mut vcek = vec![0x5a; 1300];
    vcek[0] = 0x30;
    b.add(CertKind::Vcek, vcek).unwrap();
    let table = b.build().unwrap();
    fs::write(&path, &table).unwrap();
    let config = CertsConfig::with_file(&path);
    let writer = Recorder::refusing(u64::MAX);
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    for round in 0..3 {
        let out = serve(&mut reader, &config, &budget, req(0x8000, 1), &writer);
        assert_eq!(out.kind, OutcomeKind::Delivered, "round {round}");
        assert_eq!(out.reason, Reason::Served);
        assert_eq!(out.bytes, table.len());
        assert!(out.lease.is_some(), "round {round}: no lease");
        let writer_file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(
            !lock::try_lock(&writer_file, LockKind::Exclusive).unwrap(),
            "round {round}: the lease does not hold the shared lock"
        );
        assert_eq!(
            writer.writes.borrow().last(),
            Some(&(0x8000, table.clone())),
            "round {round}"
        );
    }
    assert_eq!(writer.writes.borrow().len(), 3);
}
