//! Regions of a segmentation mask: its connected components, each with its area, centroid,
//! bounding box and a simplified outline, so that a finding says *where* a label is, not only
//! how much of the image it covers.
//!
//! Every step follows scikit-image, which `models/factory/region_refs.py` runs on fixed masks
//! to make the committed reference (`tests/fixtures/regions/reference.json`):
//! - optional clean-up: `morphology.binary_opening` with a `(2r+1)²` square footprint and its
//!   default border mode (outside the image counts as foreground for the erosion, background
//!   for the dilation, so a region touching the border is not eaten from that side);
//! - components: `measure.label`, 8-connectivity, numbered in raster order of their first
//!   pixel; `regionprops` area (pixels), centroid (mean row, mean column) and bounding box
//!   (half-open);
//! - outline: `measure.find_contours` at 0.5 on the component alone, zero-padded, foreground
//!   fully connected (`fully_connected="high"`, as the 8-connected labelling); of its closed
//!   contours the one enclosing the largest area (the outer one, not a hole's). Started at its
//!   smallest (row, column) vertex and turned clockwise on screen, so that it is one
//!   well-defined polygon;
//! - simplification: `measure.approximate_polygon` (Douglas–Peucker, its distance formula
//!   and tie-breaking), with the tolerance doubled until the outline has at most
//!   `outline_points` vertices.
//!
//! Coordinates here are the mask's: rows and columns of pixel centres. `crate::task` places
//! them in the image.

use std::collections::HashMap;

pub use crate::model::manifest::SegmentationSpec as RegionSpec;

/// One connected component, in mask coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// Pixels in the component.
    pub area_px: u32,
    /// Mean (row, column) of its pixels.
    pub centroid: [f64; 2],
    /// `[min_row, min_col, max_row + 1, max_col + 1]`.
    pub bbox: [u32; 4],
    /// Closed outline through pixel-edge midpoints, `[row, col]`, first vertex repeated last.
    pub outline: Vec<[f64; 2]>,
}

/// The components of `mask` (`h` × `w`, row-major) after the spec's opening, at least
/// `min_region_px` large: the largest `max_regions` of them, largest first (ties: raster
/// order), and how many there were in all.
pub fn components(mask: &[bool], h: usize, w: usize, spec: &RegionSpec) -> (Vec<Component>, usize) {
    assert_eq!(
        mask.len(),
        h * w,
        "mask of {h} x {w} has {} pixels",
        mask.len()
    );
    let mut cleaned;
    let mask = if spec.opening_px > 0 {
        cleaned = mask.to_vec();
        open(&mut cleaned, h, w, spec.opening_px as usize);
        &cleaned[..]
    } else {
        mask
    };
    let (labels, stats) = label(mask, h, w);
    let mut kept: Vec<(u32, &Stats)> = stats
        .iter()
        .enumerate()
        .filter(|(_, s)| s.area >= spec.min_region_px as u64)
        .map(|(i, s)| (i as u32 + 1, s))
        .collect();
    let total = kept.len();
    // Stable: equal areas keep raster order.
    kept.sort_by_key(|k| std::cmp::Reverse(k.1.area));
    kept.truncate(spec.max_regions);
    let comps = kept
        .into_iter()
        .map(|(id, s)| {
            let contour = outline(&labels, w, id, s.bbox);
            Component {
                area_px: s.area as u32,
                centroid: [
                    s.sum_r as f64 / s.area as f64,
                    s.sum_c as f64 / s.area as f64,
                ],
                bbox: s.bbox,
                outline: simplify_to(&contour, spec.outline_tolerance_px, spec.outline_points),
            }
        })
        .collect();
    (comps, total)
}

