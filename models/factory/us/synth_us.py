"""Synthetic B-mode ultrasound of a FAST right-upper-quadrant (hepatorenal / Morison's pouch) view.

These are phantoms drawn from a seed, not images of anyone. What a frame is made of:

* Geometry: a convex probe. The fan's apex lies `r0` mm above the skin line (virtual apex above the image),
  the sector is `angle` degrees wide and `depth` mm deep. Echoes are formed on the acquisition grid (scan
  lines x samples, i.e. polar coordinates) and then scan-converted to a Cartesian raster whose extent is the
  sector's bounding box; pixels outside the fan are 0 (black).
* Anatomy (coronal RUQ, cephalad on the screen's left), defined in millimetres in an anatomy frame that is
  randomly rotated/shifted/scaled relative to the probe: subcutaneous layers (fat, muscle, bright fasciae);
  the liver (speckled parenchyma with a slow texture modulation and small bright portal triads); a bright
  curved diaphragm on the left with the lung (mirror/A-line artefact texture) beyond it; the right kidney (an
  ellipse: hypoechoic cortex, darker medullary pyramids, bright irregular renal sinus, bright capsule) with
  the liver on its superficial/cephalad side; retroperitoneum/bowel (heterogeneous, bright gas foci with
  dirty shadows) caudal and deep.
* Free fluid (positives only): an anechoic crescent in Morison's pouch, between the liver and the kidney's
  superficial capsule, of random extent and maximum thickness (log-uniform 2.5-24 mm), with posterior acoustic
  enhancement arising from the attenuation model.
* Confounders, drawn independently of the label: anechoic tubes (IVC-like wide tube, hepatic veins, portal
  veins with bright walls), a gallbladder-like dark oval (sometimes right next to the kidney), rib and gas
  acoustic shadows, a renal cyst, a hypoechoic perirenal fat rim.
* Physics-ish image formation: complex Gaussian scatterers attached to the tissue (an integer hash of the
  tissue position, so speckle moves with the tissue in a cine clip) x amplitude echogenicity, convolved with
  an anisotropic Gaussian PSF (axial/lateral) -> envelope (fully developed Rayleigh speckle); depth-dependent
  attenuation integrated along each scan line (tissue 0.25-0.4 dB/mm round trip, fluid ~0, ribs/gas opaque)
  minus a TGC curve that compensates for an assumed tissue attenuation (imperfectly, plus random bumps);
  near-field reverberation bands; additive electronic noise (so anechoic areas are not perfectly black);
  log compression with random dynamic range and gain; bilinear scan conversion; 8-bit quantisation.

Ground truth = fluid pixels in the output raster, excluding those hidden in a rib/gas shadow.

API:
  scene(rng, positive)           -> dict of parameters for one view
  render(scene, out_rows, ...)   -> (uint8 image [rows, cols] = the sector's bounding box, bool fluid mask)
  sample(seed, positive)         -> render(scene(...)) with a random raster size and crop jitter
"""
import math

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------------------------------------- helpers

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M2
    z = (z ^ (z >> np.uint64(27))) * _M3
    return z ^ (z >> np.uint64(31))


