//! The payload: its launch ranges, page tables and vCPU set-up, and a run
//! of the whole VMM on the mock backend.
