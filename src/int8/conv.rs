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
use super::pairs;
use super::requant;
use super::{ConvParts, Int8Error, QuantParams};

/// How many bytes of B one chunk may take: with the i32 tile and A's streaming rows this
/// keeps a chunk inside a 256 KiB L2 (Cortex-A76/A78: 256–512 KiB; x86: ≥ 1 MiB).
const CHUNK_B_BYTES: usize = 96 * 1024;
/// And the i32 result tile of one chunk.
const CHUNK_C_BYTES: usize = 64 * 1024;

/// Below this many multiply-adds a convolution runs on one thread whatever
/// [`super::threads`] says: starting a thread costs tens of microseconds.
pub(crate) const PARALLEL_MIN_MACS: usize = 2_000_000;

/// The int8 matmul kernel chosen for one conv, and how its B operand is laid out.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    imp: Imp,
    layout: BLayout,
}

/// Whose micro-kernel: one of tract-linalg's (with the packing to use), or bedside's AVX2
/// pair kernel ([`super::pairs`]).
#[derive(Debug, Clone)]
enum Imp {
    Tract {
        mmm: Box<dyn MatMatMul>,
        packing: usize,
    },
    Pairs,
}

impl Imp {
    fn name(&self) -> &str {
        match self {
            Imp::Tract { mmm, .. } => mmm.name(),
            Imp::Pairs => pairs::NAME,
        }
    }
}

/// Weights of one group, packed for the kernel.
enum PackedWeights {
    Tract(Box<dyn MMMInputValue>),
    Pairs(pairs::PackedA),
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
    /// bedside's pair kernel: for each panel of 16 columns, pairs of k, 16 × 2 bytes.
    K2 { panel: usize },
}

impl BLayout {
    /// The layout of a B format bedside knows, for a reduction of length `k`.
    fn of(b: &dyn MMMInputFormat, k: usize) -> Option<BLayout> {
        if let Some(f) = b.downcast_ref::<PackedFormat>() {
            (f.dt.unquantized() == DatumType::I8).then(|| BLayout::KOuter {
                r: f.r,
                panel: f.single_panel_len(k),
                align: f.alignment(),
            })
        } else {
            b.downcast_ref::<PackedI8K4>().map(|f| BLayout::K4 {
                r: f.r,
                panel: f.single_panel_len(k),
                align: f.alignment(),
            })
        }
    }

    fn r(self) -> usize {
        match self {
            BLayout::KOuter { r, .. } | BLayout::K4 { r, .. } => r,
            BLayout::K2 { .. } => pairs::NR,
        }
    }
    fn panel(self) -> usize {
        match self {
            BLayout::KOuter { panel, .. } | BLayout::K4 { panel, .. } | BLayout::K2 { panel } => {
                panel
            }
        }
    }
    fn align(self) -> usize {
        match self {
            BLayout::KOuter { align, .. } | BLayout::K4 { align, .. } => align,
            BLayout::K2 { .. } => 32,
        }
    }
}

