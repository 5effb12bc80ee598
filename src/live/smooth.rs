//! Findings at a human rate from a stream of per-frame scores.
//!
//! A label is *present* when it reached its threshold in a majority of the last
//! `window_frames` processed frames: one noisy frame neither starts nor ends anything. A
//! finding is published when the set of present labels changes (an onset at once, with the
//! span still open; an end with the whole span the label was present for) and, while nothing
//! changes, every `publish_interval` with what the frames since the last one showed.
//!
//! Boundaries are placed at the frames where the raw scores changed, not where the vote
//! caught up: frames wait in a window of `window_frames` before they are counted, so that a
//! change can split them exactly. Nothing here allocates per frame.

use std::time::{Duration, Instant, SystemTime};

use heapless::Deque;

use crate::finding::VideoEvent;
use crate::model::manifest::MAX_LABELS;
use crate::task::LabelValues;

/// Longest smoothing window.
pub const MAX_WINDOW: usize = 64;

/// One processed frame's scores for one model.
#[derive(Debug, Clone)]
pub struct FrameScore {
    pub seq: u64,
    pub captured: Instant,
    pub wall: SystemTime,
    pub done: Instant,
    /// Per label: the score compared with the threshold (probability or region fraction).
    pub scores: LabelValues,
    /// Per label: the peak probability.
    pub peaks: LabelValues,
}

/// What the frames of one span showed.
#[derive(Debug, Clone)]
pub struct Summary {
    pub event: VideoEvent,
    /// Bit `i`: label `i` present over the span.
    pub present: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_wall: SystemTime,
    pub last_wall: SystemTime,
    pub frames: u64,
    pub mean: LabelValues,
    pub peak: LabelValues,
    pub peak_probability: LabelValues,
    pub latency_mean: Duration,
    pub latency_max: Duration,
}

#[derive(Debug, Clone)]
struct Acc {
    first: Option<(u64, SystemTime)>,
    last: Option<(u64, SystemTime)>,
    frames: u64,
    sum: [f64; MAX_LABELS],
    peak: [f32; MAX_LABELS],
    peak_probability: [f32; MAX_LABELS],
    latency_sum: Duration,
    latency_max: Duration,
}

impl Acc {
    fn new() -> Self {
        Acc {
            first: None,
            last: None,
            frames: 0,
            sum: [0.0; MAX_LABELS],
            peak: [0.0; MAX_LABELS],
            peak_probability: [0.0; MAX_LABELS],
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
        }
    }

    fn add(&mut self, f: &FrameScore) {
        if self.first.is_none_or(|(s, _)| f.seq < s) {
            self.first = Some((f.seq, f.wall));
        }
        if self.last.is_none_or(|(s, _)| f.seq > s) {
            self.last = Some((f.seq, f.wall));
        }
        self.frames += 1;
        for (i, (&s, &p)) in f.scores.iter().zip(&f.peaks).enumerate() {
            self.sum[i] += s as f64;
            self.peak[i] = self.peak[i].max(s);
            self.peak_probability[i] = self.peak_probability[i].max(p);
        }
        let latency = f.done.saturating_duration_since(f.captured);
        self.latency_sum += latency;
        self.latency_max = self.latency_max.max(latency);
    }

    fn summary(&self, event: VideoEvent, present: u32, labels: usize) -> Option<Summary> {
        let ((first_seq, first_wall), (last_seq, last_wall)) = (self.first?, self.last?);
        let n = self.frames.max(1);
        let collect = |v: &[f32]| v[..labels].iter().copied().collect::<LabelValues>();
        let mean: LabelValues = self.sum[..labels]
            .iter()
            .map(|s| (s / n as f64) as f32)
            .collect();
        Some(Summary {
            event,
            present,
            first_seq,
            last_seq,
            first_wall,
            last_wall,
            frames: self.frames,
            mean,
            peak: collect(&self.peak),
            peak_probability: collect(&self.peak_probability),
            latency_mean: self.latency_sum / n as u32,
            latency_max: self.latency_max,
        })
    }
}

