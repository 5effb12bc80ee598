//! The shape of a 2-D convolution, resolved once at load for a fixed input shape.

/// Everything about a convolution's shape that its kernels need, in NCHW / OIHW terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Geometry {
    pub batch: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub groups: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Padding before (top, left); padding after only shows in `oh`/`ow`.
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// Input channels per group.
    pub fn cig(&self) -> usize {
        self.ci / self.groups
    }
    /// Output channels per group.
    pub fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// The reduction length of one output value: input channels per group × taps.
    pub fn k(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.ci * self.in_plane()
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.co, self.oh, self.ow]
    }
    /// Multiply-accumulates per run (for the op's cost and the bench's GMAC).
    pub fn macs(&self) -> usize {
        self.batch * self.co * self.out_plane() * self.k()
    }

    /// Fills `row[..len]` with the input bytes that tap (ky, kx) of channel plane `plane`
    /// reads for output pixels `p0 .. p0 + len` (row-major over the output), `pad` where the
    /// tap falls outside the image. This is one row of the implicit im2col matrix, made with
    /// contiguous copies for stride 1 and a strided loop for wider strides — never one
    /// bounds check per byte.
    pub fn gather_row(
        &self,
        plane: &[u8],
        ky: usize,
        kx: usize,
        p0: usize,
        row: &mut [u8],
        pad: u8,
    ) {
        let (w, h) = (self.w as isize, self.h as isize);
        let total = row.len();
        // One division per call; the run then walks output rows.
        let (mut oy, mut ox0) = (p0 / self.ow, p0 % self.ow);
        let mut off = 0;
        while off < total {
            let len = (self.ow - ox0).min(total - off);
            let dst = &mut row[off..off + len];
            let iy = (oy * self.sh + ky * self.dh) as isize - self.pt as isize;
            if iy < 0 || iy >= h {
                dst.fill(pad);
            } else {
                let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                let ix0 = (ox0 * self.sw + kx * self.dw) as isize - self.pl as isize;
                let n = len as isize;
                // Output columns j whose tap lands inside: 0 <= ix0 + j*s < w.
                let (j0, j1) = if self.sw == 1 {
                    let j0 = (-ix0).clamp(0, n);
                    (j0, (w - ix0).clamp(j0, n))
                } else {
                    let s = self.sw as isize;
                    let j0 = if ix0 >= 0 { 0 } else { (-ix0 + s - 1) / s }.min(n);
                    let j1 = if ix0 >= w { 0 } else { (w - ix0 + s - 1) / s };
                    (j0, j1.clamp(j0, n))
                };
                let (j0, j1) = (j0 as usize, j1 as usize);
                dst[..j0].fill(pad);
                dst[j1..].fill(pad);
                // j1 == j0: every tap of this run falls in the padding.
                if j1 > j0 {
                    let first = (ix0 + j0 as isize * self.sw as isize) as usize;
                    if self.sw == 1 {
                        dst[j0..j1].copy_from_slice(&src[first..first + (j1 - j0)]);
                    } else {
                        for (d, x) in dst[j0..j1]
                            .iter_mut()
                            .zip(src[first..].iter().step_by(self.sw))
                        {
                            *d = *x;
                        }
                    }
                }
            }
            off += len;
            oy += 1;
            ox0 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(sw: usize, pl: usize) -> Geometry {
        Geometry {
            batch: 1,
            ci: 1,
            h: 2,
            w: 5,
            co: 1,
            groups: 1,
            kh: 1,
            kw: 3,
            sh: 1,
            sw,
            dh: 1,
            dw: 1,
            pt: 0,
            pl,
            oh: 2,
            ow: (5 + 2 * pl - 3) / sw + 1,
        }
    }

    #[test]
    fn gathers_rows_with_padding_and_strides() {
        let plane: Vec<u8> = (1..=10).collect();
        let g = geo(1, 1);
        let mut row = vec![0; g.out_plane()];
        g.gather_row(&plane, 0, 0, 0, &mut row, 99);
        assert_eq!(row, [99, 1, 2, 3, 4, 99, 6, 7, 8, 9]);
        g.gather_row(&plane, 0, 2, 0, &mut row, 99);
        assert_eq!(row, [2, 3, 4, 5, 99, 7, 8, 9, 10, 99]);
        let g = geo(2, 1);
        let mut row = vec![0; g.out_plane()];
        g.gather_row(&plane, 0, 0, 0, &mut row, 99);
        assert_eq!(row, [99, 2, 4, 99, 7, 9]);
        g.gather_row(&plane, 0, 1, 1, &mut row[..4], 99);
        assert_eq!(&row[..4], [3, 5, 6, 8]);
    }
}
