"""Synthetic chest radiograph phantoms with boxes, for cxr-tiny-det.

The background is exactly models/factory/synth.py's PA chest phantom (imported, not modified). Objects are drawn
into its attenuation map D *inside* synth.generate, in the detector frame after the patient pose and the upsampling
to 512x512, and *before* the detector stage (blur, gain non-uniformity, exposure gamma, quantum + electronic noise,
12-bit quantisation, window from the body's percentiles). They therefore get the same blur, noise and value range as
the rest of the image. This is done by temporarily wrapping two module-level helpers of synth (`ndimage` to see the
pose transform and the posed body map, `_up` to add the objects right after D is upsampled); synth.generate's own
random stream is untouched, so the background is bit-identical to synth.generate(seed, label) without objects.

Pixel spacing (as in the cxr factory's DICOM samples): 0.8 mm at 512x512 (a 41 cm detector), 1.6 mm at the
model's 256x256 input.

Labelled objects (boxes = axis-aligned extent of the drawn object in 512-pixel coordinates, x1,y1,x2,y2 with
continuous pixel edges, i.e. pixel i covers [i, i+1)):
  nodule        soft round opacity, diameter 5-30 mm (log-uniform), projected-sphere profile with a slightly
                lobulated soft edge, peak attenuation +0.06..+0.15 (x 0.7..1 for diameters under 10 mm; the lung is
                0.28-0.36 darker than soft tissue), centre where the lung is visible (synth's lung map minus heart and
                mediastinum, eroded by 0.3 x radius); may overlap ribs, vessels, the heart border, an effusion
  foreign_body  metal, attenuation +0.7..+1.1 (saturates the display), sharp edge (4x supersampled):
                coin: disc 15-28 mm (sometimes seen slightly obliquely: ellipse, axis ratio 0.75-1), midline upper
                chest/neck (oesophagus) in half of them, else anywhere on the body
                bar: safety pin / clip / screw, 12-55 mm long, 1.2-3.5 mm wide, any angle; screws get a head and
                thread notches, pins a loop at one end
Unlabelled confounders (NOT foreign_body, by design: expected hardware on a bedside film):
  ECG electrodes in 45 % of images, 1-4 each: a bright 3-5 mm metal snap with a faint 30-40 mm pad ring and a thin,
  faint, curved lead wire running off it; plus synth's own burned-in side marker (bright, sharp letter) in half.
Objects per image: 0-3 (P = 0.25, 0.35, 0.25, 0.15); each object is a nodule with probability 0.5.
Background finding: synth label 0 (normal) 70 %, 1 (pneumothorax) 15 %, 2 (effusion/opacities) 15 %.
"""
import numpy as np
from scipy import ndimage as _ndi

import synth

H, W = synth.H, synth.W
MM_PER_PX = 0.8            # at 512x512
LABELS = ["nodule", "foreign_body"]
N_OBJ_P = [0.25, 0.35, 0.25, 0.15]


