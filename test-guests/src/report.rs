//! The report and delay ports of the built-in test guests, and the report
//! they write.
//!
//! Both ports take 32-bit `OUT`s (`out dx, eax`), little endian:
//!
//! * [`REPORT_PORT`]: the guest writes the GPA of a [`GuestReport`] after
//!   each certificate request, so the VMM can log what the guest saw and
//!   check it against what was delivered.
//! * [`DELAY_PORT`]: the guest asks to be paused for the given number of
//!   milliseconds (its "sleep"); the vCPU thread pauses, and a VM shutdown
//!   cuts the pause short.
//!
//! The guest hashes the table it received with FNV-1a 32 ([`fnv1a32`]),
//! which is simple enough to write in a few instructions of machine code.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

/// Port the guest writes the GPA of a [`GuestReport`] to.
pub const REPORT_PORT: u16 = 0x5e4;
/// Port the guest writes a pause in milliseconds to.
pub const DELAY_PORT: u16 = 0x5e8;
/// The first port of the test guests' devices and how many there are.
pub const PORTS: (u16, u16) = (REPORT_PORT, 8);

/// Size of a [`GuestReport`] in guest memory.
pub const REPORT_SIZE: usize = 32;

/// What the attestation guest reports after each request: eight
/// little-endian `u32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestReport {
    /// Request number, from 1.
    pub seq: u32,
    /// The final `ret` the guest got for this request.
    pub ret: u32,
    /// The `npages` it asked with in the end.
    pub npages: u32,
    /// How many times it was told busy and retried.
    pub busy_retries: u32,
    /// Entries in the table it received (before the terminator).
    pub entries: u32,
    /// Length of the table it received: the largest `offset + length` of
    /// its entries, or 24 for an empty table (as Linux's configfs-tsm
    /// trims the blob).
    pub table_len: u32,
    /// FNV-1a 32-bit hash of the first `table_len` bytes.
    pub checksum: u32,
    /// [`ReportStatus`] as a number.
    pub status: u32,
}

/// How one request of the attestation guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ReportStatus {
    /// Certificates received and checked.
    Ok = 0,
    /// Still busy after the guest's retry budget.
    GaveUpBusy = 1,
    /// The table needs more pages than the guest's buffer has.
    TooBig = 2,
    /// `ret` was EIO or another error.
    Failed = 3,
    /// The table it received is malformed (no terminator in the buffer, or
    /// an entry beyond it).
    BadTable = 4,
}

/// FNV-1a 32-bit offset basis.
pub const FNV_OFFSET: u32 = 0x811c_9dc5;
/// FNV-1a 32-bit prime.
pub const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a 32-bit hash, as the attestation guest computes it.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Reads the [`GuestReport`] at `gpa`: eight little-endian `u32`s.
pub fn read_report<M: GuestMemory + ?Sized>(
    memory: &M,
    gpa: u64,
) -> Result<GuestReport, GuestMemoryError> {
    let mut bytes = [0u8; REPORT_SIZE];
    memory.read_slice(&mut bytes, GuestAddress(gpa))?;
    let mut words = bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let mut next = || words.next().unwrap_or_default();
    Ok(GuestReport {
        seq: next(),
        ret: next(),
        npages: next(),
        busy_retries: next(),
        entries: next(),
        table_len: next(),
        checksum: next(),
        status: next(),
    })
}

/// Writes `report` at `gpa`, as the guest does.
pub fn write_report<M: GuestMemory + ?Sized>(
    memory: &M,
    gpa: u64,
    report: &GuestReport,
) -> Result<(), GuestMemoryError> {
    let words = [
        report.seq,
        report.ret,
        report.npages,
        report.busy_retries,
        report.entries,
        report.table_len,
        report.checksum,
        report.status,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    memory.write_slice(&bytes, GuestAddress(gpa))
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn reports_round_trip_through_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let report = GuestReport {
            seq: 1,
            ret: 2,
            npages: 3,
            busy_retries: 4,
            entries: 5,
            table_len: 6,
            checksum: 7,
            status: 8,
        };
        write_report(&mem, 0x100, &report).unwrap();
        assert_eq!(read_report(&mem, 0x100).unwrap(), report);
        assert!(read_report(&mem, 0x1000 - 8).is_err());
    }
}