/// Smooths one model's per-frame scores into summaries.
pub struct Smoother {
    thresholds: LabelValues,
    /// Segmentation: a zero fraction is never "present", even with a zero threshold.
    positive_only: bool,
    window: usize,
    interval: Duration,
    /// Raw present-masks of the last `window` frames, for the vote.
    votes: Deque<(u64, u32), MAX_WINDOW>,
    /// Frames not yet counted into a span (at most `window`).
    pending: Deque<FrameScore, MAX_WINDOW>,
    state: u32,
    /// Since the present set last changed (what an end reports).
    since_change: Acc,
    /// Since the last publication (what an interval reports).
    since_publish: Acc,
    last_publish: Instant,
}

impl Smoother {
    /// `thresholds`: per label, the score that counts as present. `window` is clamped to
    /// 1..=[`MAX_WINDOW`].
    pub fn new(
        thresholds: &[f32],
        positive_only: bool,
        window: usize,
        interval: Duration,
        now: Instant,
    ) -> Self {
        Smoother {
            thresholds: thresholds.iter().copied().take(MAX_LABELS).collect(),
            positive_only,
            window: window.clamp(1, MAX_WINDOW),
            interval,
            votes: Deque::new(),
            pending: Deque::new(),
            state: 0,
            since_change: Acc::new(),
            since_publish: Acc::new(),
            last_publish: now,
        }
    }

    fn raw_mask(&self, f: &FrameScore) -> u32 {
        let mut mask = 0;
        for (i, (&s, &t)) in f.scores.iter().zip(&self.thresholds).enumerate() {
            if s >= t && !(self.positive_only && s <= 0.0) {
                mask |= 1 << i;
            }
        }
        mask
    }

    fn count(&mut self, f: FrameScore) {
        self.since_change.add(&f);
        self.since_publish.add(&f);
    }

    /// Counts pending frames with `seq < before` into the current span.
    fn flush_before(&mut self, before: u64) {
        while self.pending.front().is_some_and(|f| f.seq < before) {
            let f = self.pending.pop_front().expect("checked");
            self.count(f);
        }
    }

    /// Takes one processed frame (in capture order, or nearly); returns what to publish.
    pub fn push(&mut self, frame: FrameScore, now: Instant) -> heapless::Vec<Summary, 3> {
        let mut out = heapless::Vec::new();
        let labels = self.thresholds.len();
        let raw = self.raw_mask(&frame);
        if self.votes.len() == self.window {
            self.votes.pop_front();
        }
        let _ = self.votes.push_back((frame.seq, raw));
        if self.pending.len() == self.window {
            let oldest = self.pending.pop_front().expect("full");
            self.count(oldest);
        }
        let _ = self.pending.push_back(frame);

        let mut voted = 0u32;
        for bit in 0..labels {
            let yes = self
                .votes
                .iter()
                .filter(|(_, m)| m & (1 << bit) != 0)
                .count();
            if yes * 2 > self.window {
                voted |= 1 << bit;
            }
        }
        let (gone, came) = (self.state & !voted, voted & !self.state);
        if gone != 0 {
            // The span ends after the last frame that still showed a label that went.
            let last = self
                .votes
                .iter()
                .filter(|(_, m)| m & gone != 0)
                .map(|(s, _)| *s)
                .max()
                .unwrap_or(0);
            self.flush_before(last + 1);
            if let Some(s) = self
                .since_change
                .summary(VideoEvent::End, self.state, labels)
            {
                let _ = out.push(s);
            }
            self.since_change = Acc::new();
            self.state &= !gone;
        }
        if came != 0 {
            // The span starts at the first frame of the window that showed a label that came.
            let first = self
                .votes
                .iter()
                .filter(|(_, m)| m & came != 0)
                .map(|(s, _)| *s)
                .min()
                .unwrap_or(0);
            self.flush_before(first);
            self.since_change = Acc::new();
            self.since_publish = Acc::new();
            self.state |= came;
            // Publish at once: count the window's frames from the onset on.
            while let Some(f) = self.pending.pop_front() {
                self.count(f);
            }
            if let Some(s) = self
                .since_change
                .summary(VideoEvent::Onset, self.state, labels)
            {
                let _ = out.push(s);
            }
            self.since_publish = Acc::new();
            self.last_publish = now;
        } else if gone != 0 {
            self.since_publish = Acc::new();
            self.last_publish = now;
        }
        if came == 0 && gone == 0 && now.duration_since(self.last_publish) >= self.interval {
            while let Some(f) = self.pending.pop_front() {
                self.count(f);
            }
            if let Some(s) = self
                .since_publish
                .summary(VideoEvent::Interval, self.state, labels)
            {
                let _ = out.push(s);
            }
            self.since_publish = Acc::new();
            self.last_publish = now;
        }
        out
    }