def _lung_mask_patient(seed, label):
    """Replays the first draws of synth.generate (body width, lung geometry) -> lung map on the A x A grid."""
    rng = np.random.default_rng([20240611, int(seed), int(label)])
    f32 = np.float32

    def U(a=0.0, b=1.0):
        return float(rng.uniform(a, b))

    A = synth.A
    Y, X = (np.mgrid[0:A, 0:A].astype(f32) + f32(0.5)) / f32(A)
    U(0.40, 0.47)  # bw
    mid_x = 0.5 + U(-0.01, 0.01)
    ax_base, ay = U(0.125, 0.15), U(0.24, 0.29)
    cy = U(0.43, 0.47)
    dome_h = U(0.04, 0.08)
    lungs = []
    for side in (-1, +1):
        cx = mid_x + side * U(0.17, 0.20)
        ax = ax_base * (U(0.95, 1.05) if side < 0 else U(0.88, 0.98))
        lu = (X - cx) / ax * side
        lv = (Y - cy) / ay
        taper = 1 + 0.9 * np.maximum(-lv, 0) ** 1.5
        rho = np.sqrt((lu * taper) ** 2 + lv ** 2)
        base = cy + ay * U(0.78, 0.9) + (0.0 if side > 0 else -0.015)
        dome = base - dome_h * np.clip(1 - ((X - cx) / (1.1 * ax)) ** 2, 0, 1)
        lungs.append(synth._sig((1 - rho) / 0.03) * synth._sig((dome - Y) / 0.006))
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    # heart / mediastinum (the next draws): nodules go where the lung is visible (synth's `soft_lung`)
    hx, hy = mid_x + U(0.03, 0.06), cy + ay * U(0.4, 0.55)
    hax, hay = U(0.11, 0.15), U(0.09, 0.12)
    hu, hv = (X - hx) / hax, (Y - hy) / hay
    heart = synth._sig((1 - np.sqrt((hu + 0.25 * hv) ** 2 + hv ** 2)) / 0.06)
    medi = synth._band(X - mid_x, U(0.045, 0.06), 0.01) * synth._sig((Y - 0.1) / 0.02)
    return (lung * (1 - 0.9 * heart) * (1 - medi)).astype(f32), mid_x


def _supersampled(fn, x0, y0, x1, y1, ss=4):
    """Coverage of the region fn(x, y) -> bool (continuous pixel coords) on the pixel box, ss x ss samples/pixel."""
    x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    x1, y1 = min(int(np.ceil(x1)), W), min(int(np.ceil(y1)), H)
    if x1 <= x0 or y1 <= y0:
        return None
    o = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(y0, y1)[:, None] + o[None, :]).ravel()
    xs = (np.arange(x0, x1)[:, None] + o[None, :]).ravel()
    inside = fn(xs[None, :], ys[:, None]).astype(np.float32)
    cov = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    return (slice(y0, y1), slice(x0, x1)), cov


