//! bedside's quantized convolution: an implicit GEMM over tract-linalg's int8 micro-kernels.
//!
//! tract 0.23.9 lowers every quantized conv to an eager im2col written byte by byte into a
//! fresh buffer, then a matmul (see `docs/int8.md`). This op does the same arithmetic without
//! materialising the im2col matrix:
//!
//! - at load, the weights of each group are shifted to i8 (`w - 128` for u8 weights, the
//!   zero point follows), packed once in the kernel's A layout, and the bias absorbs the
//!   zero-point cross terms: `bias'[o] = bias[o] - x0·Σw[o] + K·k0[o]·x0` (all in the s8 domain);
//! - at run, output pixels are walked in chunks sized so that one chunk of B (K × chunk bytes)
//!   stays in cache; each chunk is gathered straight from the input into the B layout the
//!   kernel reads (`PackedFormat`: k-outer panels; `PackedI8K4`: four k per lane), flipping u8
//!   to s8 on the way and filling out-of-image taps with the input zero point, into a buffer
//!   allocated once;
//! - the kernel writes i32 for the chunk into a small buffer still in cache, and the
//!   requantization (per-tensor or per-channel alike, [`super::requant`]) writes the output.
//!
//! Buffers live in a pool on the op: a run takes one set and gives it back, so after the
//! first run (per concurrent runner) nothing is allocated but the output tensor.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::tract_linalg::mmm::{
    AsInputValue, EagerPackedInput, FusedSpec, MMMInputFormat, MMMInputValue, MatMatMul,
    PackedExoticFact, ScratchSpace,
};
use tract_onnx::prelude::tract_linalg::pack::{PackedFormat, PackedI8K4};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::geometry::Geometry;
use super::requant;
use super::{Int8Error, QuantParams};

/// How many bytes of B one chunk may take: with the i32 tile and A's streaming rows this
/// keeps a chunk inside a 256 KiB L2 (Cortex-A76/A78: 256–512 KiB; x86: ≥ 1 MiB).
const CHUNK_B_BYTES: usize = 96 * 1024;

/// The int8 matmul kernel chosen for one conv, and how its B operand is laid out.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    pub mmm: Box<dyn MatMatMul>,
    pub packing: usize,
    layout: BLayout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BLayout {
    /// `PackedFormat`: for each panel of `r` columns, k-outer, `r` bytes per k.
    KOuter {
        r: usize,
        panel: usize,
        align: usize,
    },
    /// `PackedI8K4`: for each panel, groups of 4 k, each `r` lanes × 4 bytes.
    K4 {
        r: usize,
        panel: usize,
        align: usize,
    },
}

impl BLayout {
    fn r(self) -> usize {
        match self {
            BLayout::KOuter { r, .. } | BLayout::K4 { r, .. } => r,
        }
    }
    fn panel(self) -> usize {
        match self {
            BLayout::KOuter { panel, .. } | BLayout::K4 { panel, .. } => panel,
        }
    }
    fn align(self) -> usize {
        match self {
            BLayout::KOuter { align, .. } | BLayout::K4 { align, .. } => align,
        }
    }
}

impl Kernel {
    /// tract-linalg's pick for an s8×s8→i32 matmul of this shape, with weights packed ahead of
    /// time (no panel extractor), and the B layout it reads.
    pub fn pick(m: usize, k: usize, n: usize) -> Result<Kernel, Int8Error> {
        use tract_onnx::prelude::tract_linalg::mmm::{MmmDispatch, Query};
        let query = Query {
            weight: i8::datum_type().into(),
            activation: i8::datum_type(),
            accumulators: tvec!(i32::datum_type()),
            store: Some(i32::datum_type()),
            allow_extractor: false,
            m: Some(m),
            k: Some(k),
            n: Some(n),
        };
        let (mmm, packing, _) = MmmDispatch::native()
            .pick(&query)
            .ok_or_else(|| Int8Error::Unsupported("no int8 matmul kernel on this CPU".into()))?;
        let b: &dyn MMMInputFormat = &*mmm.packings()[packing].1;
        let layout = if let Some(f) = b.downcast_ref::<PackedFormat>() {
            if f.dt.unquantized() != DatumType::I8 {
                return Err(Int8Error::Unsupported(format!(
                    "kernel {} wants B as {:?}",
                    mmm.name(),
                    f.dt
                )));
            }
            BLayout::KOuter {
                r: f.r,
                panel: f.single_panel_len(k),
                align: f.alignment(),
            }
        } else if let Some(f) = b.downcast_ref::<PackedI8K4>() {
            BLayout::K4 {
                r: f.r,
                panel: f.single_panel_len(k),
                align: f.alignment(),
            }
        } else {
            return Err(Int8Error::Unsupported(format!(
                "kernel {} reads B as {b}, which bedside does not gather",
                mmm.name()
            )));
        };
        Ok(Kernel {
            mmm,
            packing,
            layout,
        })
    }

