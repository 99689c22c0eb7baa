//! libFuzzer entry point for [`snp_certs_fuzz::serve_path`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snp_certs_fuzz::serve_path(data));