/// The pixels of `mask` that [`components`] describes, all of them: after the spec's
/// opening, in components of at least `min_region_px` (not only the largest `max_regions`).
/// What a DICOM SEG of the label holds.
pub fn kept(mask: &[bool], h: usize, w: usize, spec: &RegionSpec) -> Vec<bool> {
    let mut out = mask.to_vec();
    if spec.opening_px > 0 {
        open(&mut out, h, w, spec.opening_px as usize);
    }
    let (labels, stats) = label(&out, h, w);
    for (o, &id) in out.iter_mut().zip(&labels) {
        *o = id != 0 && stats[id as usize - 1].area >= spec.min_region_px as u64;
    }
    out
}

/// Binary opening with a `(2r+1)²` square: erosion (outside counts as foreground), then
/// dilation (outside counts as background). Both are separable: rows, then columns.
pub fn open(mask: &mut [bool], h: usize, w: usize, r: usize) {
    let mut tmp = vec![false; mask.len()];
    pass(mask, &mut tmp, h, w, r, true);
    pass(&tmp, mask, h, w, r, false);
}

/// Erosion (`all`, outside true) or dilation (`any`, outside false) of `src` into `dst`.
fn pass(src: &[bool], dst: &mut [bool], h: usize, w: usize, r: usize, erode: bool) {
    let mut rows = vec![false; src.len()];
    let window = |get: &dyn Fn(isize) -> Option<bool>, i: isize| {
        let mut acc = erode;
        for d in -(r as isize)..=(r as isize) {
            let v = get(i + d).unwrap_or(erode);
            acc = if erode { acc && v } else { acc || v };
        }
        acc
    };
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let get = |i: isize| (0..w as isize).contains(&i).then(|| row[i as usize]);
            rows[y * w + x] = window(&get, x as isize);
        }
    }
    for x in 0..w {
        for y in 0..h {
            let get = |i: isize| {
                (0..h as isize)
                    .contains(&i)
                    .then(|| rows[i as usize * w + x])
            };
            dst[y * w + x] = window(&get, y as isize);
        }
    }
}

struct Stats {
    area: u64,
    sum_r: u64,
    sum_c: u64,
    bbox: [u32; 4],
}