impl Kernel {
    /// The int8 kernel bedside uses for an s8×s8→i32 matmul: the fastest, measured once per
    /// process, of tract-linalg's kernels this CPU runs whose B layout bedside can gather.
    ///
    /// Measured rather than taken from tract-linalg's ranking, because that ranking can be
    /// far off: on an AMD EPYC with AVX2 (no VNNI), tract 0.23.9 prefers
    /// `avx2_mmm_i32_8x8`, which runs at 0.55 GMAC/s there, while `avx_mmm_i32_8x4` does
    /// 8.3 GMAC/s on the same matmul. Every candidate computes exact i32 sums, so the choice
    /// changes speed, never results. `BEDSIDE_INT8_KERNEL=<name>` (or [`force_kernel`])
    /// forces one, for tests that exercise each kernel.
    pub fn pick(_m: usize, k: usize, _n: usize) -> Result<Kernel, Int8Error> {
        let name = match forced_kernel() {
            Some(name) => name,
            None => fastest_kernel()?.to_string(),
        };
        let imp = choices()
            .into_iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| {
                Int8Error::Unsupported(format!("int8 kernel {name} does not run on this CPU"))
            })?;
        Kernel::with(imp, k)
    }

    fn with(imp: Imp, k: usize) -> Result<Kernel, Int8Error> {
        let layout = match &imp {
            Imp::Pairs => BLayout::K2 {
                panel: pairs::panel_bytes(k),
            },
            Imp::Tract { mmm, packing } => {
                let b: &dyn MMMInputFormat = &*mmm.packings()[*packing].1;
                BLayout::of(b, k).ok_or_else(|| {
                    Int8Error::Unsupported(format!(
                        "kernel {} reads B as {b}, which bedside does not gather",
                        mmm.name()
                    ))
                })?
            }
        };
        Ok(Kernel { imp, layout })
    }

    pub fn name(&self) -> &str {
        self.imp.name()
    }

    /// Packs one group's weights (`m × k`, s8) for this kernel.
    fn pack(&self, w: &[i8], m: usize, k: usize) -> TractResult<PackedWeights> {
        Ok(match &self.imp {
            Imp::Pairs => PackedWeights::Pairs(pairs::PackedA::new(w, m, k)),
            Imp::Tract { mmm, packing } => {
                let t = Tensor::from_shape(&[m, k], w)?;
                PackedWeights::Tract(mmm.packings()[*packing].0.prepare_one(&t, 1, 0)?)
            }
        })
    }
}

/// Names of every int8 kernel this CPU runs that bedside can use.
pub fn kernel_names() -> Vec<String> {
    choices().iter().map(|i| i.name().to_string()).collect()
}

/// bedside's pair kernel where the CPU has AVX2, then tract-linalg's candidates.
fn choices() -> Vec<Imp> {
    let mut out = vec![];
    if pairs::available() {
        out.push(Imp::Pairs);
    }
    out.extend(
        candidates()
            .into_iter()
            .map(|(mmm, packing)| Imp::Tract { mmm, packing }),
    );
    out
}

/// Every kernel this CPU runs that multiplies i8 by i8 into i32 with B in a layout bedside
/// gathers (`PackedFormat` of i8, or `PackedI8K4`), with the packing to use.
pub fn candidates() -> Vec<(Box<dyn MatMatMul>, usize)> {
    use tract_onnx::prelude::tract_linalg::mmm::MmmDispatch;
    let mut out = vec![];
    for mmm in MmmDispatch::native().runnable() {
        if mmm.internal_type() != DatumType::I32 || mmm.emulated() || mmm.nr() < 2 {
            continue;
        }
        let found = mmm.packings().iter().position(|(a, b)| {
            let i8_plain = |f: &dyn MMMInputFormat| {
                f.downcast_ref::<PackedFormat>()
                    .is_some_and(|p| p.dt.unquantized() == DatumType::I8)
                    || f.is::<PackedI8K4>()
            };
            i8_plain(&**a) && i8_plain(&**b)
        });
        if let Some(p) = found {
            out.push((mmm.clone(), p));
        }
    }
    out
}

static FORCED: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Forces the int8 kernel of convs loaded from now on (`None`: back to the measured pick).
pub fn force_kernel(name: Option<&str>) {
    if let Ok(mut f) = FORCED.write() {
        *f = name.map(str::to_string);
    }
}

fn forced_kernel() -> Option<String> {
    FORCED.read().ok().and_then(|f| f.clone()).or_else(|| {
        std::env::var("BEDSIDE_INT8_KERNEL")
            .ok()
            .filter(|s| !s.is_empty())
    })
}

/// A probe matmul: (m, k, n) and how many runs (the best counts).
type Probe = ((usize, usize, usize), usize);

/// Every candidate runs this once: a kernel that is slow here is slow at size too, and a
/// slow one costs about 0.2 ms here instead of 12 ms at the full size (measured: tract's
/// AVX2 i32 8x8 kernel took 12 ms for the full probe, four times, 48 ms of every start).
const SMALL: Probe = ((16, 64, 64), 2);
/// The full probe (4 M multiply-adds, about 0.03–0.5 ms on the kernels worth having), for
/// the candidates within [`KEEP`] times the best small-probe time.
const FULL: Probe = ((64, 256, 256), 4);
const KEEP: f64 = 4.0;

