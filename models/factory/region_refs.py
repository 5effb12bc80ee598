"""Reference regions of fixed masks from scikit-image, for src/task/regions.rs (tests/regions.rs reads them):
opening (morphology.binary_opening, square footprint, default border mode), 8-connected components
(measure.label), area / centroid / bounding box (measure.regionprops), the outer contour (measure.find_contours at
0.5 on the zero-padded component, fully_connected="high"), started at its smallest (row, col) vertex and turned so
that its shoelace area (x = column, y = row) is positive, then measure.approximate_polygon with the tolerance
doubled until at most outline_points vertices remain.

  /work/venv-metrics/bin/python models/factory/region_refs.py     # writes tests/fixtures/regions/reference.json

Versions: requirements-metrics.txt (scikit-image 0.26.0).
"""
import json
import os
import warnings

import numpy as np
import skimage
from skimage import measure, morphology

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "fixtures", "regions", "reference.json"))
DEFAULT = {"opening_px": 0, "min_region_px": 4, "max_regions": 5, "outline_points": 32, "outline_tolerance_px": 0.5}


def from_rows(rows):
    return np.array([[ch == "#" for ch in r] for r in rows], dtype=bool)


def twice_area(ring):
    x, y = ring[:, 1], ring[:, 0]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def canonical(closed):
    ring = closed[:-1]
    k = min(range(len(ring)), key=lambda i: (ring[i, 0], ring[i, 1]))
    ring = np.roll(ring, -k, axis=0)
    if twice_area(ring) < 0:
        ring = np.concatenate([ring[:1], ring[1:][::-1]])
    return np.concatenate([ring, ring[:1]])


def simplify_to(closed, tol, max_points):
    """approximate_polygon, the tolerance doubled until at most max_points vertices remain; an outline that would
    fall below 3 distinct vertices (a region no wider than twice the tolerance) stays unsimplified when it fits."""
    while True:
        s = measure.approximate_polygon(closed, tol)
        if len(s) < 4 and len(closed) <= max_points + 1:
            return closed
        if len(s) <= max_points + 1 or tol > 1e6:
            return s
        tol = tol * 2 if tol > 0 else 0.5


def regions(mask, spec):
    m = mask
    if spec["opening_px"]:
        k = 2 * spec["opening_px"] + 1
        with warnings.catch_warnings():  # deprecated in 0.26 for morphology.opening, whose border rule differs
            warnings.simplefilter("ignore", FutureWarning)
            m = morphology.binary_opening(mask, footprint=np.ones((k, k), bool))
    lab = measure.label(m, connectivity=2)
    props = [p for p in measure.regionprops(lab) if int(p.area) >= spec["min_region_px"]]
    total = len(props)
    props = sorted(props, key=lambda p: -int(p.area))[:spec["max_regions"]]  # stable: label order on ties
    out = []
    for p in props:
        comp = np.pad(lab == p.label, 1).astype(float)
        contours = measure.find_contours(comp, 0.5, fully_connected="high")
        outer = max(contours, key=lambda c: abs(twice_area(c[:-1])))
        assert np.array_equal(outer[0], outer[-1]), "a padded component's contour is closed"
        closed = canonical(outer - 1.0)
        simple = simplify_to(closed, spec["outline_tolerance_px"], spec["outline_points"])
        out.append({"area_px": int(p.area), "centroid": [float(v) for v in p.centroid],
                    "bbox": [int(v) for v in p.bbox],
                    "outline": [[float(a), float(b)] for a, b in simple]})
    return {"opened": ["".join("#" if v else "." for v in row) for row in m], "count": total, "components": out}


def blobs(seed, h, w, level, sigma=2.0):
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.standard_normal((h, w)), sigma) > level


def main():
    cases = [
        ("one pixel", from_rows(["...", ".#.", "..."]), {"min_region_px": 1}),
        ("diagonal chain is one region", from_rows(["#....", ".#...", "..#..", "...##"]), {"min_region_px": 1}),
        ("ring: the outline is the outer edge", from_rows(["#####", "#...#", "#.#.#", "#...#", "#####"]),
         {"min_region_px": 1, "outline_tolerance_px": 0.0, "outline_points": 200}),
        ("saddles stay connected", from_rows(["#.#.", ".#.#", "#.#.", "...."]), {"min_region_px": 1}),
        ("regions at every border", from_rows(["##..##", "#....#", "......", "##..##"]), {"min_region_px": 1}),
        ("equal areas keep raster order, small ones dropped, at most 3",
         from_rows(["##.##.##.#", "##.##.##..", "..........", "##.##....#", "##.##....."]),
         {"min_region_px": 2, "max_regions": 3}),
        ("empty", np.zeros((6, 7), bool), {}),
        ("full", np.ones((5, 4), bool), {}),
        ("blobs", blobs(1, 48, 64, 0.05), {}),
        ("blobs, opened", blobs(2, 48, 64, 0.0, sigma=1.2), {"opening_px": 1}),
        ("blobs, opened twice as wide", blobs(3, 56, 56, 0.1, sigma=1.5), {"opening_px": 2, "min_region_px": 1}),
        ("blob outlines capped at 8 points", blobs(4, 40, 40, -0.05, sigma=3.0), {"outline_points": 8}),
        ("blob outlines unsimplified", blobs(5, 32, 48, 0.1, sigma=2.0),
         {"outline_tolerance_px": 0.0, "outline_points": 256, "max_regions": 64, "min_region_px": 1}),
    ]
    doc = {"note": f"scikit-image {skimage.__version__}, numpy {np.__version__}; models/factory/region_refs.py",
           "cases": []}
    for name, mask, over in cases:
        spec = {**DEFAULT, **over}
        r = regions(mask, spec)
        doc["cases"].append({"name": name, "mask": ["".join("#" if v else "." for v in row) for row in mask],
                             "spec": spec, **r})
        print(f"{name}: {r['count']} regions, outlines {[len(c['outline']) for c in r['components']]}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