/// 8-connected labelling: 0 is background, components 1.. in raster order of their first
/// pixel.
fn label(mask: &[bool], h: usize, w: usize) -> (Vec<u32>, Vec<Stats>) {
    let mut labels = vec![0u32; h * w];
    let mut stats = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = stats.len() as u32 + 1;
        let (sr, sc) = ((start / w) as u32, (start % w) as u32);
        let mut s = Stats {
            area: 0,
            sum_r: 0,
            sum_c: 0,
            bbox: [sr, sc, sr + 1, sc + 1],
        };
        labels[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (r, c) = (p / w, p % w);
            s.area += 1;
            s.sum_r += r as u64;
            s.sum_c += c as u64;
            s.bbox[0] = s.bbox[0].min(r as u32);
            s.bbox[1] = s.bbox[1].min(c as u32);
            s.bbox[2] = s.bbox[2].max(r as u32 + 1);
            s.bbox[3] = s.bbox[3].max(c as u32 + 1);
            for dr in -1isize..=1 {
                for dc in -1isize..=1 {
                    let (nr, nc) = (r as isize + dr, c as isize + dc);
                    if nr < 0 || nc < 0 || nr >= h as isize || nc >= w as isize {
                        continue;
                    }
                    let q = nr as usize * w + nc as usize;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        stats.push(s);
    }
    (labels, stats)
}

/// The outer contour of component `id` (marching squares at 0.5 on the component alone,
/// padded by one pixel, foreground fully connected), canonical start and orientation,
/// closed. Vertices are computed on a doubled integer grid, so they are exact.
fn outline(labels: &[u32], w: usize, id: u32, bbox: [u32; 4]) -> Vec<[f64; 2]> {
    // Local grid: the bounding box and one pixel of background around it.
    let (r0, c0) = (bbox[0] as isize - 1, bbox[1] as isize - 1);
    let (gh, gw) = (
        (bbox[2] - bbox[0]) as usize + 2,
        (bbox[3] - bbox[1]) as usize + 2,
    );
    let at = |i: usize, j: usize| -> bool {
        let (r, c) = (r0 + i as isize, c0 + j as isize);
        let inside = (bbox[0] as isize..bbox[2] as isize).contains(&r)
            && (bbox[1] as isize..bbox[3] as isize).contains(&c);
        inside && labels[r as usize * w + c as usize] == id
    };
    // Directed segments on the doubled grid, foreground on the left (x = column, y = row).
    let mut next: HashMap<(i64, i64), (i64, i64)> = HashMap::new();
    for i in 0..gh - 1 {
        for j in 0..gw - 1 {
            let (tl, tr, br, bl) = (at(i, j), at(i, j + 1), at(i + 1, j + 1), at(i + 1, j));
            let (y, x) = (2 * i as i64, 2 * j as i64);
            let top = (y, x + 1);
            let right = (y + 1, x + 2);
            let bottom = (y + 2, x + 1);
            let left = (y + 1, x);
            let corner = [(y, x), (y, x + 2), (y + 2, x + 2), (y + 2, x)];
            let mut segment = |p: (i64, i64), q: (i64, i64), k: usize, fg: bool| {
                let k = corner[k];
                let cross = (q.1 - p.1) * (k.0 - p.0) - (q.0 - p.0) * (k.1 - p.1);
                let (p, q) = if (cross > 0) == fg { (p, q) } else { (q, p) };
                next.insert(p, q);
            };
            match (tl, tr, br, bl) {
                (false, false, false, false) | (true, true, true, true) => {}
                // Saddles: the foreground diagonal stays connected; cut off each background
                // corner on its own.
                (true, false, true, false) => {
                    segment(top, right, 1, false);
                    segment(bottom, left, 3, false);
                }
                (false, true, false, true) => {
                    segment(top, left, 0, false);
                    segment(right, bottom, 2, false);
                }
                _ => {
                    let mut ends = Vec::with_capacity(2);
                    if tl != tr {
                        ends.push(top);
                    }
                    if tr != br {
                        ends.push(right);
                    }
                    if br != bl {
                        ends.push(bottom);
                    }
                    if bl != tl {
                        ends.push(left);
                    }
                    segment(ends[0], ends[1], 0, tl);
                }
            }
        }
    }
    // Follow the segments into closed loops; keep the one enclosing the most area.
    let mut best: Vec<(i64, i64)> = Vec::new();
    let mut best_area = 0i64;
    let mut starts: Vec<(i64, i64)> = next.keys().copied().collect();
    starts.sort_unstable();
    for s in starts {
        if !next.contains_key(&s) {
            continue;
        }
        let mut ring = vec![s];
        let mut v = next.remove(&s).expect("checked");
        while v != s {
            ring.push(v);
            match next.remove(&v) {
                Some(n) => v = n,
                None => break, // cannot happen on a padded grid; keep what was traced
            }
        }
        let area = twice_area(&ring).abs();
        if area > best_area {
            (best, best_area) = (ring, area);
        }
    }
    canonical(&mut best);
    let mut out: Vec<[f64; 2]> = best
        .iter()
        .map(|&(y, x)| [y as f64 / 2.0 + r0 as f64, x as f64 / 2.0 + c0 as f64])
        .collect();
    if let Some(&first) = out.first() {
        out.push(first);
    }
    out
}

/// Twice the signed area (shoelace, x = column, y = row).
fn twice_area(ring: &[(i64, i64)]) -> i64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a.1 * b.0 - b.1 * a.0
        })
        .sum()
}

/// Starts the ring at its smallest (row, column) vertex and orients it so that its signed
/// area (x = column, y = row down) is positive: clockwise as seen on screen.
fn canonical(ring: &mut [(i64, i64)]) {
    let Some(k) = (0..ring.len()).min_by_key(|&i| ring[i]) else {
        return;
    };
    ring.rotate_left(k);
    if twice_area(ring) < 0 {
        ring[1..].reverse();
    }
}

