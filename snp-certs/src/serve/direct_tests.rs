//! The usual delivery goes straight into the guest's buffer, one copy (a
//! version of the file that validated before, a buffer it fits): seen
//! through guest memory that counts how it is reached. Straight in, the
//! file is read into the backend's mapping (`physical_memory`) or, behind
//! an IOMMU, into the one slice of the buffer, asking a byte more than
//! the table; through the reader's buffer, the table is copied into guest
//! memory afterwards (`get_slices` of exactly the table).

#![allow(clippy::arithmetic_side_effects)]

use std::cell::{Cell, RefCell};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryResult, Permissions,
};

use super::tests::{MIB, memory, read, req, setup};
use super::*;

/// Guest RAM that records how it is reached; `iommu`: it offers no plain
/// backend (`physical_memory` is `None`), as memory behind an IOMMU.
struct Counting {
    inner: GuestMemoryMmap,
    iommu: bool,
    physical: Cell<u32>,
    slices: RefCell<Vec<usize>>,
}

impl Counting {
    fn new(iommu: bool) -> Counting {
        Counting {
            inner: memory(&[(0, MIB)]),
            iommu,
            physical: Cell::new(0),
            slices: RefCell::new(Vec::new()),
        }
    }

    /// What the last request did: backend lookups, slice lengths asked.
    fn take(&self) -> (u32, Vec<usize>) {
        (self.physical.take(), self.slices.take())
    }
}

impl GuestMemory for Counting {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        GuestMemory::check_range(&self.inner, addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, ()>>> {
        self.slices.borrow_mut().push(count);
        GuestMemory::get_slices(&self.inner, addr, count, access)
    }

    fn physical_memory(&self) -> Option<&GuestMemoryMmap> {
        if self.iommu {
            return None;
        }
        self.physical.set(self.physical.get() + 1);
        Some(&self.inner)
    }
}

#[test]
fn a_table_that_validated_goes_straight_into_the_guests_buffer() {
    for (size, npages) in [(5000, 2), (8192, 2), (4096 * 4 - 1, 4)] {
        let s = setup(size);
        let mem = Counting::new(false);
        let mut reader = CertsReader::new();
        let budget = BusyBudget::new();
        // First: validated in the reader's buffer, then copied.
        let out = serve(&mut reader, &s.config, &budget, req(0, npages), &mem);
        assert_eq!((out.kind, out.bytes), (OutcomeKind::Delivered, size));
        drop(out);
        let (_, slices) = mem.take();
        assert_eq!(slices, [size], "{size}: copied from the reader's buffer");
        // Then straight in: one lookup of the backend, no copy.
        mem.inner
            .write_slice(&vec![0xee; size], GuestAddress(0))
            .unwrap();
        let out = serve(&mut reader, &s.config, &budget, req(0, npages), &mem);
        assert_eq!((out.kind, out.bytes), (OutcomeKind::Delivered, size));
        assert_eq!(mem.take(), (1, vec![]), "{size}: straight into the buffer");
        assert_eq!(read(&mem.inner, 0, size), s.bytes);
    }
}

#[test]
fn a_buffer_the_table_does_not_fit_is_not_read_into() {
    let s = setup(5000);
    let mem = Counting::new(false);
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    drop(serve(&mut reader, &s.config, &budget, req(0, 2), &mem));
    mem.take();
    for npages in [0, 1] {
        let out = serve(&mut reader, &s.config, &budget, req(0, npages), &mem);
        assert_eq!((out.kind, out.npages), (OutcomeKind::NeedPages, 2));
        assert_eq!(
            mem.take(),
            (0, vec![]),
            "{npages} pages: guest memory untouched"
        );
    }
}

#[test]
fn behind_an_iommu_the_one_slice_of_the_buffer_is_read_into() {
    let s = setup(5000);
    let mem = Counting::new(true);
    let mut reader = CertsReader::new();
    let budget = BusyBudget::new();
    drop(serve(&mut reader, &s.config, &budget, req(0, 2), &mem));
    // The slice asked a byte more than the table, then the copy.
    assert_eq!(mem.take(), (0, vec![5001, 5000]));
    mem.inner
        .write_slice(&[0xee; 8192], GuestAddress(0))
        .unwrap();
    let out = serve(&mut reader, &s.config, &budget, req(0, 2), &mem);
    assert_eq!((out.kind, out.bytes), (OutcomeKind::Delivered, 5000));
    assert_eq!(mem.take(), (0, vec![5001]), "read into the slice, no copy");
    assert_eq!(read(&mem.inner, 0, 5000), s.bytes);
    assert_eq!(
        read(&mem.inner, 5000, 8),
        [0xee; 8],
        "nothing past the table"
    );
}