    pub fn name(&self) -> &str {
        self.mmm.name()
    }
}

/// One set of run buffers. Taken from the op's pool for a run and given back after.
struct Scratch {
    /// B for one chunk, in the kernel's layout (tract's own packed-input type, so the kernel
    /// reads it as it reads tract's).
    b: EagerPackedInput,
    /// Up to four im2col rows of one chunk, before they are interleaved into B.
    rows: Vec<u8>,
    /// i32 result of one chunk, `[cog, chunk]`.
    c: Tensor,
    /// Σ over k of B's column (only when weight zero points are not all zero).
    colsum: Vec<i32>,
    mm: Box<dyn ScratchSpace>,
}

/// The op tract runs in place of a quantized `Conv`.
#[derive(Clone)]
pub struct QConvGemm {
    pub(crate) geo: Geometry,
    kernel: Kernel,
    /// Weights per group, packed once in the kernel's A layout.
    a: Arc<Vec<Box<dyn MMMInputValue>>>,
    q: Arc<QuantParams>,
    /// The s8-domain weight zero point per output channel, when any is non-zero.
    k0: Option<Arc<Vec<i32>>>,
    /// The input's zero point as a byte of the input type (what out-of-image taps read).
    x_pad: u8,
    /// 0x80 for u8 inputs (xor makes them s8), 0 for i8.
    flip: u8,
    chunk: usize,
    out_dt: DatumType,
    pool: Arc<Mutex<Vec<Scratch>>>,
}

impl std::fmt::Debug for QConvGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QConvGemm")
            .field("geo", &self.geo)
            .field("kernel", &self.kernel.name())
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl PartialEq for QConvGemm {
    fn eq(&self, other: &Self) -> bool {
        self.geo == other.geo && Arc::ptr_eq(&self.a, &other.a) && Arc::ptr_eq(&self.q, &other.q)
    }
}
impl Eq for QConvGemm {}

impl QConvGemm {
    /// Builds the op from the conv's shape, its raw weights (OIHW, u8 or i8 as bytes) and
    /// quantization parameters.
    pub fn new(
        geo: Geometry,
        weights: &[u8],
        w_signed: bool,
        x_signed: bool,
        x0: i32,
        k0: &[i32],
        q: QuantParams,
        out_dt: DatumType,
    ) -> Result<QConvGemm, Int8Error> {
        let (cog, k, groups) = (geo.cog(), geo.k(), geo.groups);
        let kernel = Kernel::pick(cog, k, geo.out_plane())?;
        let tract = |e: TractError| Int8Error::Tract(format!("{e:#}"));
        // Everything below happens in the s8 domain: u8 values and zero points move by -128.
        let w_shift = if w_signed { 0 } else { 128 };
        let x0s = if x_signed { x0 } else { x0 - 128 };
        let mut bias = q.bias.clone();
        let mut k0s = vec![0i32; geo.co];
        let mut a = Vec::with_capacity(groups);
        for g in 0..groups {
            let mut wg = Vec::with_capacity(cog * k);
            for o in g * cog..(g + 1) * cog {
                let raw = &weights[o * k..(o + 1) * k];
                let mut sum = 0i32;
                for &b in raw {
                    let v = if w_signed {
                        b as i8 as i32
                    } else {
                        b as i32 - w_shift
                    };
                    sum += v;
                    wg.push(v as i8);
                }
                let z = k0[if k0.len() == 1 { 0 } else { o }] - w_shift;
                k0s[o] = z;
                bias[o] = bias[o] - x0s * sum + (k as i32) * z * x0s;
            }
            let t = Tensor::from_shape(&[cog, k], &wg).map_err(tract)?;
            a.push(
                kernel.mmm.packings()[kernel.packing]
                    .0
                    .prepare_one(&t, 1, 0)
                    .map_err(tract)?,
            );
        }
        let r = kernel.layout.r();
        let chunk = (CHUNK_B_BYTES / k.max(1)).max(r) / r * r;
        // No point in a chunk wider than the image (rounded up to whole panels).
        let chunk = chunk.min(geo.out_plane().div_ceil(r) * r).max(r);
        let q = QuantParams { bias, ..q };
        Ok(QConvGemm {
            geo,
            kernel,
            a: Arc::new(a),
            q: Arc::new(q),
            k0: k0s.iter().any(|&z| z != 0).then(|| Arc::new(k0s)),
            x_pad: x0 as u8,
            flip: if x_signed { 0 } else { 0x80 },
            chunk,
            out_dt,
            pool: Arc::default(),
        })
    }

