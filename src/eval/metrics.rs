//! The field's evaluation metrics as pure functions over plain slices, each defined the way
//! scikit-learn or pycocotools computes it (tests/eval_metrics.rs checks every one against
//! values those libraries produced, edge cases included).
//!
//! `None` means undefined: a zero denominator (sensitivity without positives, Dice of two
//! empty masks), which scikit-learn reports as NaN with `zero_division=np.nan`. A report shows
//! it as "n/a" rather than a number that was never measured.

/// A 2 × 2 confusion table of one label against the rest at one threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Binary {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Binary {
    /// Counts at `threshold`: a case is called positive when its score reaches the threshold
    /// (`>=`, the daemon's own rule for a finding).
    pub fn at(truth: &[bool], scores: &[f64], threshold: f64) -> Self {
        let mut b = Binary::default();
        for (&t, &s) in truth.iter().zip(scores) {
            match (t, s >= threshold) {
                (true, true) => b.tp += 1,
                (false, true) => b.fp += 1,
                (false, false) => b.tn += 1,
                (true, false) => b.fn_ += 1,
            }
        }
        b
    }

    pub fn total(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }
    /// Recall of the positives (true positive rate).
    pub fn sensitivity(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// Recall of the negatives (true negative rate).
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fp)
    }
    /// Positive predictive value (precision).
    pub fn ppv(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Negative predictive value.
    pub fn npv(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fn_)
    }
    /// F1 = 2tp / (2tp + fp + fn), scikit-learn's form: 0 when there are positives and none
    /// is found, undefined only when there is nothing positive on either side.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.total())
    }
    /// 95 % Wilson score interval of the sensitivity.
    pub fn sensitivity_ci(&self) -> Option<[f64; 2]> {
        wilson(self.tp, self.tp + self.fn_)
    }
    /// 95 % Wilson score interval of the specificity.
    pub fn specificity_ci(&self) -> Option<[f64; 2]> {
        wilson(self.tn, self.tn + self.fp)
    }
}

/// The 95 % Wilson score interval of a proportion `hits / n` (statsmodels'
/// `proportion_confint(method="wilson")`): unlike the normal approximation it stays inside
/// [0, 1] and says something at 16 of 16, the size of a small validation set.
pub fn wilson(hits: usize, n: usize) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    // The 97.5th percentile of the standard normal, as scipy gives it.
    const Z: f64 = 1.959_963_984_540_054;
    let (p, n) = (hits as f64 / n as f64, n as f64);
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some([centre - half, centre + half])
}

/// A receiver operating characteristic curve as scikit-learn's `roc_curve` with
/// `drop_intermediate=False` builds it: one point per distinct score, highest first, after a
/// first point (0, 0) at threshold +∞.
#[derive(Debug, Clone, PartialEq)]
pub struct Roc {
    /// (false positive rate, true positive rate), from (0, 0) to (1, 1).
    pub points: Vec<(f64, f64)>,
    /// The threshold of each point (`score >= threshold` called positive); +∞ first.
    pub thresholds: Vec<f64>,
}

impl Roc {
    /// `None` when `truth` holds only one class (the curve is undefined) or is empty.
    pub fn new(truth: &[bool], scores: &[f64]) -> Option<Roc> {
        let positives = truth.iter().filter(|&&t| t).count();
        let negatives = truth.len() - positives;
        if positives == 0 || negatives == 0 {
            return None;
        }
        let mut order: Vec<usize> = (0..truth.len().min(scores.len())).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut points = vec![(0.0, 0.0)];
        let mut thresholds = vec![f64::INFINITY];
        let (mut tp, mut fp) = (0usize, 0usize);
        for (k, &i) in order.iter().enumerate() {
            if truth[i] {
                tp += 1;
            } else {
                fp += 1;
            }
            // A point only after the last case of a run of equal scores: ties move together.
            let last_of_run = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
            if last_of_run {
                points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
                thresholds.push(scores[i]);
            }
        }
        Some(Roc { points, thresholds })
    }

    /// Area under the curve by the trapezoid rule (equal to the Mann–Whitney statistic, ties
    /// counted one half).
    pub fn auc(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum()
    }

