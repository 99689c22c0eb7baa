//! Built-in test guests (being moved here from the vmm crate).