    pub fn kernel_name(&self) -> &str {
        self.kernel.name()
    }

    fn scratch(&self) -> TractResult<Scratch> {
        let layout = self.kernel.layout;
        let panels = self.chunk / layout.r();
        let format: Box<dyn MMMInputFormat> =
            self.kernel.mmm.packings()[self.kernel.packing].1.clone();
        // Zeroed once: lanes past K (K4) and past the last column are never written and
        // must stay finite for the kernel; they multiply A's zero padding.
        let mut blob =
            unsafe { Blob::new_for_size_and_align(panels * layout.panel(), layout.align()) };
        blob.as_bytes_mut().fill(0);
        let b = EagerPackedInput {
            fact: PackedExoticFact {
                format,
                mn: self.chunk.to_dim(),
                k: self.geo.k(),
            },
            packed: Arc::new(blob),
            panel_bytes: layout.panel(),
            mn: self.chunk,
        };
        Ok(Scratch {
            b,
            rows: vec![0; 4 * self.chunk],
            c: Tensor::zero::<i32>(&[self.geo.cog(), self.chunk])?,
            colsum: vec![0; self.chunk],
            mm: unsafe { self.kernel.mmm.allocate_scratch_space() },
        })
    }

    /// Writes chunk `p0 .. p0 + n` of group `g`'s im2col matrix into `s.b`.
    fn gather(&self, x: &[u8], p0: usize, n: usize, s: &mut Scratch) {
        let geo = &self.geo;
        let (kh, kw, plane) = (geo.kh, geo.kw, geo.in_plane());
        let k = geo.k();
        let tap = |kk: usize| (kk / (kh * kw), (kk / kw) % kh, kk % kw);
        let blob = Arc::get_mut(&mut s.b.packed).expect("B is owned by this scratch");
        let b = blob.as_bytes_mut();
        let layout = self.kernel.layout;
        let (r, panel) = (layout.r(), layout.panel());
        let flip = self.flip;
        let sums = self.k0.is_some();
        if sums {
            s.colsum[..n].fill(0);
        }
        let (full, rest) = (n / r, n % r);
        match layout {
            BLayout::KOuter { .. } => {
                let row = &mut s.rows[..n];
                for kk in 0..k {
                    let (c, ky, kx) = tap(kk);
                    geo.gather_row(&x[c * plane..(c + 1) * plane], ky, kx, p0, row, self.x_pad);
                    if sums {
                        add_col_sums(&mut s.colsum[..n], row, flip);
                    }
                    for j in 0..full {
                        let dst = &mut b[j * panel + kk * r..j * panel + kk * r + r];
                        xor_copy(dst, &row[j * r..j * r + r], flip);
                    }
                    if rest > 0 {
                        let dst = &mut b[full * panel + kk * r..full * panel + kk * r + rest];
                        xor_copy(dst, &row[full * r..n], flip);
                    }
                }
            }
            BLayout::K4 { .. } => {
                for kb in 0..k.div_ceil(4) {
                    let lanes = (k - kb * 4).min(4);
                    for t in 0..lanes {
                        let (c, ky, kx) = tap(kb * 4 + t);
                        let row = &mut s.rows[t * self.chunk..t * self.chunk + n];
                        geo.gather_row(&x[c * plane..(c + 1) * plane], ky, kx, p0, row, self.x_pad);
                        if sums {
                            add_col_sums(&mut s.colsum[..n], row, flip);
                        }
                    }
                    // Lanes past K stay as the zeroed buffer left them... unless an earlier
                    // chunk wrote them: it never does, k is the same for every chunk.
                    let rows = &s.rows;
                    let row = |t: usize| &rows[t * self.chunk..t * self.chunk + n];
                    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                    for j in 0..n.div_ceil(r) {
                        let cols = (n - j * r).min(r);
                        let dst = &mut b[j * panel + kb * 4 * r..j * panel + kb * 4 * r + 4 * cols];
                        let src = j * r..j * r + cols;
                        match lanes {
                            4 => interleave4(
                                dst,
                                &r0[src.clone()],
                                &r1[src.clone()],
                                &r2[src.clone()],
                                &r3[src],
                                flip,
                            ),
                            _ => {
                                for (ci, d) in dst.chunks_exact_mut(4).enumerate() {
                                    for t in 0..lanes {
                                        d[t] = row(t)[j * r + ci] ^ flip;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        s.b.mn = n;
        s.b.fact.mn = n.to_dim();
    }

    fn run(&self, x: &[u8], out: &mut [u8], s: &mut Scratch) -> TractResult<()> {
        let geo = &self.geo;
        let (cog, opl) = (geo.cog(), geo.out_plane());
        let c_spec = unsafe {
            self.kernel
                .mmm
                .c_from_data_and_strides(4, self.chunk as isize, 1)
        };
        for batch in 0..geo.batch {
            for g in 0..geo.groups {
                let xg = &x[(batch * geo.ci + g * geo.cig()) * geo.in_plane()..];
                let out_g = &mut out[(batch * geo.co + g * cog) * opl..];
                let mut p0 = 0;
                while p0 < opl {
                    let n = self.chunk.min(opl - p0);
                    self.gather(xg, p0, n, s);
                    let store = unsafe { c_spec.wrap(&s.c.view()) };
                    let specs = [
                        FusedSpec::AddMatMul {
                            a: AsInputValue::Borrowed(&*self.a[g]),
                            b: AsInputValue::Borrowed(&s.b),
                            packing: self.kernel.packing,
                        },
                        FusedSpec::Store(store),
                    ];
                    unsafe {
                        self.kernel
                            .mmm
                            .run_with_scratch_space(cog, n, &mut *s.mm, &specs)?
                    };
                    let c = unsafe { s.c.as_slice_unchecked::<i32>() };
                    for o in 0..cog {
                        let oc = g * cog + o;
                        let acc = &c[o * self.chunk..o * self.chunk + n];
                        let dst = &mut out_g[o * opl + p0..o * opl + p0 + n];
                        let (add, scale) = (self.q.bias[oc], self.q.scale[oc]);
                        match &self.k0 {
                            None => requant::row(acc, add, scale, self.q.range, dst),
                            Some(k0) => requant::row_with_cols(
                                acc,
                                add,
                                k0[oc],
                                &s.colsum[..n],
                                scale,
                                self.q.range,
                                dst,
                            ),
                        }
                    }
                    p0 += n;
                }
            }
        }
        Ok(())
    }
}

fn xor_copy(dst: &mut [u8], src: &[u8], flip: u8) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s ^ flip;
    }
}

fn add_col_sums(sums: &mut [i32], row: &[u8], flip: u8) {
    for (s, &v) in sums.iter_mut().zip(row) {
        *s += (v ^ flip) as i8 as i32;
    }
}

/// `dst[4c + t] = rows[t][c] ^ flip`: four im2col rows into the K4 lane layout.
#[inline]
fn interleave4(dst: &mut [u8], r0: &[u8], r1: &[u8], r2: &[u8], r3: &[u8], flip: u8) {
    let f = u32::from_ne_bytes([flip; 4]);
    for (c, d) in dst.chunks_exact_mut(4).enumerate() {
        let v = u32::from_le_bytes([r0[c], r1[c], r2[c], r3[c]]) ^ f;
        d.copy_from_slice(&v.to_le_bytes());
    }
}

impl Op for QConvGemm {
    fn name(&self) -> StaticName {
        "BedsideQConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "{}x{} s{}x{} d{}x{} groups {} {}→{} kernel {} chunk {}",
            g.kh,
            g.kw,
            g.sh,
            g.sw,
            g.dh,
            g.dw,
            g.groups,
            g.ci,
            g.co,
            self.kernel.name(),
            self.chunk
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConvGemm {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(
            x.len() == self.geo.input_len(),
            "input shape changed since load"
        );
        let mut out = unsafe { Tensor::uninitialized_dt(self.out_dt, &self.geo.output_shape())? };
        let taken = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut s = match taken {
            Some(s) => s,
            None => self.scratch()?,
        };
        let res = self.run(x.as_bytes(), out.as_bytes_mut(), &mut s);
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
        res?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QConvGemm {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(self.geo.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            self.geo.macs().to_dim()
        )))
    }
}