def hash_normal(ix, iy, key):
    """Deterministic complex N(0,1) per integer lattice cell (ix, iy) and key (splitmix64 + Box-Muller)."""
    with np.errstate(over="ignore"):
        z = (ix.astype(np.int64).astype(np.uint64) * np.uint64(0x100000001B3)
             ^ (iy.astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)) * _M1
             ^ np.uint64(key) * np.uint64(0xD6E8FEB86659FD93))
        a = _mix(z)
        b = _mix(a + _M1)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u2 = ((b >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    rad = np.sqrt(-2.0 * np.log(u1))
    return rad * np.cos(2 * np.pi * u2) + 1j * rad * np.sin(2 * np.pi * u2)


def lowfreq(u, v, waves):
    """Smooth random field in [-1, 1]-ish: sum of a few plane waves (waves = [(kx, ky, phase, amp)])."""
    f = np.zeros_like(u)
    for kx, ky, ph, amp in waves:
        f += amp * np.sin(kx * u + ky * v + ph)
    return f


def rand_waves(rng, n, lam_lo, lam_hi):
    out = []
    for _ in range(n):
        lam = rng.uniform(lam_lo, lam_hi)
        th = rng.uniform(0, 2 * np.pi)
        out.append((2 * np.pi / lam * math.cos(th), 2 * np.pi / lam * math.sin(th), rng.uniform(0, 2 * np.pi),
                    rng.uniform(0.5, 1.0) / math.sqrt(n)))
    return out


def seg_dist(px, py, pts):
    """Distance from points (px, py) to the polyline pts [(x, y), ...]."""
    d = np.full(px.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        L2 = dx * dx + dy * dy + 1e-9
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / L2, 0, 1)
        d = np.minimum(d, np.hypot(px - x0 - t * dx, py - y0 - t * dy))
    return d


def bezier(p0, p1, p2, n=16):
    t = np.linspace(0, 1, n)[:, None]
    return list(map(tuple, (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)))


def smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


# ---------------------------------------------------------------------------------------------- scene

def scene(rng, positive, fluid_mm=None):
    """Draw every parameter of one RUQ view. Units: mm, degrees. Anatomy frame: x lateral (screen right =
    caudal), z depth below the skin line at the sector's centre."""
    s = {}
    # acquisition
    s["angle"] = rng.uniform(60, 75)
    s["r0"] = rng.uniform(25, 50)            # apex-to-skin distance (convex probe radius)
    s["depth"] = rng.uniform(120, 175)       # imaging depth below the skin line
    s["n_lines"] = int(rng.integers(128, 193))
    s["n_samp"] = 400
    s["psf_ax"] = rng.uniform(0.9, 1.6)      # axial PSF sigma in samples
    s["psf_lat"] = rng.uniform(0.9, 1.6)     # lateral PSF sigma in scan lines
    s["alpha"] = rng.uniform(0.25, 0.40)     # tissue attenuation dB/mm (round trip)
    s["tgc_err"] = rng.uniform(0.85, 1.08)   # TGC compensates alpha * tgc_err
    s["tgc_bumps"] = [(rng.uniform(20, 80), rng.uniform(0, 2 * np.pi), rng.uniform(0, 3)) for _ in range(3)]
    s["noise_db"] = rng.uniform(-78, -66)    # electronic noise re. liver echo at the skin
    s["dr"] = rng.uniform(48, 66)            # displayed dynamic range, dB
    s["grey"] = rng.uniform(85, 140)         # where the liver's median echo lands on 0..255
    s["rev_amp"] = rng.uniform(0.3, 1.6)
    s["smooth"] = rng.uniform(0.0, 0.7)      # post-scan-conversion smoothing sigma, px
    s["scatter_key"] = int(rng.integers(1, 2**62))
    s["scatter_mm"] = 0.3
    # pose of the anatomy relative to the probe
    s["rot"] = rng.uniform(-14, 14)
    s["shift"] = (rng.uniform(-18, 18), rng.uniform(-12, 12))
    s["scale"] = rng.uniform(0.85, 1.15)
    # subcutaneous layers
    s["subcut"] = rng.uniform(8, 22)
    s["fascia"] = sorted(rng.uniform(2, s["subcut"] - 1, size=int(rng.integers(1, 4))).tolist())
    # kidney
    k = {}
    k["c"] = (rng.uniform(-5, 35), rng.uniform(78, 115))
    k["a"], k["b"] = rng.uniform(42, 58), rng.uniform(21, 30)
    k["psi"] = rng.uniform(-32, 8)
    k["cortex"] = rng.uniform(0.35, 0.6)
    k["sinus"] = rng.uniform(1.8, 3.2)
    k["sinus_waves"] = rand_waves(rng, 4, 0.5, 1.5)  # angular waviness of the sinus outline
    k["pyramids"] = [(rng.uniform(-0.7, 0.7), rng.choice([-1, 1]) * rng.uniform(0.45, 0.6)) for _ in range(int(rng.integers(0, 6)))]
    k["gap"] = rng.uniform(0.8, 2.5)         # mm of fascia between liver and kidney when dry
    k["fat_rim"] = rng.uniform(0.25, 0.5) if rng.random() < 0.25 else None   # hypoechoic perirenal rim (confounder)
    k["fat_rim_mm"] = rng.uniform(2, 6)
    k["cyst"] = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(4, 10)) if rng.random() < 0.12 else None
    s["kidney"] = k
    # liver outline in the kidney frame
    s["liver_tip"] = rng.uniform(0.2, 1.1)   # liver ends at u = a * tip on the caudal side
    s["liver_slope"] = rng.uniform(0.5, 1.6)
    s["liver_wrap"] = rng.uniform(1.0, 2.0)  # how far (in b) the liver wraps deep around the upper pole
    s["liver_waves"] = rand_waves(rng, 5, 15, 60)
    s["liver_echo"] = rng.uniform(0.9, 1.1)
    s["triads"] = rng.uniform(0.002, 0.006)
    # diaphragm: circle, liver inside
    R = rng.uniform(95, 140)
    s["diaph"] = (rng.uniform(-95, -45) + R, rng.uniform(50, 110), R)   # leftmost point 45-95 mm left of centre
    s["lung_aline"] = rng.uniform(12, 25)
    # retroperitoneum / bowel
    s["bowel_waves"] = rand_waves(rng, 6, 6, 25)
    s["gas"] = [(rng.uniform(0.4, 1.6), rng.uniform(0.6, 1.8), rng.uniform(3, 7)) for _ in range(int(rng.integers(0, 3)))]
    # vessels in the liver (confounders)
    vessels = []
    if rng.random() < 0.55:   # IVC-like: wide, deep, roughly horizontal
        y = rng.uniform(0.5, 1.0)
        vessels.append(dict(kind="ivc", r=rng.uniform(6, 12), wall=rng.random() < 0.4,
                            pts=None, rel=(rng.uniform(-1.6, -0.6), y, rng.uniform(60, 110), rng.uniform(-20, 20), rng.uniform(-15, 15))))
    for _ in range(int(rng.integers(0, 4))):
        vessels.append(dict(kind="hv", r=rng.uniform(1.8, 5.5), wall=rng.random() < 0.45,
                            rel=(rng.uniform(-1.8, 0.6), rng.uniform(-1.4, 0.2), rng.uniform(25, 70), rng.uniform(0, 180), rng.uniform(-25, 25))))
    s["vessels"] = vessels
    # gallbladder (confounder), sometimes right next to the kidney (where fluid would be)
    gb = None
    if rng.random() < 0.5:
        near = rng.random() < 0.4
        gb = dict(near=near, phi=rng.uniform(-150, -60), off=rng.uniform(4, 12) if near else rng.uniform(15, 45),
                  a=rng.uniform(12, 24), b=rng.uniform(6, 11), rot=rng.uniform(-30, 30), wall=rng.uniform(1.5, 3.5),
                  sludge=rng.random() < 0.2)
    s["gb"] = gb
    # ribs (shadows): lateral position as a fraction of the half sector, depth under the skin
    s["ribs"] = [(rng.uniform(-0.95, 0.95), rng.uniform(0.05, 0.14), rng.uniform(2.5, 6))
                 for _ in range(int(rng.choice([0, 0, 0, 0, 1, 1, 1, 2])))]
    # free fluid in Morison's pouch
    s["fluid"] = None
    if positive:
        t = fluid_mm if fluid_mm is not None else float(np.exp(rng.uniform(np.log(2.5), np.log(24))))
        s["fluid"] = dict(t=t, phic=rng.uniform(-150, -75), half=rng.uniform(28, 80),
                          waves=rand_waves(rng, 3, 0.6, 2.0), sharp=rng.uniform(0.5, 1.5), echo=rng.uniform(0.0, 0.04))
    return s


# ---------------------------------------------------------------------------------------------- anatomy

def _kidney_frame(s, x, z):
    k = s["kidney"]
    cx, cz = k["c"]
    ps = math.radians(k["psi"])
    dx, dz = x - cx, z - cz
    u = dx * math.cos(ps) + dz * math.sin(ps)
    v = -dx * math.sin(ps) + dz * math.cos(ps)
    return u, v


def tissue(s, x, z, fluid_scale=1.0):
    """Amplitude echogenicity, attenuation (dB/mm, round trip), fluid indicator and obstruction flag at anatomy
    points (x lateral, z depth below skin, mm)."""
    k = s["kidney"]
    a, b = k["a"], k["b"]
    refl = np.empty_like(x)
    att = np.full_like(x, s["alpha"])
    fluid = np.zeros(x.shape, bool)
    obstr = np.zeros(x.shape, bool)

    # retroperitoneum / bowel background
    bw = lowfreq(x, z, s["bowel_waves"])
    refl[:] = 0.7 * np.exp(0.9 * bw)
    u, v = _kidney_frame(s, x, z)
    for gu, gv, gr in s["gas"]:
        gx, gz = gu * a, gv * b
        d = np.hypot(u - gx, v - gz)
        m = d < gr
        refl[m] = 6.0
        att[m] = 12.0
        obstr |= m

    # liver
    lower = s["liver_wrap"] * b * (1 / (1 + np.exp((u + a) / 8.0))) \
        - s["liver_slope"] * np.logaddexp(0, (u - a * s["liver_tip"]) / 6.0) * 6.0
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phik = np.degrees(np.arctan2(v / b, u / a))
    rloc = np.sqrt((a * np.cos(np.radians(phik))) ** 2 + (b * np.sin(np.radians(phik))) ** 2)
    dist_out = (rho - 1) * rloc           # ~ mm outside the kidney outline
    gap = k["gap"]
    # free fluid thickness along the kidney outline
    tfl = np.zeros_like(x)
    f = s["fluid"]
    if f is not None and fluid_scale > 0:
        dphi = (phik - f["phic"] + 180) % 360 - 180
        w = np.clip(1 - (np.abs(dphi) / f["half"]) ** 2, 0, 1) ** f["sharp"]
        wob = 1 + 0.25 * lowfreq(phik / 10.0, 0 * phik, f["waves"])
        tfl = f["t"] * fluid_scale * w * wob
    liver_side = v < lower
    in_liver = liver_side & (dist_out > gap + tfl)
    lw = lowfreq(x, z, s["liver_waves"])
    liver_refl = s["liver_echo"] * (1 + 0.16 * lw)
    refl = np.where(in_liver, liver_refl, refl)
    # liver capsule / fascia line along its inferior edge
    cap = liver_side & (np.abs(dist_out - gap - tfl) < 0.7) & (rho > 1)
    refl = np.where(cap, 2.2, refl)

    # fluid: between the kidney (+gap) and the displaced liver
    fl = liver_side & (dist_out > gap * 0.5) & (dist_out <= gap + tfl) & (tfl > 0.3)
    if f is not None:
        refl = np.where(fl, f["echo"], refl)
        att = np.where(fl, 0.01, att)
        fluid |= fl

    # perirenal fat rim (hypoechoic, confounder)
    if k["fat_rim"] is not None:
        rim = (dist_out > 0.5) & (dist_out < k["fat_rim_mm"]) & ~fl & ~in_liver
        rim |= (dist_out > 0.5) & (dist_out < min(k["fat_rim_mm"], gap + 0.6)) & ~fl
        refl = np.where(rim, k["fat_rim"], refl)

    # kidney
    in_k = rho < 1
    sinus_r = 0.55 * (1 + 0.18 * lowfreq(np.radians(phik) * 3, 0 * phik, k["sinus_waves"]))
    rs = np.sqrt((u / (a * 0.78)) ** 2 + (v / (b * 0.55)) ** 2)
    kref = np.full_like(x, k["cortex"])
    for pu, pv in k["pyramids"]:
        kref = np.where(np.hypot((u / a - pu) * a, (v / b - pv) * b) < 5.5, k["cortex"] * 0.5, kref)
    kref = np.where(rs < sinus_r / 0.55 * 0.7, k["sinus"] * (1 + 0.3 * lw), kref)
    if k["cyst"] is not None:
        cu, cv, cr = k["cyst"]
        cyst = np.hypot(u - cu * a * 0.6, v - cv * b * 0.5) < cr
        kref = np.where(cyst, 0.02, kref)
        att = np.where(in_k & cyst, 0.01, att)
    refl = np.where(in_k, kref, refl)
    kcap = (np.abs(dist_out) < 0.6)
    refl = np.where(kcap, 2.5, refl)

    # vessels and gallbladder (inside the liver only)
    for vs in s["vessels"]:
        if "pts" not in vs or vs["pts"] is None:
            pu, pv, L, ang, bend = vs["rel"]
            cxu, cxv = pu * a, pv * b
            if vs["kind"] == "ivc":
                ang = 0.0 + ang
            th = math.radians(ang)
            p0 = (cxu - L / 2 * math.cos(th), cxv - L / 2 * math.sin(th))
            p2 = (cxu + L / 2 * math.cos(th), cxv + L / 2 * math.sin(th))
            p1 = (cxu - bend * math.sin(th), cxv + bend * math.cos(th))
            vs["pts"] = bezier(p0, p1, p2)
        d = seg_dist(u, v, vs["pts"])
        lumen = (d < vs["r"]) & in_liver
        refl = np.where(lumen, 0.015, refl)
        att = np.where(lumen, 0.01, att)
        if vs["wall"]:
            refl = np.where((d >= vs["r"]) & (d < vs["r"] + 1.0) & in_liver, 2.8, refl)
    gb = s["gb"]
    if gb is not None:
        ph = math.radians(gb["phi"])
        off = gb["off"] + gb["b"] + gap + (f["t"] if f is not None and fluid_scale > 0 else 0) * 0.8
        gu = (a + off) * math.cos(ph)
        gv = (b + off) * math.sin(ph)
        gr = math.radians(gb["rot"] + np.degrees(math.atan2(gv, gu)) + 90)
        du, dv = u - gu, v - gv
        eu = du * math.cos(gr) + dv * math.sin(gr)
        ev = -du * math.sin(gr) + dv * math.cos(gr)
        rr = np.sqrt((eu / gb["a"]) ** 2 + (ev / gb["b"]) ** 2)
        lum = (rr < 1) & (in_liver | liver_side)
        wall = (rr >= 1) & (rr < 1 + gb["wall"] / gb["b"]) & in_liver
        refl = np.where(wall, 1.8, refl)
        inner = 0.02 if not gb["sludge"] else np.where(ev > gb["b"] * 0.4, 0.4, 0.02)
        refl = np.where(lum & ~fluid, inner, refl)
        att = np.where(lum & ~fluid, 0.01, att)

    # lung beyond the diaphragm
    dx0, dz0, R = s["diaph"]
    dd = np.hypot(x - dx0, z - dz0) - R
    lung = dd > 0
    aline = 0.5 + 0.5 * np.cos(2 * np.pi * z / s["lung_aline"]) ** 8
    refl = np.where(lung, 0.6 * (1 + 0.3 * bw) + 0.8 * aline, refl)   # mirror-image / A-line texture
    att = np.where(lung, s["alpha"] * 1.2, att)
    refl = np.where(np.abs(dd) < 1.6, 5.0, refl)   # diaphragm
    fluid &= ~lung

    # subcutaneous layers (over everything near the skin)
    sub = z < s["subcut"]
    sref = np.where(z < s["subcut"] * 0.45, 0.55, 0.75 * (1 + 0.35 * np.cos(2 * np.pi * z / 2.5) ** 4))
    for fz in s["fascia"]:
        sref = np.where(np.abs(z - fz) < 0.6, 2.5, sref)
    sref = np.where(np.abs(z - s["subcut"]) < 0.8, 3.0, sref)
    refl = np.where(sub, sref, refl)
    att = np.where(sub, s["alpha"], att)
    fluid &= ~sub
    return refl, att, fluid, obstr


# ---------------------------------------------------------------------------------------------- imaging

def probe_to_anatomy(s, px, pz, breathe=(0.0, 0.0), probe_rot=0.0):
    """Probe coordinates (apex at 0, z down) -> anatomy coordinates (z = depth under the skin line)."""
    sc = s["scale"]
    th = math.radians(s["rot"] + probe_rot)
    zz = pz - s["r0"]
    x = (px * math.cos(th) - zz * math.sin(th)) / sc - s["shift"][0] - breathe[0]
    z = (px * math.sin(th) + zz * math.cos(th)) / sc - s["shift"][1] - breathe[1]
    return x, z


def bbox_mm(s):
    """Sector bounding box in probe coordinates: x0, z0, x1, z1 (mm)."""
    h = math.radians(s["angle"] / 2)
    rmax = s["r0"] + s["depth"]
    return -rmax * math.sin(h), s["r0"] * math.cos(h), rmax * math.sin(h), rmax


def render(s, out_rows, box=None, breathe=(0.0, 0.0), probe_rot=0.0, fluid_scale=1.0, noise_key=None):
    """Render one frame. box = (x0, z0, x1, z1) in probe mm (default: the sector's bounding box); the raster
    has out_rows rows and square pixels. Returns (uint8 image, bool fluid mask, mm per pixel)."""
    n_l, n_s = s["n_lines"], s["n_samp"]
    h = math.radians(s["angle"] / 2)
    r0, D = s["r0"], s["depth"]
    rr = r0 + (np.arange(n_s) + 0.5) / n_s * D
    th = -h + (np.arange(n_l) + 0.5) / n_l * 2 * h
    R, TH = np.meshgrid(rr, th, indexing="ij")          # [n_s, n_l]
    px, pz = R * np.sin(TH), R * np.cos(TH)
    ax, az = probe_to_anatomy(s, px, pz, breathe, probe_rot)
    refl, att, _, obstr = tissue(s, ax, az, fluid_scale)

    # ribs: bright arcs just under the skin that block the beam (in probe coordinates, fixed to the probe)
    for fr, dz, wmm in s["ribs"]:
        phi_c = fr * h
        depth_r = r0 + dz * D
        lat = (TH - phi_c) * R
        rib = (np.abs(lat) < wmm) & (R > depth_r) & (R < depth_r + 4.0)
        refl = np.where(rib & (R < depth_r + 1.2), 7.0, refl)
        att = np.where(rib, 14.0, att)
        obstr |= rib

    # near-field reverberation (fixed to the probe)
    dn = R - r0
    rev = np.zeros_like(R)
    for kk in range(1, 5):
        rev += s["rev_amp"] * 0.55 ** kk * np.exp(-0.5 * ((dn - kk * s["subcut"] * 0.5) / 1.2) ** 2)
    amp = np.sqrt(refl ** 2 + rev ** 2)

    # scatterers attached to tissue (hash of the tissue lattice cell)
    g = s["scatter_mm"]
    sc = hash_normal(np.floor(ax / g), np.floor(az / g), s["scatter_key"])
    field = amp * sc
    field = ndimage.gaussian_filter(field.real, (s["psf_ax"], s["psf_lat"]), mode="nearest") \
        + 1j * ndimage.gaussian_filter(field.imag, (s["psf_ax"], s["psf_lat"]), mode="nearest")
    field /= math.sqrt(1.0 / (4 * np.pi * s["psf_ax"] * s["psf_lat"]))   # unit mean power for unit amplitude

    # attenuation along each scan line and TGC
    dr = D / n_s
    loss_db = np.cumsum(att, axis=0) * dr
    tgc_db = s["alpha"] * s["tgc_err"] * dn
    for lam, ph, a in s["tgc_bumps"]:
        tgc_db = tgc_db + a * np.sin(2 * np.pi * dn / lam + ph)
    nk = noise_key if noise_key is not None else s["scatter_key"] ^ 0x5A5A
    ii, jj = np.meshgrid(np.arange(n_s), np.arange(n_l), indexing="ij")
    noise = hash_normal(ii, jj, nk) * 10 ** (s["noise_db"] / 20)
    env = np.abs(field * 10 ** (-loss_db / 20) + noise) * 10 ** (tgc_db / 20)
    db = 20 * np.log10(env + 1e-12)
    # shadow: obstruction crossed above -> the fluid under it is not visible
    shadow = np.cumsum(obstr, axis=0) > 0

    # log compression: the median echo of unit-amplitude tissue (the liver) lands at s["grey"]
    # (unit-amplitude tissue after ideal TGC: E|field|^2 = 2, Rayleigh median sqrt(2 ln 2) = +1.4 dB)
    lo = 1.4 - s["grey"] / 255.0 * s["dr"]
    disp = np.clip((db - lo) / s["dr"], 0, 1) * 255.0

    # scan conversion onto the raster
    x0, z0, x1, z1 = box if box is not None else bbox_mm(s)
    mm = (z1 - z0) / out_rows
    cols = int(round((x1 - x0) / mm))
    X = x0 + (np.arange(cols) + 0.5) * mm
    Z = z0 + (np.arange(out_rows) + 0.5) * mm
    Xg, Zg = np.meshgrid(X, Z)
    Rg, Tg = np.hypot(Xg, Zg), np.arctan2(Xg, Zg)
    inside = (Rg >= r0) & (Rg <= r0 + D) & (np.abs(Tg) <= h)
    si = (Rg - r0) / D * n_s - 0.5
    li = (Tg + h) / (2 * h) * n_l - 0.5
    img = ndimage.map_coordinates(disp, [si, li], order=1, mode="nearest")
    if s["smooth"] > 0.05:
        img = ndimage.gaussian_filter(img, s["smooth"])
    img = np.where(inside, img, 0.0)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # ground truth on the raster: fluid at the pixel centre, not shadowed
    gx, gz = probe_to_anatomy(s, Xg, Zg, breathe, probe_rot)
    _, _, fl, _ = tissue_fluid_only(s, gx, gz, fluid_scale)
    sh = ndimage.map_coordinates(shadow.astype(np.float32), [si, li], order=1, mode="nearest") > 0.5
    mask = fl & inside & ~sh
    return img, mask, mm


def tissue_fluid_only(s, x, z, fluid_scale=1.0):
    if s["fluid"] is None or fluid_scale <= 0:
        return None, None, np.zeros(x.shape, bool), None
    return tissue(s, x, z, fluid_scale)


def sample(seed, positive, fluid_mm=None):
    """One training/test image: random raster size (220-330 rows) and crop jitter of a few % per edge
    (a board's configured crop is never exact). Returns (uint8 image = the crop, bool mask, scene)."""
    rng = np.random.default_rng([seed, 0xB5])
    s = scene(rng, positive, fluid_mm)
    x0, z0, x1, z1 = bbox_mm(s)
    w, hh = x1 - x0, z1 - z0
    j = rng.uniform(-0.03, 0.03, size=4)
    box = (x0 + j[0] * w, z0 + j[1] * hh, x1 + j[2] * w, z1 + j[3] * hh)
    rows = int(rng.integers(220, 331))
    img, mask, _ = render(s, rows, box)
    return img, mask, s


if __name__ == "__main__":
    import sys
    import time
    from PIL import Image
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/us"
    import os
    os.makedirs(out, exist_ok=True)
    t = time.time()
    for i in range(12):
        img, mask, s = sample(i, i % 2 == 1)
        rgb = np.stack([img] * 3, -1).copy()
        rgb[mask, 0] = np.maximum(rgb[mask, 0], 160)
        Image.fromarray(np.concatenate([np.stack([img] * 3, -1), rgb], 1)).save(f"{out}/s{i}.png")
        print(i, img.shape, mask.mean(), s["fluid"] and round(s["fluid"]["t"], 1))
    print("%.3fs per image" % ((time.time() - t) / 12))