/// The fastest candidate on a 64 × 256 × 256 matmul, best of four runs each, among those
/// that came within [`KEEP`]× the best on a small matmul first; measured once per process.
fn fastest_kernel() -> Result<&'static str, Int8Error> {
    static PICK: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let pick = PICK.get_or_init(|| {
        let time = |imp: &Imp, probe: Probe| match imp {
            Imp::Tract { mmm, packing } => time_kernel(&**mmm, *packing, probe),
            Imp::Pairs => time_pairs(probe),
        };
        let mut seen = vec![];
        let mut small = vec![];
        for imp in choices() {
            match time(&imp, SMALL) {
                Ok(t) => small.push((t, imp)),
                Err(e) => seen.push(format!("{} failed: {e:#}", imp.name())),
            }
        }
        let fastest_small = small.iter().map(|(t, _)| *t).fold(f64::MAX, f64::min);
        let mut best: Option<(f64, String)> = None;
        for (t_small, imp) in small {
            if t_small > KEEP * fastest_small {
                seen.push(format!(
                    "{} left out ({:.1}x the best on 16x64x64)",
                    imp.name(),
                    t_small / fastest_small
                ));
                continue;
            }
            match time(&imp, FULL) {
                Ok(t) => {
                    seen.push(format!("{} {:.3} ms", imp.name(), t * 1e3));
                    if best.as_ref().is_none_or(|(b, _)| t < *b) {
                        best = Some((t, imp.name().to_string()));
                    }
                }
                Err(e) => seen.push(format!("{} failed: {e:#}", imp.name())),
            }
        }
        let best = best
            .map(|(_, n)| n)
            .ok_or_else(|| "no int8 matmul kernel runs on this CPU".to_string())?;
        tracing::info!(
            "int8 kernel: {best} (64x256x256 matmul: {})",
            seen.join(", ")
        );
        Ok(best)
    });
    pick.as_deref()
        .map_err(|e| Int8Error::Unsupported(e.clone()))
}