    /// Youden's J = sensitivity + specificity − 1 at its best threshold: the first (highest)
    /// threshold among equal maxima, as `argmax` over scikit-learn's curve picks it. The
    /// threshold is `None` when the best point is the +∞ one (call nothing positive).
    pub fn youden(&self) -> (Option<f64>, f64) {
        let mut best = 0;
        for (i, p) in self.points.iter().enumerate() {
            if p.1 - p.0 > self.points[best].1 - self.points[best].0 {
                best = i;
            }
        }
        let t = self.thresholds[best];
        (
            t.is_finite().then_some(t),
            self.points[best].1 - self.points[best].0,
        )
    }
}

/// Index of the largest value, the first one on ties (numpy's `argmax`).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// A multi-class confusion matrix: `matrix[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    pub matrix: Vec<Vec<usize>>,
}

impl Confusion {
    pub fn new(classes: usize, truth: &[usize], predicted: &[usize]) -> Self {
        let mut matrix = vec![vec![0; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < classes && p < classes {
                matrix[t][p] += 1;
            }
        }
        Confusion { matrix }
    }

    fn total(&self) -> usize {
        self.matrix.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> Option<f64> {
        ratio(
            (0..self.matrix.len()).map(|k| self.matrix[k][k]).sum(),
            self.total(),
        )
    }

    /// The mean recall over the classes present in the truth (scikit-learn leaves absent
    /// classes out, with a warning).
    pub fn balanced_accuracy(&self) -> Option<f64> {
        let recalls: Vec<f64> = (0..self.matrix.len())
            .filter_map(|k| ratio(self.matrix[k][k], self.matrix[k].iter().sum()))
            .collect();
        (!recalls.is_empty()).then(|| recalls.iter().sum::<f64>() / recalls.len() as f64)
    }

    /// Class `k` against the rest.
    pub fn one_vs_rest(&self, k: usize) -> Binary {
        let n = self.matrix.len();
        let tp = self.matrix[k][k];
        let fn_ = self.matrix[k].iter().sum::<usize>() - tp;
        let fp = (0..n).map(|t| self.matrix[t][k]).sum::<usize>() - tp;
        Binary {
            tp,
            fp,
            fn_,
            tn: self.total() - tp - fp - fn_,
        }
    }

    /// The unweighted mean of the per-class F1 scores over the classes where F1 is defined
    /// (scikit-learn with `zero_division=np.nan` skips a class absent from both truth and
    /// predictions); undefined when none is.
    pub fn macro_f1(&self) -> Option<f64> {
        mean_defined((0..self.matrix.len()).map(|k| self.one_vs_rest(k).f1()))
    }
}

/// Pixel counts of one mask pair: what Dice and IoU are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Overlap {
    pub intersection: usize,
    pub truth: usize,
    pub predicted: usize,
}

impl Overlap {
    pub fn new(truth: &[bool], predicted: &[bool]) -> Self {
        let mut o = Overlap::default();
        for (&t, &p) in truth.iter().zip(predicted) {
            o.truth += t as usize;
            o.predicted += p as usize;
            o.intersection += (t && p) as usize;
        }
        o
    }

    /// 2|A∩B| / (|A| + |B|); undefined when both masks are empty (a correct negative, which
    /// the mean leaves out and the report counts separately), 0 when only one is.
    pub fn dice(&self) -> Option<f64> {
        ratio(2 * self.intersection, self.truth + self.predicted)
    }

    /// |A∩B| / |A∪B|, undefined when both are empty.
    pub fn iou(&self) -> Option<f64> {
        ratio(
            self.intersection,
            self.truth + self.predicted - self.intersection,
        )
    }

