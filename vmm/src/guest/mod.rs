//! The built-in attestation test guest.