fn time_pairs(((m, k, n), runs): Probe) -> TractResult<f64> {
    let a: Vec<i8> = (0..m * k).map(|i| (i % 251) as i8).collect();
    let a = pairs::PackedA::new(&a, m, k);
    let b: Vec<u8> = (0..n.div_ceil(pairs::NR) * pairs::panel_bytes(k))
        .map(|i| (i % 241) as u8)
        .collect();
    let mut c = vec![0i32; m * n];
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = std::time::Instant::now();
        pairs::matmul(&a, &b, n, &mut c, n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn time_kernel(mmm: &dyn MatMatMul, packing: usize, ((m, k, n), runs): Probe) -> TractResult<f64> {
    let (pa, pb) = &mmm.packings()[packing];
    let a: Vec<i8> = (0..m * k).map(|i| (i % 251) as i8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i % 241) as i8).collect();
    let a = pa.prepare_one(&Tensor::from_shape(&[m, k], &a)?, 1, 0)?;
    let b = pb.prepare_one(&Tensor::from_shape(&[k, n], &b)?, 0, 1)?;
    let c = Tensor::zero::<i32>(&[m, n])?;
    let mut scratch = unsafe { mmm.allocate_scratch_space() };
    let spec = unsafe { mmm.c_from_data_and_strides(4, n as isize, 1) };
    let mut best = f64::MAX;
    for _ in 0..runs {
        let store = unsafe { spec.wrap(&c.view()) };
        let specs = [
            FusedSpec::AddMatMul {
                a: AsInputValue::Borrowed(&*a),
                b: AsInputValue::Borrowed(&*b),
                packing,
            },
            FusedSpec::Store(store),
        ];
        let t = std::time::Instant::now();
        unsafe { mmm.run_with_scratch_space(m, n, &mut *scratch, &specs)? };
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One set of run buffers. Taken from the op's pool for a run and given back after.
struct Scratch {
    /// B for one chunk, in the kernel's layout: tract's own packed-input type for
    /// tract-linalg's kernels (so they read it as they read tract's), plain bytes for
    /// bedside's pair kernel.
    b: BChunk,
    /// Up to four im2col rows of one chunk, before they are interleaved into B.
    rows: Vec<u8>,
    /// i32 result of one chunk, `[cog, chunk]`.
    c: Tensor,
    /// Σ over k of B's column (only when weight zero points are not all zero).
    colsum: Vec<i32>,
    mm: Option<Box<dyn ScratchSpace>>,
}

enum BChunk {
    Tract(EagerPackedInput),
    Pairs(Vec<u8>),
}

/// The op tract runs in place of a quantized `Conv`.
#[derive(Clone)]
pub struct QConvGemm {
    pub(crate) geo: Geometry,
    kernel: Kernel,
    /// Weights per group, packed once in the kernel's A layout.
    a: Arc<Vec<PackedWeights>>,
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
    pub fn new(parts: ConvParts) -> Result<QConvGemm, Int8Error> {
        let ConvParts {
            geo,
            weights,
            w_signed,
            x_signed,
            x0,
            k0,
            q,
            out_dt,
        } = parts;
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
            a.push(kernel.pack(&wg, cog, k).map_err(tract)?);
        }
        let r = kernel.layout.r();
        // Pixels per chunk: B (K bytes a pixel) and the i32 tile (4·cog bytes a pixel) both
        // stay cache-sized, and no wider than the image (in whole panels).
        let chunk = (CHUNK_B_BYTES / k.max(1))
            .min(CHUNK_C_BYTES / (4 * cog).max(1))
            .min(geo.out_plane().div_ceil(r) * r)
            .max(r)
            / r
            * r;
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
        let (b, mm) = match &self.kernel.imp {
            Imp::Pairs => (BChunk::Pairs(vec![0; panels * layout.panel()]), None),
            Imp::Tract { mmm, packing } => {
                let format: Box<dyn MMMInputFormat> = mmm.packings()[*packing].1.clone();
                // Zeroed once: lanes past K (K4) and past the last column are never written
                // and must stay finite for the kernel; they multiply A's zero padding.
                let mut blob = unsafe {
                    Blob::new_for_size_and_align(panels * layout.panel(), layout.align())
                };
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
                (
                    BChunk::Tract(b),
                    Some(unsafe { mmm.allocate_scratch_space() }),
                )
            }
        };
        Ok(Scratch {
            b,
            rows: vec![0; 4 * self.chunk],
            c: Tensor::zero::<i32>(&[self.geo.cog(), self.chunk])?,
            colsum: vec![0; self.chunk],
            mm,
        })
    }

    /// Writes chunk `p0 .. p0 + n` of group `g`'s im2col matrix into `s.b`.
    fn gather(&self, x: &[u8], p0: usize, n: usize, s: &mut Scratch) {
        let b: &mut [u8] = match &mut s.b {
            BChunk::Tract(e) => {
                e.mn = n;
                e.fact.mn = n.to_dim();
                Arc::get_mut(&mut e.packed)
                    .expect("B is owned by this scratch")
                    .as_bytes_mut()
            }
            BChunk::Pairs(v) => v,
        };
        let colsum = self.k0.is_some().then_some(&mut s.colsum[..n]);
        let chunk = Chunk {
            p0,
            n,
            pad: self.x_pad,
            flip: self.flip,
            stride: self.chunk,
        };
        gather_chunk(
            &self.geo,
            self.kernel.layout,
            x,
            chunk,
            &mut s.rows,
            b,
            colsum,
        );
    }

    /// Work items: one chunk of output pixels of one group of one image.
    fn items(&self) -> usize {
        self.geo.batch * self.geo.groups * self.geo.out_plane().div_ceil(self.chunk)
    }

    /// Runs items `range` into `out`. Items write disjoint parts of the output, which is what
    /// lets several threads share it (`out` is a raw pointer for that reason).
    fn run_items(
        &self,
        x: &[u8],
        out: OutPtr,
        range: std::ops::Range<usize>,
        s: &mut Scratch,
    ) -> TractResult<()> {
        let geo = &self.geo;
        let (cog, opl) = (geo.cog(), geo.out_plane());
        let chunks = opl.div_ceil(self.chunk);
        let c_spec = match &self.kernel.imp {
            Imp::Tract { mmm, .. } => {
                Some(unsafe { mmm.c_from_data_and_strides(4, self.chunk as isize, 1) })
            }
            Imp::Pairs => None,
        };
        for item in range {
            let (bg, chunk_ix) = (item / chunks, item % chunks);
            let (batch, g) = (bg / geo.groups, bg % geo.groups);
            let xg = &x[(batch * geo.ci + g * geo.cig()) * geo.in_plane()..];
            let out_base = (batch * geo.co + g * cog) * opl;
            let p0 = chunk_ix * self.chunk;
            let n = self.chunk.min(opl - p0);
            self.gather(xg, p0, n, s);
            match (&self.kernel.imp, &self.a[g], &s.b, &mut s.mm) {
                (
                    Imp::Tract { mmm, packing },
                    PackedWeights::Tract(a),
                    BChunk::Tract(b),
                    Some(mm),
                ) => {
                    let c_spec = c_spec.context("tract kernel without an output spec")?;
                    let store = unsafe { c_spec.wrap(&s.c.view()) };
                    let specs = [
                        FusedSpec::AddMatMul {
                            a: AsInputValue::Borrowed(&**a),
                            b: AsInputValue::Borrowed(b),
                            packing: *packing,
                        },
                        FusedSpec::Store(store),
                    ];
                    unsafe { mmm.run_with_scratch_space(cog, n, &mut **mm, &specs)? };
                }
                (Imp::Pairs, PackedWeights::Pairs(a), BChunk::Pairs(b), _) => {
                    let c = unsafe { s.c.as_slice_mut_unchecked::<i32>() };
                    pairs::matmul(a, b, n, c, self.chunk);
                }
                _ => bail!("int8 conv: weights, B and kernel disagree"),
            }
            let c = unsafe { s.c.as_slice_unchecked::<i32>() };
            for o in 0..cog {
                let oc = g * cog + o;
                let acc = &c[o * self.chunk..o * self.chunk + n];
                // SAFETY: row `oc`, pixels p0..p0+n of this image belong to this item only.
                let dst = unsafe { out.slice(out_base + o * opl + p0, n) };
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
        }
        Ok(())
    }

    fn take_scratch(&self) -> TractResult<Scratch> {
        match self.pool.lock().map(|mut p| p.pop()).unwrap_or(None) {
            Some(s) => Ok(s),
            None => self.scratch(),
        }
    }

    fn give_scratch(&self, s: Scratch) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
    }
}

/// The output buffer shared by the threads of one run; each writes its own items' bytes.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut u8, usize);
// SAFETY: threads write disjoint ranges (see `run_items`) and the buffer outlives the scope.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(crate) fn new(out: &mut [u8]) -> OutPtr {
        OutPtr(out.as_mut_ptr(), out.len())
    }
    /// # Safety
    /// No other live slice may overlap `start..start + len`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [u8] {
        assert!(start + len <= self.1, "output range out of bounds");
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Checks a conv op's input, makes its output tensor and says how many threads the run may
/// use: a second thread pays for itself only on a big enough convolution.
pub(crate) fn start_run(
    geo: &Geometry,
    out_dt: DatumType,
    x: &Tensor,
) -> TractResult<(Tensor, usize)> {
    ensure!(x.len() == geo.input_len(), "input shape changed since load");
    let out = unsafe { Tensor::uninitialized_dt(out_dt, &geo.output_shape())? };
    let threads = if geo.macs() >= PARALLEL_MIN_MACS {
        super::threads()
    } else {
        1
    };
    Ok((out, threads))
}

/// Splits `items` work items over up to `threads` threads (this one included), giving each
/// a contiguous range, and runs `f(range)` on each.
pub(crate) fn parallel(
    items: usize,
    threads: usize,
    f: impl Fn(std::ops::Range<usize>) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let threads = threads.min(items).max(1);
    if threads == 1 {
        return f(0..items);
    }
    let per = items.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads)
            .map(|t| {
                let f = &f;
                scope.spawn(move || f(t * per..((t + 1) * per).min(items)))
            })
            .collect();
        let mine = f(0..per.min(items));
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("an int8 worker thread panicked"))??;
        }
        mine
    })
}