    pub fn both_empty(&self) -> bool {
        self.truth == 0 && self.predicted == 0
    }
}

/// The 95th-percentile symmetric Hausdorff distance between two masks of `rows` × `cols`, in
/// pixels, as MONAI's `compute_hausdorff_distance(percentile=95)` defines it: each mask's edge
/// is the mask minus its erosion by the 4-neighbour cross (outside the image counts as
/// background); from every edge pixel of one mask the Euclidean distance to the nearest edge
/// pixel of the other; numpy's linear 95th percentile of each direction; the larger of the
/// two. Undefined when either mask is empty.
pub fn hd95(truth: &[bool], predicted: &[bool], rows: usize, cols: usize) -> Option<f64> {
    let edges = |m: &[bool]| -> Vec<(i64, i64)> {
        let at = |r: i64, c: i64| {
            r >= 0
                && c >= 0
                && (r as usize) < rows
                && (c as usize) < cols
                && m[r as usize * cols + c as usize]
        };
        let mut e = Vec::new();
        for r in 0..rows as i64 {
            for c in 0..cols as i64 {
                if at(r, c) && !(at(r - 1, c) && at(r + 1, c) && at(r, c - 1) && at(r, c + 1)) {
                    e.push((r, c));
                }
            }
        }
        e
    };
    let (et, ep) = (edges(truth), edges(predicted));
    if et.is_empty() || ep.is_empty() {
        return None;
    }
    let directed = |from: &[(i64, i64)], to: &[(i64, i64)]| {
        let mut d: Vec<f64> = from
            .iter()
            .map(|&(r, c)| {
                to.iter()
                    .map(|&(r2, c2)| ((r - r2).pow(2) + (c - c2).pow(2)) as f64)
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect();
        d.sort_by(f64::total_cmp);
        let pos = 0.95 * (d.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        d[lo] + (d[hi] - d[lo]) * (pos - lo as f64)
    };
    Some(directed(&ep, &et).max(directed(&et, &ep)))
}

/// Mean of the defined values; `None` when there are none.
pub fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values.into_iter().flatten() {
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// An axis-aligned box in image pixels, corners `[x1, y1, x2, y2]`, with its label index.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LabelledBox {
    pub image: usize,
    pub label: usize,
    pub bbox: [f64; 4],
}

/// A predicted box and its score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ScoredBox {
    pub b: LabelledBox,
    pub score: f64,
}

/// Intersection over union with continuous coordinates, as pycocotools' `bbIou`.
pub fn box_iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |x: &[f64; 4]| (x[2] - x[0]) * (x[3] - x[1]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// COCO average precision (pycocotools' `COCOeval` for boxes, area "all", at most
/// [`CocoAp::MAX_DETS`] detections per image and label).
#[derive(Debug, Clone, PartialEq)]
pub struct CocoAp {
    /// `per_label[k][t]`: AP of label `k` at IoU threshold [`CocoAp::iou_thresholds`]`[t]`;
    /// `None` for a label without ground truth anywhere.
    pub per_label: Vec<Option<Vec<f64>>>,
}

impl CocoAp {
    pub const MAX_DETS: usize = 100;

    /// 0.50, 0.55, … 0.95, computed as numpy's `linspace` does so that a box whose IoU lands
    /// exactly on a threshold is judged as pycocotools judges it.
    pub fn iou_thresholds() -> [f64; 10] {
        let step = (0.95 - 0.5) / 9.0;
        let mut t = [0.0; 10];
        for (i, v) in t.iter_mut().enumerate() {
            *v = i as f64 * step + 0.5;
        }
        t[9] = 0.95;
        t
    }

    /// `images`: how many images there are (box image indices run below it); `labels`: how
    /// many labels. Detections are taken best first, ties in the order given (pycocotools
    /// sorts with a stable mergesort).
    pub fn new(
        images: usize,
        labels: usize,
        truth: &[LabelledBox],
        predicted: &[ScoredBox],
    ) -> Self {
        let thresholds = Self::iou_thresholds();
        let per_label = (0..labels)
            .map(|k| {
                let gts: Vec<Vec<[f64; 4]>> = (0..images)
                    .map(|i| {
                        truth
                            .iter()
                            .filter(|g| g.image == i && g.label == k)
                            .map(|g| g.bbox)
                            .collect()
                    })
                    .collect();
                let positives: usize = gts.iter().map(Vec::len).sum();
                if positives == 0 {
                    return None;
                }
                // Per image: its detections of this label best first, capped.
                let dets: Vec<Vec<ScoredBox>> = (0..images)
                    .map(|i| {
                        let mut d: Vec<ScoredBox> = predicted
                            .iter()
                            .filter(|p| p.b.image == i && p.b.label == k)
                            .copied()
                            .collect();
                        d.sort_by(|a, b| b.score.total_cmp(&a.score));
                        d.truncate(Self::MAX_DETS);
                        d
                    })
                    .collect();
                Some(
                    thresholds
                        .iter()
                        .map(|&t| average_precision(&gts, &dets, positives, t))
                        .collect(),
                )
            })
            .collect();
        CocoAp { per_label }
    }

    /// AP of label `k` at IoU 0.5.
    pub fn ap50(&self, k: usize) -> Option<f64> {
        self.per_label[k].as_ref().map(|v| v[0])
    }

    /// AP of label `k` averaged over IoU 0.5:0.95.
    pub fn ap50_95(&self, k: usize) -> Option<f64> {
        self.per_label[k]
            .as_ref()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// mAP@0.5 over the labels that have ground truth.
    pub fn map50(&self) -> Option<f64> {
        mean_defined((0..self.per_label.len()).map(|k| self.ap50(k)))
    }

    /// mAP@0.5:0.95 over the labels that have ground truth.
    pub fn map50_95(&self) -> Option<f64> {
        mean_defined((0..self.per_label.len()).map(|k| self.ap50_95(k)))
    }
}

/// One label at one IoU threshold: greedy matching per image (each detection, best first,
/// takes the unmatched ground-truth box it overlaps most, at least `t`), then the
/// interpolated precision at 101 recall points.
fn average_precision(
    gts: &[Vec<[f64; 4]>],
    dets: &[Vec<ScoredBox>],
    positives: usize,
    t: f64,
) -> f64 {
    // (score, true positive?) over all images, images in order, each best first.
    let mut all: Vec<(f64, bool)> = Vec::new();
    for (gt, det) in gts.iter().zip(dets) {
        let mut taken = vec![false; gt.len()];
        for d in det {
            let mut threshold = t.min(1.0 - 1e-10);
            let mut matched = None;
            for (g, b) in gt.iter().enumerate() {
                if taken[g] {
                    continue;
                }
                let iou = box_iou(&d.b.bbox, b);
                if iou < threshold {
                    continue;
                }
                threshold = iou;
                matched = Some(g);
            }
            if let Some(g) = matched {
                taken[g] = true;
            }
            all.push((d.score, matched.is_some()));
        }
    }
    // Stable: equal scores keep image order, then their order within the image.
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut recall = Vec::with_capacity(all.len());
    let mut precision = Vec::with_capacity(all.len());
    for &(_, hit) in &all {
        if hit {
            tp += 1;
        } else {
            fp += 1;
        }
        recall.push(tp as f64 / positives as f64);
        precision.push(tp as f64 / (tp + fp) as f64);
    }
    // The precision envelope: at each recall, the best precision at that recall or beyond.
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    let mut sum = 0.0;
    for r in 0..=100 {
        let level = if r == 100 { 1.0 } else { r as f64 * 0.01 };
        // The first detection whose recall reaches the level (numpy searchsorted, left).
        let at = recall.partition_point(|&x| x < level);
        if at < precision.len() {
            sum += precision[at];
        }
    }
    sum / 101.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_ranking_has_auc_one_and_ties_count_half() {
        let truth = [false, false, true, true];
        let roc = Roc::new(&truth, &[0.1, 0.2, 0.8, 0.9]).unwrap();
        assert_eq!(roc.auc(), 1.0);
        // Every score equal: one diagonal step.
        let roc = Roc::new(&truth, &[0.5; 4]).unwrap();
        assert_eq!(roc.points, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(roc.auc(), 0.5);
        assert!(Roc::new(&[true, true], &[0.1, 0.2]).is_none());
    }

    #[test]
    fn dice_of_two_empty_masks_is_undefined_and_of_one_empty_mask_zero() {
        assert_eq!(Overlap::new(&[false; 4], &[false; 4]).dice(), None);
        assert_eq!(
            Overlap::new(&[false; 4], &[true, false, false, false]).dice(),
            Some(0.0)
        );
        let o = Overlap::new(&[true, true, false, false], &[true, false, true, false]);
        assert_eq!((o.dice(), o.iou()), (Some(0.5), Some(1.0 / 3.0)));
    }

    #[test]
    fn one_box_found_exactly_gives_ap_one() {
        let g = LabelledBox {
            image: 0,
            label: 0,
            bbox: [10.0, 10.0, 20.0, 20.0],
        };
        let p = ScoredBox { b: g, score: 0.9 };
        let ap = CocoAp::new(1, 2, &[g], &[p]);
        assert_eq!(ap.map50(), Some(1.0));
        assert_eq!(ap.ap50(1), None);
        let none = CocoAp::new(1, 1, &[g], &[]);
        assert_eq!(none.map50_95(), Some(0.0));
    }
}
