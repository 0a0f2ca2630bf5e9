// Unit tests of the driver's internals live with the public-API tests in
// kernels/tests/gemm.rs; this module checks the blocking invariants only.
use super::*;

#[test]
fn nc_is_a_multiple_of_every_nr() {
    fn check<K: MicroKernel>() {
        assert_eq!(K::NC % K::NR, 0);
        assert!(K::MR * K::NR <= MAX_TILE);
    }
    check::<portable::Portable>();
    #[cfg(target_arch = "x86_64")]
    {
        check::<avx2::Avx2Fma>();
        check::<avx512::Avx512>();
    }
    #[cfg(target_arch = "aarch64")]
    check::<neon::Neon>();
}
