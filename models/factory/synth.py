"""Synthetic 12-bit chest radiograph phantoms (PA view) for cxr-tiny-cls.

These are NOT real radiographs. They are procedural phantoms with the coarse
anatomy of a PA chest film (body, two lung fields, mediastinum/heart, spine,
ribs, clavicles, diaphragm domes, vessel markings), random position / size /
exposure / noise, and three classes:

  0 normal        no finding
  1 pneumothorax  a lateral/apical rim of the lung with no lung markings,
                  slightly darker, bounded by a thin bright visceral pleural line
  2 other         a basal effusion (meniscus, blunted costophrenic angle)
                  or patchy airspace opacities

`generate(seed, label)` returns (stored uint16 512x512 in 0..4095, window
centre c, window width w), i.e. what would go into a MONOCHROME2 DICOM with
RescaleSlope 1 / RescaleIntercept 0.  Everything is a pure function of
(seed, label): the same call gives the same bytes.
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

H = W = 512          # stored image size
A = 256              # anatomy is drawn on an A x A grid, then upsampled (the model sees 224 anyway)
LABELS = ["normal", "pneumothorax", "other"]


def _sig(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # logistic, overflow-free


def _smooth_noise(rng, shape, sigma):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")


def _band(d, half, soft):
    """Soft band |d| < half with edge softness `soft` (same units)."""
    return _sig((half - np.abs(d)) / soft)


def _lowres_noise(rng, n, shape=(A, A)):
    """Smooth unit-variance noise: an n x n random grid upsampled with cubic splines."""
    g = rng.standard_normal((n, n)).astype(np.float32)
    return _up(g, shape, "bicubic")


def _up(a, shape, mode="bilinear"):
    """Upsample a 2-D float32 array (torch interpolate, align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()


def generate(seed, label):
    """Return (stored uint16 [512,512] 0..4095, window centre, window width)."""
    rng = np.random.default_rng([20240611, int(seed), int(label)])
    f32 = np.float32

    def U(a=0.0, b=1.0):  # python float: keeps float32 arrays float32 (NEP 50)
        return float(rng.uniform(a, b))

    Y, X = (np.mgrid[0:A, 0:A].astype(f32) + f32(0.5)) / f32(A)  # patient frame; pose applied at the end

    # ---- body (soft tissue) ----
    bw = U(0.40, 0.47)
    u, v = (X - 0.5) / bw, (Y - 0.62) / 0.62
    body = _sig((1 - (u ** 4 + v ** 4)) / 0.05)
    neck = _sig((0.09 - np.abs(X - 0.5)) / 0.01) * _sig((0.13 - Y) / 0.01)
    body = np.maximum(body * _sig((Y - 0.10) / 0.015), neck)
    D = body * (0.50 + 0.10 * (1 - np.clip(u, -1, 1) ** 2))

    # ---- lungs ----
    lungs, lung_par = [], []
    mid_x = 0.5 + U(-0.01, 0.01)
    ax_base, ay = U(0.125, 0.15), U(0.24, 0.29)
    cy = U(0.43, 0.47)
    dome_h = U(0.04, 0.08)
    for side in (-1, +1):  # -1: patient's right lung (image left)
        cx = mid_x + side * U(0.17, 0.20)
        ax = ax_base * (U(0.95, 1.05) if side < 0 else U(0.88, 0.98))
        lu = (X - cx) / ax * side  # >0 lateral
        lv = (Y - cy) / ay          # >0 caudal
        taper = 1 + 0.9 * np.maximum(-lv, 0) ** 1.5  # narrow apex
        rho = np.sqrt((lu * taper) ** 2 + lv ** 2)
        base = cy + ay * U(0.78, 0.9) + (0.0 if side > 0 else -0.015)
        dome = base - dome_h * np.clip(1 - ((X - cx) / (1.1 * ax)) ** 2, 0, 1)
        m = _sig((1 - rho) / 0.03) * _sig((dome - Y) / 0.006)
        lungs.append(m)
        lung_par.append(dict(cx=cx, ax=ax, rho=rho, lu=lu, lv=lv, dome=dome, side=side))
    lung = np.clip(lungs[0] + lungs[1], 0, 1)

    # ---- heart / mediastinum ----
    hx, hy = mid_x + U(0.03, 0.06), cy + ay * U(0.4, 0.55)
    hax, hay = U(0.11, 0.15), U(0.09, 0.12)
    hu, hv = (X - hx) / hax, (Y - hy) / hay
    heart = _sig((1 - np.sqrt((hu + 0.25 * hv) ** 2 + hv ** 2)) / 0.06)
    medi = _band(X - mid_x, U(0.045, 0.06), 0.01) * _sig((Y - 0.1) / 0.02)
    trachea = _band(X - mid_x, 0.012, 0.004) * _sig((cy - 0.05 - Y) / 0.01) * _sig((Y - 0.08) / 0.01)

    # ---- vessel markings: radiating streaks from each hilum + fine texture ----
    vess = np.zeros_like(X)
    for lp in lung_par:
        hxl, hyl = mid_x + lp["side"] * 0.08, cy + 0.03
        r = np.sqrt((X - hxl) ** 2 + (Y - hyl) ** 2)
        phi = np.arctan2(Y - hyl, (X - hxl) * lp["side"])
        grid = ndimage.gaussian_filter(rng.standard_normal((360, 40)), (1.0, 3.0), mode="wrap")
        grid = (grid / grid.std()).astype(f32)
        ia = (phi + np.pi) * f32(360 / (2 * np.pi))
        ir = np.clip(r * f32(39 / 0.45), 0, 39)
        streak = ndimage.map_coordinates(grid, [ia, ir], order=1, mode="grid-wrap")
        vess += np.clip(streak - 0.6, 0, None) * np.exp(-r / 0.18)
    fine = ndimage.gaussian_filter(rng.standard_normal((A, A)).astype(f32), 0.75, mode="wrap") * 6
    vess = 0.05 * vess + 0.012 * fine

    lung_dark = U(0.28, 0.36)
    soft_lung = lung * (1 - 0.9 * heart) * (1 - medi)
    D = D - lung_dark * soft_lung + 0.10 * heart * body + 0.12 * medi - 0.08 * trachea

    # ---- pathology ----
    no_markings = np.zeros_like(X)
    if label == 1:  # pneumothorax
        lp = lung_par[int(rng.integers(0, 2))]
        li = lungs[0] if lp["side"] < 0 else lungs[1]
        theta = np.arctan2(lp["lu"], -lp["lv"])  # 0 = apex, +pi/2 = lateral
        t0, tw = U(0.2, 1.2), U(0.6, 1.1)
        dmax = U(0.16, 0.42)
        depth = dmax * np.exp(-0.5 * ((theta - t0) / tw) ** 2)
        edge = 1 - depth
        ptx = li * _sig((lp["rho"] - edge) / 0.015) * _sig((depth - 0.03) / 0.01)
        no_markings = ptx
        line_w = U(0.6, 1.0) / A / lp["ax"]  # gaussian sigma of the pleural line
        line = np.exp(-0.5 * ((lp["rho"] - edge) / line_w) ** 2) * li * _sig((depth - 0.04) / 0.01)
        D = D - U(0.05, 0.09) * ptx + U(0.10, 0.16) * line
        D = D + 0.03 * li * (1 - ptx) * (dmax > 0.25)  # the collapsed lung is a little denser
    elif label == 2:  # other: effusion and/or patchy opacity
        kind = U()
        if kind < 0.6:  # effusion: basal opacity with a meniscus, higher laterally
            i = int(rng.integers(0, 2))
            lp, li = lung_par[i], lungs[i]
            lat = np.clip((X - lp["cx"]) * lp["side"] / lp["ax"], -1.2, 1.5)
            top = lp["dome"].min() - U(0.05, 0.18)
            level = top - U(0.03, 0.08) * (lat + 1) ** 2 / 2
            eff = _sig((Y - level) / 0.012) * (0.85 + 0.15 * np.clip((Y - level) / 0.08, 0, 1))
            D = D + lung_dark * U(0.75, 1.0) * eff * li
            no_markings = np.maximum(no_markings, eff * li)
        if kind >= 0.45:  # patchy airspace opacities
            blobs = np.zeros_like(X)
            for _ in range(int(rng.integers(2, 6))):
                lp = lung_par[int(rng.integers(0, 2))]
                bx = lp["cx"] + lp["side"] * U(-0.4, 0.6) * lp["ax"]
                by = cy + U(-0.2, 0.7) * ay
                s = U(0.03, 0.07)
                blobs += np.exp(-0.5 * (((X - bx) ** 2 + (Y - by) ** 2) / s ** 2))
            mottle = 1 + 0.6 * _lowres_noise(rng, 64)
            D = D + U(0.12, 0.2) * np.clip(blobs * mottle, 0, 1.2) * lung

    D = D + vess * soft_lung * (1 - no_markings)

    # ---- bones: spine, ribs (1-D profiles looked up per pixel), clavicles ----
    bone = 0.10 * _band(X - mid_x, 0.035, 0.006) * _sig((Y - 0.05) / 0.02) * (1 + 0.25 * np.cos(2 * np.pi * Y / 0.055))
    rib_y0, rib_dy = U(0.12, 0.15), U(0.055, 0.065)
    th = U(0.010, 0.013)
    rib_amp = U(0.07, 0.11)
    p1d = np.linspace(-0.5, 1.5, 8192)
    post1d, ant1d = np.zeros_like(p1d), np.zeros_like(p1d)
    for k in range(10):
        yk = rib_y0 + k * rib_dy + U(-0.004, 0.004)
        d = p1d - yk
        post1d += 0.7 * _band(d, th, 0.003) + 0.5 * np.exp(-0.5 * ((np.abs(d) - th) / 0.0025) ** 2)
        if k < 6:
            ant1d += 0.4 * _band(d - 0.10, th * 1.2, 0.004)
    dx = np.abs(X - mid_x)
    cage = _sig((dx - 0.03) / 0.01) * _sig((ax_base + 0.22 - dx) / 0.02)
    post = np.interp(Y - (-0.06 * dx + 0.75 * dx ** 2), p1d, post1d).astype(f32)
    ant = np.interp(Y - 0.45 * (0.30 - dx), p1d, ant1d).astype(f32) * _sig((dx - 0.08) / 0.02)
    bone = bone + rib_amp * cage * (post + ant)
    cly = U(0.13, 0.17)
    clav = Y - (cly - 0.12 * (dx - 0.05) + 0.25 * (dx - 0.15) ** 2)
    bone = bone + 0.16 * _band(clav, 0.014, 0.003) * _sig((dx - 0.04) / 0.01) * _sig((0.33 - dx) / 0.02)
    D = D + bone * body

    # ---- abdomen below the domes ----
    D = D + 0.06 * body * _sig((Y - np.minimum(lung_par[0]["dome"], lung_par[1]["dome"]) - 0.02) / 0.02) * (1 - lung)

    # ---- pose: rotate / scale / shift the patient in the detector frame ----
    ang = np.deg2rad(U(-4, 4))
    sc = U(0.88, 1.06)
    sx, sy = U(-0.04, 0.04) * A, U(-0.04, 0.04) * A
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]]) / sc  # out (r,c) -> in (r,c)
    ctr = np.array([A / 2, A / 2])
    off = ctr - rot @ (ctr + np.array([sy, sx]))
    D = ndimage.affine_transform(np.clip(D, 0, 1.2).astype(f32), rot, offset=off, order=1, mode="constant")
    body = ndimage.affine_transform(body.astype(f32), rot, offset=off, order=1, mode="constant")
    D, body = _up(D, (H, W)), _up(body, (H, W))

    # ---- burned-in side marker (detector frame) ----
    if U() < 0.5:
        yy, xx = np.mgrid[0:H, 0:W] / H
        mx, my = U(0.05, 0.12), U(0.05, 0.12)
        mk = ((np.abs(xx - mx) < 0.006) & (np.abs(yy - my - 0.015) < 0.02)) | \
             ((np.abs(yy - my - 0.032) < 0.006) & (xx > mx - 0.006) & (xx < mx + 0.02))
        D = np.where(mk, f32(0.95), D)

    # ---- detector: blur, exposure, noise, 12-bit ----
    D = ndimage.gaussian_filter(D, U(0.3, 0.7))
    D = D + 0.02 * _lowres_noise(rng, 8, (H, W)) * body  # slow non-uniformity
    I = np.clip(D, 0, 1.2) ** U(0.85, 1.15)
    lo, hi = U(80, 400), U(2800, 3900)
    s = lo + (hi - lo) * I
    s = s + rng.standard_normal(s.shape).astype(f32) * (U(0.6, 1.4) * np.sqrt(np.maximum(s, 1)) + 4)
    stored = np.clip(np.rint(s), 0, 4095).astype(np.uint16)

    inside = stored[body > 0.5]
    p1, p50, p99 = np.percentile(inside, [1, 50, 99])
    c = int(round(p50 + U(-0.05, 0.05) * (p99 - p1)))
    w = int(round((p99 - p1) * U(1.0, 1.25)))
    return stored, c, max(w, 2)