/// Douglas–Peucker with the tolerance doubled until at most `max_points` vertices remain
/// (the closing vertex not counted). An outline that would fall below three distinct
/// vertices (a region no wider than twice the tolerance) stays unsimplified when it fits.
pub fn simplify_to(closed: &[[f64; 2]], tolerance: f64, max_points: usize) -> Vec<[f64; 2]> {
    let mut t = tolerance;
    loop {
        let s = approximate_polygon(closed, t);
        if s.len() < 4 && closed.len() <= max_points + 1 {
            return closed.to_vec();
        }
        if s.len() <= max_points + 1 || t > 1e6 {
            return s;
        }
        t = if t > 0.0 { t * 2.0 } else { 0.5 };
    }
}

/// scikit-image's `approximate_polygon`: Douglas–Peucker on a chain of `[row, col]`
/// points, keeping both ends. A point's distance to a segment is the perpendicular one
/// when it projects inside the segment, else the distance to the nearer end; the farthest
/// point (the first of equals) splits the segment when it is farther than `tolerance`.
/// The same operations in the same order as scikit-image, so ties break the same way.
pub fn approximate_polygon(coords: &[[f64; 2]], tolerance: f64) -> Vec<[f64; 2]> {
    let n = coords.len();
    if tolerance <= 0.0 || n < 3 {
        return coords.to_vec();
    }
    let mut chain = vec![false; n];
    chain[0] = true;
    chain[n - 1] = true;
    let mut stack = vec![(0usize, n - 1)];
    while let Some((start, end)) = stack.pop() {
        let [r0, c0] = coords[start];
        let [r1, c1] = coords[end];
        let (dr, dc) = (r1 - r0, c1 - c0);
        let angle = -dr.atan2(dc);
        let (sin, cos) = (angle.sin(), angle.cos());
        let segment_dist = c0 * sin + r0 * cos;
        let mut far = (0usize, f64::NEG_INFINITY);
        for (k, p) in coords.iter().enumerate().take(end).skip(start + 1) {
            let (dr0, dc0) = (p[0] - r0, p[1] - c0);
            let (dr1, dc1) = (p[0] - r1, p[1] - c1);
            let along0 = dr0 * dr + dc0 * dc;
            let along1 = -dr1 * dr - dc1 * dc;
            let d = if along0 > 0.0 && along1 > 0.0 {
                (p[0] * cos + p[1] * sin - segment_dist).abs()
            } else {
                (dc0 * dc0 + dr0 * dr0)
                    .sqrt()
                    .min((dc1 * dc1 + dr1 * dr1).sqrt())
            };
            if d > far.1 {
                far = (k, d);
            }
        }
        if far.1 > tolerance {
            stack.push((far.0, end));
            stack.push((start, far.0));
            chain[far.0] = true;
        }
    }
    coords
        .iter()
        .zip(chain)
        .filter(|(_, keep)| *keep)
        .map(|(p, _)| *p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let h = rows.len();
        let w = rows[0].len();
        let m = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| b == b'#'))
            .collect();
        (m, h, w)
    }

    fn all(spec: RegionSpec) -> RegionSpec {
        RegionSpec {
            min_region_px: 1,
            max_regions: 100,
            outline_tolerance_px: 0.0,
            outline_points: 1000,
            ..spec
        }
    }

    #[test]
    fn kept_pixels_are_every_component_large_enough_not_only_the_listed_ones() {
        let (m, h, w) = mask(&["##..#", "##...", ".....", "##.##", "##.##"]);
        let spec = RegionSpec {
            min_region_px: 2,
            max_regions: 1,
            ..RegionSpec::default()
        };
        let (listed, n) = components(&m, h, w, &spec);
        assert_eq!((listed.len(), n), (1, 3));
        let (want, _, _) = mask(&["##...", "##...", ".....", "##.##", "##.##"]);
        assert_eq!(kept(&m, h, w, &spec), want);
        // The opening removes what components() would not see either.
        let spec = RegionSpec {
            opening_px: 1,
            min_region_px: 1,
            ..RegionSpec::default()
        };
        let (c, _) = components(&m, h, w, &spec);
        let kept = kept(&m, h, w, &spec);
        let area: u32 = c.iter().map(|c| c.area_px).sum();
        assert_eq!(kept.iter().filter(|&&p| p).count() as u32, area);
    }

    #[test]
    fn one_pixel_is_a_diamond_through_its_edge_midpoints() {
        let (m, h, w) = mask(&["...", ".#.", "..."]);
        let (c, n) = components(&m, h, w, &all(RegionSpec::default()));
        assert_eq!(n, 1);
        assert_eq!(c[0].area_px, 1);
        assert_eq!(c[0].centroid, [1.0, 1.0]);
        assert_eq!(c[0].bbox, [1, 1, 2, 2]);
        assert_eq!(
            c[0].outline,
            vec![[0.5, 1.0], [1.0, 1.5], [1.5, 1.0], [1.0, 0.5], [0.5, 1.0]]
        );
    }

    #[test]
    fn diagonal_neighbours_are_one_component_and_holes_are_not_the_outline() {
        let (m, h, w) = mask(&["#....", ".#...", "....."]);
        let (c, n) = components(&m, h, w, &all(RegionSpec::default()));
        assert_eq!((n, c[0].area_px), (1, 2));
        let (m, h, w) = mask(&["#####", "#...#", "#####"]);
        let (c, _) = components(&m, h, w, &all(RegionSpec::default()));
        // The outer ring's outline, not the hole's: it reaches the outside edges.
        let rows: Vec<f64> = c[0].outline.iter().map(|p| p[0]).collect();
        assert!(
            rows.contains(&-0.5) && rows.contains(&2.5),
            "{:?}",
            c[0].outline
        );
    }

    #[test]
    fn small_components_are_dropped_and_the_largest_come_first() {
        let (m, h, w) = mask(&["#..##", "...##", "##...", "##..#"]);
        let spec = RegionSpec {
            min_region_px: 2,
            ..all(RegionSpec::default())
        };
        let (c, n) = components(&m, h, w, &spec);
        assert_eq!(n, 2);
        assert_eq!(
            c.iter().map(|c| c.bbox).collect::<Vec<_>>(),
            [[0, 3, 2, 5], [2, 0, 4, 2]]
        );
        let (c, n) = components(
            &m,
            h,
            w,
            &RegionSpec {
                max_regions: 1,
                ..spec
            },
        );
        assert_eq!((c.len(), n), (1, 2));
    }

    #[test]
    fn opening_removes_specks_but_not_a_block_at_the_border() {
        let (mut m, h, w) = mask(&["###..", "###..", "###.#", "....."]);
        open(&mut m, h, w, 1);
        let (want, _, _) = mask(&["###..", "###..", "###..", "....."]);
        assert_eq!(m, want);
    }

    #[test]
    fn outlines_are_capped_by_raising_the_tolerance() {
        let (m, h, w) = mask(&[
            "..........",
            ".########.",
            ".#......#.",
            ".#.####.#.",
            ".#.#..#.#.",
            ".#.#.##.#.",
            ".#.#....#.",
            ".#.######.",
            "..........",
        ]);
        let spec = RegionSpec {
            outline_points: 6,
            outline_tolerance_px: 0.1,
            ..RegionSpec::default()
        };
        let (c, _) = components(&m, h, w, &spec);
        let o = &c[0].outline;
        assert!(o.len() <= 7 && o.first() == o.last(), "{o:?}");
    }

    #[test]
    fn douglas_peucker_keeps_the_corner_of_an_l() {
        let l = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [2.0, 2.0]];
        assert_eq!(
            approximate_polygon(&l, 0.1),
            vec![[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]]
        );
        assert_eq!(approximate_polygon(&l, 0.0), l.to_vec());
    }
}