class _Objects:
    """Draws objects into D (512x512 detector frame) and records their boxes."""

    def __init__(self, rng, lung512, body512, mid_x512):
        self.rng, self.lung, self.body, self.mid_x = rng, lung512, body512, mid_x512
        self.boxes = []
        self.kinds = []   # 'nodule' / 'coin' / 'bar' per box (metadata only)

    def U(self, a=0.0, b=1.0):
        return float(self.rng.uniform(a, b))

    def _pick(self, mask, thr=0.5):
        ys, xs = np.where(mask > thr)
        if len(ys) == 0:
            return None
        i = int(self.rng.integers(0, len(ys)))
        return float(xs[i]) + self.U(), float(ys[i]) + self.U()

    def nodule(self, D):
        d_mm = float(np.exp(self.rng.uniform(np.log(5.0), np.log(30.0))))
        r = d_mm / MM_PER_PX / 2
        core = _ndi.binary_erosion(self.lung > 0.5, iterations=max(1, int(round(0.3 * r))))
        p = self._pick(core)
        if p is None:
            return
        cx, cy = p
        peak = self.U(0.06, 0.15) * (0.7 + 0.3 * min(d_mm / 10.0, 1.0))
        nl = int(self.rng.integers(3, 7))
        ph = self.U(0, 2 * np.pi)
        lob = self.U(0.0, 0.12)
        m = int(np.ceil(r * 1.2)) + 2
        y0, x0 = max(int(cy) - m, 0), max(int(cx) - m, 0)
        y1, x1 = min(int(cy) + m + 1, H), min(int(cx) + m + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        th = np.arctan2(yy - cy, xx - cx)
        rl = r * (1 + lob * np.cos(nl * th + ph)) / (1 + lob)
        prof = np.sqrt(np.clip(1 - (rr / rl) ** 2, 0, 1)) * synth._sig((rl - rr) / 0.8)
        D[y0:y1, x0:x1] += np.float32(peak) * prof.astype(np.float32)
        ext = r  # extent: the lobulation never exceeds r (rl <= r)
        self.boxes.append((0, cx - ext, cy - ext, cx + ext, cy + ext))
        self.kinds.append("nodule")

    def _metal(self, D, fn, bbox, amp):
        res = _supersampled(fn, *bbox)
        if res is None:
            return None
        sl, cov = res
        D[sl] += np.float32(amp) * cov
        ys, xs = np.where(cov > 0.05)
        if len(ys) == 0:
            return None
        # box = extent of the covered pixels, refined to the sub-pixel coverage at the extreme rows/cols
        return (sl[1].start + xs.min(), sl[0].start + ys.min(), sl[1].start + xs.max() + 1, sl[0].start + ys.max() + 1)

    def coin(self, D):
        d = self.U(15, 28) / MM_PER_PX
        if self.U() < 0.5:  # oesophagus: midline, upper chest / neck
            cx, cy = self.mid_x + self.U(-8, 8), self.U(0.12, 0.38) * H
        else:
            p = self._pick(self.body, 0.8)
            if p is None:
                return
            cx, cy = p
        a, b = d / 2, d / 2 * self.U(0.75, 1.0)
        ang = self.U(0, np.pi)
        ca, sa = np.cos(ang), np.sin(ang)

        def fn(x, y):
            u, v = (x - cx) * ca + (y - cy) * sa, -(x - cx) * sa + (y - cy) * ca
            return (u / a) ** 2 + (v / b) ** 2 <= 1
        box = self._metal(D, fn, (cx - a - 2, cy - a - 2, cx + a + 2, cy + a + 2), self.U(0.7, 1.1))
        if box:
            self.boxes.append((1,) + box)
            self.kinds.append("coin")

    def bar(self, D):
        p = self._pick(self.body, 0.8)
        if p is None:
            return
        cx, cy = p
        L, wd = self.U(12, 55) / MM_PER_PX, self.U(1.2, 3.5) / MM_PER_PX
        ang = self.U(0, np.pi)
        ca, sa = np.cos(ang), np.sin(ang)
        kind = int(self.rng.integers(0, 3))  # 0 clip, 1 safety pin (loop + 2 legs), 2 screw (head + notches)
        notch = self.U(1.2, 2.0) / MM_PER_PX

        def fn(x, y):
            u, v = (x - cx) * ca + (y - cy) * sa, -(x - cx) * sa + (y - cy) * ca
            core = (np.abs(u) <= L / 2) & (np.abs(v) <= wd / 2)
            if kind == 1:  # two legs side by side + loop at one end
                leg2 = (np.abs(u) <= L / 2) & (np.abs(v - 2.2 * wd) <= wd / 2.5)
                loop = np.abs(np.hypot(u + L / 2, v - 1.1 * wd) - 1.3 * wd) <= wd / 2.5
                return core | leg2 | loop
            if kind == 2:  # screw: head at +L/2, thread notches along the shaft
                head = (np.abs(u - L / 2) <= wd * 0.6) & (np.abs(v) <= wd * 1.1)
                thread = np.abs(np.mod(u, notch) - notch / 2) < notch * 0.2
                return head | (core & ~(thread & (np.abs(v) > wd * 0.3) & (u < L / 2 - wd)))
            return core
        ext = L / 2 + 4 * wd
        box = self._metal(D, fn, (cx - ext, cy - ext, cx + ext, cy + ext), self.U(0.7, 1.1))
        if box:
            self.boxes.append((1,) + box)
            self.kinds.append("bar")

    def ecg(self, D):
        """Unlabelled confounder: snap + faint pad ring + faint lead wire."""
        p = self._pick(self.body, 0.8)
        if p is None:
            return
        cx, cy = p
        rs = self.U(3, 5) / MM_PER_PX / 2
        rp = self.U(30, 40) / MM_PER_PX / 2
        m = int(rp) + 3
        y0, x0 = max(int(cy) - m, 0), max(int(cx) - m, 0)
        y1, x1 = min(int(cy) + m + 1, H), min(int(cx) + m + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        D[y0:y1, x0:x1] += (np.float32(self.U(0.5, 0.9)) * synth._sig((rs - rr) / 0.4)
                            + np.float32(self.U(0.02, 0.05)) * np.exp(-0.5 * ((rr - rp) / 1.2) ** 2)
                            + np.float32(self.U(0.01, 0.03)) * (rr < rp)).astype(np.float32)
        # lead wire: a random smooth curve leaving the snap
        n = 200
        ang = self.U(0, 2 * np.pi) + np.cumsum(self.rng.normal(0, 0.03, n))
        px = cx + np.cumsum(np.cos(ang)) * 1.5
        py = cy + np.cumsum(np.sin(ang)) * 1.5
        wire = np.zeros((H, W), np.float32)
        ok = (px >= 0) & (px < W) & (py >= 0) & (py < H)
        wire[py[ok].astype(int), px[ok].astype(int)] = 1
        wire = _ndi.gaussian_filter(wire, 0.7)
        D += np.float32(self.U(0.15, 0.3)) * np.clip(wire / max(wire.max(), 1e-6), 0, 1)


def generate(seed):
    """-> stored uint16 [512,512] (0..4095), window centre, window width, boxes float64 [n,4] (x1,y1,x2,y2 in
    512-pixel coordinates), labels int64 [n] (0 nodule, 1 foreign_body), background label (synth.LABELS)."""
    rng = np.random.default_rng([77031, int(seed)])
    u = rng.random()
    bg = 0 if u < 0.70 else (1 if u < 0.85 else 2)
    n_obj = int(rng.choice(4, p=N_OBJ_P))
    kinds = ["nodule" if rng.random() < 0.5 else ("coin" if rng.random() < 0.45 else "bar") for _ in range(n_obj)]
    n_ecg = int(rng.integers(1, 5)) if rng.random() < 0.45 else 0

    lung_pat, mid_x = _lung_mask_patient(seed, bg)
    st = {"aff": [], "done": False}
    real_ndi, real_up = synth.ndimage, synth._up

    class NdiProxy:
        def __getattr__(self, k):
            return getattr(real_ndi, k)

        def affine_transform(self, a, rot, offset=0.0, **kw):
            out = real_ndi.affine_transform(a, rot, offset=offset, **kw)
            st["aff"].append((rot, offset, out))
            return out

    objs = {}

    def up(a, shape, mode="bilinear"):
        out = real_up(a, shape, mode)
        if not st["done"] and len(st["aff"]) == 2 and tuple(shape) == (H, W) and mode == "bilinear":
            st["done"] = True
            rot, off, _ = st["aff"][0]
            body512 = real_up(st["aff"][1][2], (H, W))
            lung_posed = real_ndi.affine_transform(lung_pat, rot, offset=off, order=1, mode="constant")
            lung512 = real_up(lung_posed, (H, W))
            # where the patient's midline lands in the detector frame (upper chest), for oesophageal coins
            mid512 = float(np.average(np.arange(W) + 0.5, weights=body512[H // 4] + 1e-6))
            o = _Objects(rng, lung512, body512, mid512)
            for k in kinds:
                getattr(o, k)(out)
            for _ in range(n_ecg):
                o.ecg(out)
            objs["o"] = o
        return out

    synth.ndimage, synth._up = NdiProxy(), up
    try:
        stored, c, w = synth.generate(seed, bg)
    finally:
        synth.ndimage, synth._up = real_ndi, real_up
    assert st["done"], "synth.generate changed: object injection point not found"
    bx = objs["o"].boxes
    _last.update(kinds=objs["o"].kinds, n_ecg=n_ecg)
    boxes = np.array([b[1:] for b in bx], dtype=np.float64).reshape(-1, 4)
    labels = np.array([b[0] for b in bx], dtype=np.int64)
    return stored, c, w, boxes, labels, bg


def generate_meta(seed):
    """generate() plus the object kinds ('nodule', 'coin', 'bar') and the number of ECG electrodes."""
    out = generate(seed)
    return out + (list(_last["kinds"]), _last["n_ecg"])


_last = {}
