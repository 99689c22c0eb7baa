//! Tests of the host check.