    /// At the end of a stream: an end for whatever is still present.
    pub fn finish(&mut self) -> Option<Summary> {
        while let Some(f) = self.pending.pop_front() {
            self.count(f);
        }
        let labels = self.thresholds.len();
        let s = (self.state != 0)
            .then(|| {
                self.since_change
                    .summary(VideoEvent::End, self.state, labels)
            })
            .flatten();
        self.state = 0;
        self.since_change = Acc::new();
        self.since_publish = Acc::new();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, score: f32, t0: Instant) -> FrameScore {
        let at = t0 + Duration::from_millis(seq * 33);
        FrameScore {
            seq,
            captured: at,
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(seq * 33),
            done: at + Duration::from_millis(10),
            scores: [score].into_iter().collect(),
            peaks: [score].into_iter().collect(),
        }
    }

    fn run(scores: impl Iterator<Item = (u64, f32)>, window: usize) -> Vec<Summary> {
        let t0 = Instant::now();
        let mut s = Smoother::new(&[0.5], true, window, Duration::from_secs(3600), t0);
        let mut out = Vec::new();
        for (seq, v) in scores {
            let f = frame(seq, v, t0);
            out.extend(s.push(f, t0 + Duration::from_millis(seq * 33)));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn an_event_starts_and_ends_on_its_frames_despite_noise() {
        // Present in 100..=160, with single-frame dropouts inside and single-frame blips
        // outside: the vote ignores both, the span is placed on the raw edges.
        let scores = (0..240u64).map(|i| {
            let inside = (100..=160).contains(&i);
            let noisy = i % 17 == 0;
            let v = if inside ^ noisy { 0.9 } else { 0.1 };
            (i, v)
        });
        let out = run(scores, 5);
        let events: Vec<_> = out
            .iter()
            .map(|s| (s.event, s.first_seq, s.last_seq))
            .collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, VideoEvent::Onset);
        assert_eq!(events[0].1, 100);
        assert_eq!(events[1].0, VideoEvent::End);
        assert_eq!((events[1].1, events[1].2), (100, 160));
        let end = &out[1];
        assert_eq!(end.frames, 61);
        assert!((end.peak[0] - 0.9).abs() < 1e-6);
        // 3 dropouts (102, 119, 136, 153 are multiples of 17: 4) inside.
        let want = (57.0 * 0.9 + 4.0 * 0.1) / 61.0;
        assert!(
            (end.mean[0] - want).abs() < 1e-5,
            "{} vs {want}",
            end.mean[0]
        );
        assert_eq!(end.latency_max, Duration::from_millis(10));
    }

    #[test]
    fn dropped_frames_leave_gaps_not_errors() {
        // Every third frame processed (a slow model): the span still lands on processed
        // frames next to the edges.
        let scores = (0..300u64)
            .filter(|i| i % 3 == 0)
            .map(|i| (i, if (100..=160).contains(&i) { 0.8 } else { 0.0 }));
        let out = run(scores, 3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].event, VideoEvent::End);
        assert_eq!((out[1].first_seq, out[1].last_seq), (102, 159));
        assert_eq!(out[1].frames, 20);
    }

    #[test]
    fn intervals_while_nothing_changes() {
        let t0 = Instant::now();
        let mut s = Smoother::new(&[0.5], true, 5, Duration::from_secs(1), t0);
        let mut out = Vec::new();
        for seq in 0..100u64 {
            let now = t0 + Duration::from_millis(seq * 33);
            out.extend(s.push(frame(seq, 0.0, t0), now));
        }
        // 3.3 s of absent frames: an interval summary every second, covering consecutive
        // frames without overlap.
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(
            out.iter()
                .all(|s| s.event == VideoEvent::Interval && s.present == 0)
        );
        for w in out.windows(2) {
            assert_eq!(w[1].first_seq, w[0].last_seq + 1);
        }
    }
}
