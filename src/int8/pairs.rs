//! bedside's own x86-64 AVX2 int8 matmul micro-kernel, for CPUs without VNNI.
//!
//! Why it exists: on an AVX2-only x86 (this project's CI machine, an AMD EPYC that exposes
//! no AVX-512/VNNI), tract-linalg 0.23.9's int8 kernels run at 0.55 GMAC/s
//! (`avx2_mmm_i32_8x8`) and 8.3 GMAC/s (`avx_mmm_i32_8x4`, 128-bit), while fp32 runs at
//! about 20 GFLOP/s — int8 would be slower than float. onnxruntime gets its speed there from
//! `VPMADDUBSW`, which saturates (u8×s8 pairs above 32767, see `docs/int8.md`) and so is not
//! exact. This kernel stays exact: both operands are widened to i16 and multiplied in pairs
//! with `VPMADDWD` (two products summed into i32, which cannot overflow for 8-bit inputs).
//!
//! Layouts (K2 = two k per lane):
//! - A (weights, packed once): row tiles of [`MR`] rows; per tile, per k pair, `MR` i32 words
//!   each holding `(a[r][2p] as i16, a[r][2p + 1] as i16)`; rows and k past the end are 0.
//! - B (gathered per chunk, [`super::conv`]): panels of [`NR`] columns; per k pair, `NR`
//!   byte pairs `(b[2p][c], b[2p + 1][c])` — 32 bytes, sign-extended to i16 in the kernel.
//!
//! It is one candidate among tract-linalg's kernels: bedside times them all and keeps the
//! fastest, and the op parity fixtures run with each.

/// Rows of A per tile: 6 rows × 2 ymm of columns = 12 accumulators, plus two B registers and
/// one A broadcast, within the 16 ymm registers.
pub const MR: usize = 6;
/// Columns of B per panel (two ymm of i32).
pub const NR: usize = 16;
/// The name it has among the kernel candidates.
pub const NAME: &str = "bedside_avx2_i16pairs_6x16";

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Bytes of one B panel for a reduction of length `k`.
pub fn panel_bytes(k: usize) -> usize {
    k.div_ceil(2) * 2 * NR
}

/// A (m × k, s8, row-major) packed for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedA {
    m: usize,
    pairs: usize,
    words: Vec<i32>,
}

impl PackedA {
    pub fn new(a: &[i8], m: usize, k: usize) -> PackedA {
        let pairs = k.div_ceil(2);
        let tiles = m.div_ceil(MR);
        let mut words = vec![0i32; tiles * pairs * MR];
        for t in 0..tiles {
            for p in 0..pairs {
                for r in 0..MR {
                    let row = t * MR + r;
                    if row >= m {
                        continue;
                    }
                    let at = |kk: usize| if kk < k { a[row * k + kk] as i16 } else { 0 };
                    let lo = at(2 * p) as u16 as u32;
                    let hi = at(2 * p + 1) as u16 as u32;
                    words[(t * pairs + p) * MR + r] = (lo | (hi << 16)) as i32;
                }
            }
        }
        PackedA { m, pairs, words }
    }
}

/// `c[r][col] = Σk a[r][k]·b[k][col]` for all rows of `a` and columns `0..n` of the panels
/// in `b`; `c` is row-major with row stride `c_stride` (≥ n).
pub fn matmul(a: &PackedA, b: &[u8], n: usize, c: &mut [i32], c_stride: usize) {
    assert!(available(), "AVX2 kernel called on a CPU without AVX2");
    let panel = a.pairs * 2 * NR;
    assert!(b.len() >= n.div_ceil(NR) * panel, "B too short");
    assert!(c.len() >= (a.m - 1) * c_stride + n, "C too short");
    // SAFETY: AVX2 checked above; every index below stays inside the asserted lengths.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::matmul(a, b, n, c, c_stride);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR, PackedA};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn matmul(a: &PackedA, b: &[u8], n: usize, c: &mut [i32], c_stride: usize) {
        let panel = a.pairs * 2 * NR;
        let tiles = a.m.div_ceil(MR);
        for j in 0..n.div_ceil(NR) {
            let bp = unsafe { b.as_ptr().add(j * panel) };
            let cols = (n - j * NR).min(NR);
            for t in 0..tiles {
                let ap = unsafe { a.words.as_ptr().add(t * a.pairs * MR) };
                let mut acc = [[_mm256_setzero_si256(); 2]; MR];
                for p in 0..a.pairs {
                    unsafe {
                        let bb = bp.add(p * 2 * NR);
                        let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bb as *const __m128i));
                        let b1 =
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(bb.add(16) as *const __m128i));
                        let aw = ap.add(p * MR);
                        for (r, acc_r) in acc.iter_mut().enumerate() {
                            let av = _mm256_set1_epi32(*aw.add(r));
                            acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(av, b0));
                            acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(av, b1));
                        }
                    }
                }
                let rows = (a.m - t * MR).min(MR);
                for (r, acc_r) in acc.iter().enumerate().take(rows) {
                    let dst = &mut c[(t * MR + r) * c_stride + j * NR..];
                    if cols == NR {
                        unsafe {
                            _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, acc_r[0]);
                            _mm256_storeu_si256(dst.as_mut_ptr().add(8) as *mut __m256i, acc_r[1]);
                        }
                    } else {
                        let mut tmp = [0i32; NR];
                        unsafe {
                            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, acc_r[0]);
                            _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, acc_r[1]);
                        }
                        dst[..cols].copy_from_slice(&tmp[..cols]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_plain_matmul_with_ragged_edges() {
        if !available() {
            return;
        }
        let (m, k, n) = (13, 37, 41);
        let a: Vec<i8> = (0..m * k).map(|i| ((i * 97 % 256) as u8) as i8).collect();
        let bm: Vec<i8> = (0..k * n).map(|i| ((i * 53 % 256) as u8) as i8).collect();
        // B in the K2 panel layout.
        let panel = panel_bytes(k);
        let mut b = vec![0u8; n.div_ceil(NR) * panel];
        for kk in 0..k {
            for col in 0..n {
                let (j, cc) = (col / NR, col % NR);
                b[j * panel + (kk / 2) * 2 * NR + cc * 2 + kk % 2] = bm[kk * n + col] as u8;
            }
        }
        let pa = PackedA::new(&a, m, k);
        let stride = 48;
        let mut c = vec![-1i32; m * stride];
        matmul(&pa, &b, n, &mut c, stride);
        for r in 0..m {
            for col in 0..n {
                let want: i32 = (0..k)
                    .map(|kk| a[r * k + kk] as i32 * bm[kk * n + col] as i32)
                    .sum();
                assert_eq!(c[r * stride + col], want, "c[{r}][{col}]");
            }
            assert!(
                c[r * stride + n..(r + 1) * stride].iter().all(|&v| v == -1),
                "wrote past n"
            );
        }
    }
}