/// Where a chunk of output pixels starts, how long it is, and how its bytes are made.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    p0: usize,
    n: usize,
    /// The input zero point, as a byte of the input type (out-of-image taps).
    pad: u8,
    /// 0x80 for u8 inputs, 0 for i8.
    flip: u8,
    /// Row stride of `rows` (the op's chunk width).
    stride: usize,
}

/// Gathers output pixels `p0 .. p0 + n` of the implicit im2col matrix of one group (`x`
/// starts at the group's first input channel) straight into B's packed layout `b`: im2col
/// rows are made one (k-outer) or four (K4) at a time in `rows`, then copied or interleaved
/// into the panels, u8 flipped to s8 on the way. With `colsum`, also Σk of each column (s8).
fn gather_chunk(
    geo: &Geometry,
    layout: BLayout,
    x: &[u8],
    c: Chunk,
    rows: &mut [u8],
    b: &mut [u8],
    mut colsum: Option<&mut [i32]>,
) {
    let (kh, kw, plane) = (geo.kh, geo.kw, geo.in_plane());
    let k = geo.k();
    let tap = |kk: usize| (kk / (kh * kw), (kk / kw) % kh, kk % kw);
    let (r, panel) = (layout.r(), layout.panel());
    let (n, flip) = (c.n, c.flip);
    if let Some(sums) = colsum.as_deref_mut() {
        sums.fill(0);
    }
    let (full, rest) = (n / r, n % r);
    match layout {
        BLayout::KOuter { .. } => {
            let row = &mut rows[..n];
            for kk in 0..k {
                let (ch, ky, kx) = tap(kk);
                geo.gather_row(&x[ch * plane..(ch + 1) * plane], ky, kx, c.p0, row, c.pad);
                if let Some(sums) = colsum.as_deref_mut() {
                    add_col_sums(sums, row, flip);
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
        BLayout::K2 { .. } => {
            for kb in 0..k.div_ceil(2) {
                let lanes = (k - kb * 2).min(2);
                for t in 0..lanes {
                    let (ch, ky, kx) = tap(kb * 2 + t);
                    let row = &mut rows[t * c.stride..t * c.stride + n];
                    geo.gather_row(&x[ch * plane..(ch + 1) * plane], ky, kx, c.p0, row, c.pad);
                    if let Some(sums) = colsum.as_deref_mut() {
                        add_col_sums(sums, row, flip);
                    }
                }
                // The second lane of an odd K's last pair stays zero, as allocated.
                let row = |t: usize| &rows[t * c.stride..t * c.stride + n];
                for j in 0..n.div_ceil(r) {
                    let cols = (n - j * r).min(r);
                    let dst = &mut b[j * panel + kb * 2 * r..j * panel + kb * 2 * r + 2 * cols];
                    let src = j * r..j * r + cols;
                    if lanes == 2 {
                        interleave2(dst, &row(0)[src.clone()], &row(1)[src], flip);
                    } else {
                        for (d, &v) in dst.chunks_exact_mut(2).zip(&row(0)[src]) {
                            d[0] = v ^ flip;
                        }
                    }
                }
            }
        }
        BLayout::K4 { .. } => {
            for kb in 0..k.div_ceil(4) {
                let lanes = (k - kb * 4).min(4);
                for t in 0..lanes {
                    let (ch, ky, kx) = tap(kb * 4 + t);
                    let row = &mut rows[t * c.stride..t * c.stride + n];
                    geo.gather_row(&x[ch * plane..(ch + 1) * plane], ky, kx, c.p0, row, c.pad);
                    if let Some(sums) = colsum.as_deref_mut() {
                        add_col_sums(sums, row, flip);
                    }
                }
                // Lanes past K (the last group when K % 4 != 0) are never written: they stay
                // as zeroed at allocation, and multiply A's zero padding.
                let row = |t: usize| &rows[t * c.stride..t * c.stride + n];
                for j in 0..n.div_ceil(r) {
                    let cols = (n - j * r).min(r);
                    let dst = &mut b[j * panel + kb * 4 * r..j * panel + kb * 4 * r + 4 * cols];
                    let src = j * r..j * r + cols;
                    if lanes == 4 {
                        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                        interleave4(
                            dst,
                            &r0[src.clone()],
                            &r1[src.clone()],
                            &r2[src.clone()],
                            &r3[src],
                            flip,
                        );
                    } else {
                        for (ci, d) in dst.chunks_exact_mut(4).enumerate() {
                            for (t, v) in d.iter_mut().enumerate().take(lanes) {
                                *v = row(t)[j * r + ci] ^ flip;
                            }
                        }
                    }
                }
            }
        }
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

/// `dst[2c + t] = rows[t][c] ^ flip`: two im2col rows into the K2 pair layout. Whole
/// panels of 16 columns go through fixed-size arrays, which LLVM turns into byte unpacks.
#[inline]
fn interleave2(dst: &mut [u8], r0: &[u8], r1: &[u8], flip: u8) {
    if let (Ok(d), Ok(a), Ok(b)) = (
        <&mut [u8; 32]>::try_from(&mut *dst),
        <&[u8; 16]>::try_from(r0),
        <&[u8; 16]>::try_from(r1),
    ) {
        for c in 0..16 {
            d[2 * c] = a[c] ^ flip;
            d[2 * c + 1] = b[c] ^ flip;
        }
        return;
    }
    for ((d, &a), &b) in dst.chunks_exact_mut(2).zip(r0).zip(r1) {
        d[0] = a ^ flip;
        d[1] = b ^ flip;
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
        let (mut out, threads) = start_run(&self.geo, self.out_dt, &x)?;
        let ptr = OutPtr::new(out.as_bytes_mut());
        let x = x.as_bytes();
        parallel(self.items(), threads, |range| {
            let mut s = self.take_scratch()?;
            let res = self.run_items(x, ptr, range, &mut s);
            self.give_scratch(s);
            res
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The implicit im2col matrix of one group, the naive way: `[k][pixel]`, s8.
    fn naive_im2col(geo: &Geometry, x: &[u8], pad: u8, flip: u8) -> Vec<i8> {
        let (k, np) = (geo.k(), geo.out_plane());
        let mut m = vec![0i8; k * np];
        for kk in 0..k {
            let (c, ky, kx) = (kk / (geo.kh * geo.kw), (kk / geo.kw) % geo.kh, kk % geo.kw);
            for p in 0..np {
                let (oy, ox) = (p / geo.ow, p % geo.ow);
                let iy = (oy * geo.sh + ky * geo.dh) as isize - geo.pt as isize;
                let ix = (ox * geo.sw + kx * geo.dw) as isize - geo.pl as isize;
                let inside = iy >= 0 && ix >= 0 && (iy as usize) < geo.h && (ix as usize) < geo.w;
                let v = if inside {
                    x[c * geo.in_plane() + iy as usize * geo.w + ix as usize]
                } else {
                    pad
                };
                m[kk * np + p] = (v ^ flip) as i8;
            }
        }
        m
    }

    /// Both B layouts bedside gathers (k-outer panels and K4 lanes, for the SDOT / VNNI
    /// kernels that this x86 machine may not run) must equal tract-linalg's own packing of
    /// the same im2col matrix, byte for byte, over every chunk.
    #[test]
    fn gathered_panels_equal_tract_packing() {
        let geo = Geometry {
            batch: 1,
            ci: 3,
            h: 9,
            w: 11,
            co: 4,
            groups: 1,
            kh: 3,
            kw: 2,
            sh: 2,
            sw: 1,
            dh: 1,
            dw: 2,
            pt: 1,
            pl: 2,
            oh: 5,
            ow: 11,
        };
        let x: Vec<u8> = (0..geo.ci * geo.in_plane())
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        let (pad, flip) = (7u8, 0x80u8);
        let k = geo.k();
        let formats: Vec<Box<dyn MMMInputFormat>> = vec![
            Box::new(PackedFormat::new(DatumType::I8, 8, 4)),
            Box::new(PackedFormat::new(DatumType::I8, 4, 4)),
            Box::new(PackedI8K4::new(8)),
            Box::new(PackedI8K4::new(16)),
        ];
        let im2col = naive_im2col(&geo, &x, pad, flip);
        for format in formats {
            let layout = BLayout::of(&*format, k).unwrap();
            let r = layout.r();
            let chunk = 3 * r;
            let mut p0 = 0;
            while p0 < geo.out_plane() {
                let n = chunk.min(geo.out_plane() - p0);
                let mut sub = vec![0i8; k * n];
                for kk in 0..k {
                    sub[kk * n..(kk + 1) * n]
                        .copy_from_slice(&im2col[kk * geo.out_plane() + p0..][..n]);
                }
                let want = format
                    .prepare_one(&Tensor::from_shape(&[k, n], &sub).unwrap(), 0, 1)
                    .unwrap();
                let want = want.downcast_ref::<EagerPackedInput>().unwrap();
                let mut b = vec![0u8; n.div_ceil(r) * layout.panel()];
                let mut rows = vec![0u8; 4 * chunk];
                let mut sums = vec![0i32; n];
                let c = Chunk {
                    p0,
                    n,
                    pad,
                    flip,
                    stride: chunk,
                };
                gather_chunk(&geo, layout, &x, c, &mut rows, &mut b, Some(&mut sums));
                let want_bytes = &want.packed.as_bytes()[..b.len()];
                // k-outer panels end with tract's padding record (read ahead by the kernel,
                // never multiplied): compare the k rows of each panel.
                let used = match layout {
                    BLayout::KOuter { .. } => k * r,
                    BLayout::K4 { .. } | BLayout::K2 { .. } => layout.panel(),
                };
                for (j, (got, want)) in b
                    .chunks(layout.panel())
                    .zip(want_bytes.chunks(layout.panel()))
                    .enumerate()
                {
                    assert_eq!(
                        got[..used],
                        want[..used],
                        "{format} chunk at {p0}, panel {j}"
                    );
                }
                for (p, s) in sums.iter().enumerate() {
                    let expect: i32 = (0..k).map(|kk| sub[kk * n + p] as i32).sum();
                    assert_eq!(*s, expect, "column sum {p}");
                }
                p0 += n;
            }
        }
    }

    /// bedside's own K2 layout (pairs of k per column) against the same naive im2col.
    #[test]
    fn gathered_pairs_match_the_naive_im2col() {
        let geo = Geometry {
            batch: 1,
            ci: 3,
            h: 9,
            w: 11,
            co: 4,
            groups: 1,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 2,
            dh: 2,
            dw: 1,
            pt: 2,
            pl: 1,
            oh: 5,
            ow: 6,
        };
        let x: Vec<u8> = (0..geo.ci * geo.in_plane())
            .map(|i| (i * 29 % 256) as u8)
            .collect();
        let (pad, flip) = (200u8, 0x80u8);
        let k = geo.k();
        let im2col = naive_im2col(&geo, &x, pad, flip);
        let layout = BLayout::K2 {
            panel: pairs::panel_bytes(k),
        };
        let chunk = 2 * pairs::NR;
        let mut p0 = 0;
        while p0 < geo.out_plane() {
            let n = chunk.min(geo.out_plane() - p0);
            let mut b = vec![0u8; n.div_ceil(pairs::NR) * layout.panel()];
            let mut rows = vec![0u8; 4 * chunk];
            let c = Chunk {
                p0,
                n,
                pad,
                flip,
                stride: chunk,
            };
            gather_chunk(&geo, layout, &x, c, &mut rows, &mut b, None);
            for kk in 0..k {
                for col in 0..n {
                    let (j, cc) = (col / pairs::NR, col % pairs::NR);
                    let got = b[j * layout.panel() + (kk / 2) * 2 * pairs::NR + cc * 2 + kk % 2];
                    assert_eq!(
                        got as i8,
                        im2col[kk * geo.out_plane() + p0 + col],
                        "k {kk} col {col}"
                    );
                }
            }
            p0 += n;
        }
    }
}
