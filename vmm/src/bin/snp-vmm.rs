//! `snp-vmm`: run a VM that answers SNP certificate requests.

fn main() {}
