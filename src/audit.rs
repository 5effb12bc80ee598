//! The audit trail: which model produced which result from which input, on which day, and
//! whether the result reached the broker — for the quality officer, not for the clinician.
//!
//! An append-only local log under `<state>/audit/`: one line per event, `CRC32 JSON`, in
//! files of at most [`AuditConfig::file_bytes`]; a new file is started when one is full, and
//! whole files are removed when older than `keep_days` or when the folder is over its disk
//! budget (oldest first; the removal is logged with the span it held). Three events:
//! - `finding`: an input processed into a finding (time, source kind, keyed UID hash, model
//!   id + version + sha256, result summary, timings, finding id and outbox sequence);
//! - `failed`: an input set aside (source kind, the reason);
//! - `delivered`: the broker acknowledged the finding with that outbox sequence.
//!
//! A `finding` line is synced right after the outbox record it follows, before the image
//! leaves the inbox; `failed` and `delivered` lines are written at once and synced with the
//! next finding (a power cut may lose the last few: the finding then reads "queued", never the
//! reverse). After a SIGKILL or power cut the torn tail of the newest file (a line without
//! its newline or with a wrong checksum) is cut on [`AuditTrail::open`], as the outbox does.
//!
//! Never in it: patient names, IDs, birth dates, UIDs (only their keyed hash, as in
//! findings), file names (an inbox file may be named after the patient).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::finding::{Finding, now_rfc3339, round3};
use crate::source::SourceKind;

/// Where and how much.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Files whose newest line is older than this are removed.
    pub keep_days: u32,
    /// The whole folder's budget.
    pub max_bytes: u64,
}

impl AuditConfig {
    /// One file: a sixteenth of the budget, between 64 KiB and 16 MiB, so that removing the
    /// oldest file frees a small part of the trail.
    pub fn file_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(64 << 10, 16 << 20)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "audit trail: bad --since {0:?} (RFC 3339 time, a date YYYY-MM-DD, or an age such as 7d or 12h)"
    )]
    Since(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Finding,
    Failed,
    Delivered,
}

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub event: Event,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Keyed hash of the SOP Instance UID, as in the finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// `finding`: the labels over threshold with their scores (or the top score when none
    /// is); `failed`: the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// decode, prepare, infer, total (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings_ms: Option<[f64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding_id: Option<String>,
    /// The finding's place in the outbox; a `delivered` event names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_seq: Option<u64>,
}

impl Record {
    fn new(event: Event) -> Record {
        Record {
            time: now_rfc3339(),
            event,
            source: None,
            uid_hash: None,
            model_id: None,
            model_version: None,
            model_sha256: None,
            result: None,
            timings_ms: None,
            finding_id: None,
            outbox_seq: None,
        }
    }

    /// The `finding` event for `f`, recorded in the outbox under `seq`.
    pub fn of_finding(f: &Finding, seq: u64) -> Record {
        let t = &f.timings_ms;
        Record {
            source: Some(f.source.name().to_owned()),
            uid_hash: f.sop_instance_uid_hash.clone(),
            model_id: Some(f.model.id.clone()),
            model_version: Some(f.model.version.clone()),
            model_sha256: Some(f.model.sha256.clone()),
            result: Some(summary(f)),
            timings_ms: Some([t.decode, t.prepare, t.infer, t.total].map(round3)),
            finding_id: Some(f.id.clone()),
            outbox_seq: Some(seq),
            ..Record::new(Event::Finding)
        }
    }
}

/// "pneumothorax 0.931" for each label over threshold; "none over threshold (top: normal
/// 0.120)" otherwise; detections and video events add their count and kind.
fn summary(f: &Finding) -> String {
    let score = |label: &str| {
        f.scores
            .iter()
            .find(|s| s.label == label)
            .map(|s| format!(" {:.3}", s.score))
            .unwrap_or_default()
    };
    let mut text = if f.over_threshold.is_empty() {
        match f.scores.iter().max_by(|a, b| a.score.total_cmp(&b.score)) {
            Some(top) => format!("none over threshold (top: {} {:.3})", top.label, top.score),
            None => "none over threshold".to_owned(),
        }
    } else {
        f.over_threshold
            .iter()
            .map(|l| format!("{l}{}", score(l)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(d) = &f.detections {
        text.push_str(&format!("; {} boxes", d.len()));
    }
    if let Some(v) = &f.video {
        text.push_str(&format!(
            "; video {}",
            serde_json::to_value(v.event)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ));
    }
    text
}

/// What opening the trail found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub files: usize,
    /// Bytes cut from the newest file's torn tail.
    pub cut_bytes: u64,
    /// Files removed for age or the budget.
    pub removed: usize,
}

/// The open trail; cheap to share behind an `Arc`, usable from any thread.
pub struct AuditTrail {
    config: AuditConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    path: PathBuf,
    bytes: u64,
    unsynced: bool,
    /// A write failed: said once, then quiet until one succeeds.
    failing: bool,
}

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".log";

impl AuditTrail {
    /// Opens (or makes) the trail: cuts a torn tail, removes what is too old or over budget,
    /// and appends to the newest file.
    pub fn open(config: AuditConfig) -> Result<(AuditTrail, Recovered), AuditError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut recovered = Recovered::default();
        let files = list(&config.dir)?;
        let path = match files.last() {
            Some(newest) => {
                recovered.cut_bytes = cut_torn_tail(newest)?;
                if recovered.cut_bytes > 0 {
                    warn!(
                        file = %newest.display(),
                        bytes = recovered.cut_bytes,
                        "audit trail: a torn last line (an interrupted write) was cut"
                    );
                }
                newest.clone()
            }
            None => new_file_path(&config.dir, &files),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let bytes = file.metadata().map_err(io_err(&path))?.len();
        let trail = AuditTrail {
            config,
            inner: Mutex::new(Inner {
                file,
                path,
                bytes,
                unsynced: false,
                failing: false,
            }),
        };
        {
            let inner = trail.inner.lock().unwrap_or_else(|e| e.into_inner());
            recovered.removed = trail.prune(&inner.path)?;
        }
        recovered.files = list(&trail.config.dir)?.len();
        Ok((trail, recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// A finding recorded in the outbox under `seq`: written now, durable after [`sync`].
    /// The publisher writes it before the finding can be sent, so that its `delivered` line
    /// always follows it, and syncs it outside its lock.
    ///
    /// [`sync`]: AuditTrail::sync
    pub fn finding(&self, f: &Finding, seq: u64) {
        self.append(&Record::of_finding(f, seq), false);
    }

    /// Makes every line written so far durable.
    pub fn sync(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.unsynced {
            match inner.file.sync_data() {
                Ok(()) => inner.unsynced = false,
                Err(e) => {
                    if !inner.failing {
                        inner.failing = true;
                        error!("audit trail: cannot sync ({e}); findings go on");
                    }
                }
            }
        }
    }

    /// An input set aside with `reason`.
    pub fn failed(&self, source: SourceKind, reason: &str) {
        let record = Record {
            source: Some(source.name().to_owned()),
            result: Some(reason.to_owned()),
            ..Record::new(Event::Failed)
        };
        self.append(&record, false);
    }

    /// The broker acknowledged the finding recorded under `seq`.
    pub fn delivered(&self, seq: u64) {
        let record = Record {
            outbox_seq: Some(seq),
            ..Record::new(Event::Delivered)
        };
        self.append(&record, false);
    }

    /// Writes one line. The trail serves the quality officer: a full disk or a failing card
    /// must not stop findings, so an error is logged (once until writes work again) and the
    /// daemon goes on.
    fn append(&self, record: &Record, sync: bool) {
        let line = encode(record);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match self.write_locked(&mut inner, &line, sync) {
            Ok(()) => {
                if inner.failing {
                    inner.failing = false;
                    info!("audit trail: writing again");
                }
            }
            Err(e) => {
                if !inner.failing {
                    inner.failing = true;
                    error!(
                        "audit trail: cannot write ({e}); findings go on, their audit lines are lost until it can"
                    );
                }
            }
        }
    }

    fn write_locked(&self, inner: &mut Inner, line: &[u8], sync: bool) -> Result<(), AuditError> {
        if inner.bytes > 0 && inner.bytes + line.len() as u64 > self.config.file_bytes() {
            self.rotate(inner)?;
        }
        inner.file.write_all(line).map_err(io_err(&inner.path))?;
        inner.bytes += line.len() as u64;
        inner.unsynced = true;
        if sync {
            inner.file.sync_data().map_err(io_err(&inner.path))?;
            inner.unsynced = false;
        }
        Ok(())
    }

    /// Closes the full file (synced) and starts the next; then removes what is too old or
    /// over budget.
    fn rotate(&self, inner: &mut Inner) -> Result<(), AuditError> {
        if inner.unsynced {
            inner.file.sync_data().map_err(io_err(&inner.path))?;
        }
        let files = list(&self.config.dir)?;
        let path = new_file_path(&self.config.dir, &files);
        inner.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        inner.path = path;
        inner.bytes = 0;
        inner.unsynced = false;
        sync_dir(&self.config.dir);
        self.prune(&inner.path.clone())?;
        Ok(())
    }

    /// Removes files (never `current`) older than `keep_days`, then the oldest while the
    /// folder is over budget. Returns how many went.
    fn prune(&self, current: &Path) -> Result<usize, AuditError> {
        let files = list(&self.config.dir)?;
        let keep = Duration::from_secs(u64::from(self.config.keep_days) * 86_400);
        let now = SystemTime::now();
        let mut sizes: Vec<(PathBuf, u64, SystemTime)> = Vec::new();
        for path in files {
            let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
            let modified = meta.modified().unwrap_or(now);
            sizes.push((path, meta.len(), modified));
        }
        let mut total: u64 = sizes.iter().map(|(_, len, _)| len).sum();
        let mut removed = 0;
        for (path, len, modified) in &sizes {
            if path == current {
                break; // the newest: everything before it is older
            }
            let too_old = now.duration_since(*modified).unwrap_or_default() > keep;
            let over = total > self.config.max_bytes;
            if !(too_old || over) {
                continue;
            }
            let (first, last) = span(path);
            std::fs::remove_file(path).map_err(io_err(path))?;
            total -= len;
            removed += 1;
            let why = if too_old {
                format!("older than audit.keep_days ({})", self.config.keep_days)
            } else {
                format!(
                    "the trail is over audit.max_mib ({} MiB)",
                    self.config.max_bytes >> 20
                )
            };
            info!(file = %path.display(), from = first, to = last, "audit trail: a file removed: {why}");
        }
        if removed > 0 {
            sync_dir(&self.config.dir);
        }
        Ok(removed)
    }
}

/// `crc32 json\n`: the checksum (8 hex digits) covers the JSON.
fn encode(record: &Record) -> Vec<u8> {
    let json = serde_json::to_string(record).expect("a record always serialises");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes())).into_bytes()
}

/// The record on a line, if the line is whole and its checksum right.
fn decode(line: &str) -> Option<Record> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    if crc32fast::hash(json.as_bytes()) != crc {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// The trail's files, oldest first (their names sort by when they were started).
fn list(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `audit-<number>.log`, one more than the newest: numbered, not dated, so that a clock set
/// back cannot make a new file sort before an old one.
fn new_file_path(dir: &Path, files: &[PathBuf]) -> PathBuf {
    let next = files
        .last()
        .and_then(|p| {
            p.file_name()?
                .to_str()?
                .strip_prefix(PREFIX)?
                .strip_suffix(SUFFIX)?
                .parse::<u64>()
                .ok()
        })
        .map_or(1, |n| n + 1);
    dir.join(format!("{PREFIX}{next:010}{SUFFIX}"))
}

/// Cuts the file after its last whole, valid line; the bytes cut.
fn cut_torn_tail(path: &Path) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let whole = std::str::from_utf8(&line[..n - 1])
            .ok()
            .and_then(decode)
            .is_some();
        if !whole {
            break;
        }
        good += n as u64;
    }
    if good < len {
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        file.set_len(good).map_err(io_err(path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(len - good)
}

/// The times of a file's first and last records (for the removal's log line).
fn span(path: &Path) -> (String, String) {
    let records = read_file(path).unwrap_or_default();
    let time = |r: Option<&Record>| r.map(|r| r.time.clone()).unwrap_or_default();
    (time(records.first()), time(records.last()))
}

fn read_file(path: &Path) -> Result<Vec<Record>, AuditError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err(path))?;
        match decode(&line) {
            Some(r) => records.push(r),
            // A torn tail not yet cut (the daemon is down): what follows is not trusted.
            None => break,
        }
    }
    Ok(records)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Parses `--since`: an RFC 3339 time, a date (`2026-12-01`, midnight UTC) or an age
/// (`30m`, `12h`, `7d`) before `now`.
pub fn parse_since(
    text: &str,
    now: time::OffsetDateTime,
) -> Result<time::OffsetDateTime, AuditError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || AuditError::Since(text.to_owned());
    let t = text.trim();
    if let Ok(at) = time::OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(at);
    }
    if let Ok(day) = time::Date::parse(t, time::macros::format_description!("[year]-[month]-[day]"))
    {
        return Ok(day.midnight().assume_utc());
    }
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let age = match unit {
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(bad()),
    };
    Ok(now - age)
}

/// One processed input as `bedside audit` prints it: its event with the delivery that
/// followed, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub record: Record,
    /// For a finding: when the broker acknowledged it, if it has.
    pub delivered_at: Option<String>,
}

/// The `finding` and `failed` events at or after `since`, oldest first, each finding with
/// its delivery. A `delivered` event belongs to the latest finding before it with the same
/// outbox sequence (sequences start again at 1 once the outbox has been emptied).
pub fn read(dir: &Path, since: time::OffsetDateTime) -> Result<Vec<Row>, AuditError> {
    use time::format_description::well_known::Rfc3339;
    let mut rows: Vec<Row> = Vec::new();
    let mut by_seq: std::collections::HashMap<u64, usize> = Default::default();
    for path in list(dir)? {
        for record in read_file(&path)? {
            match record.event {
                Event::Delivered => {
                    if let Some(i) = record.outbox_seq.and_then(|s| by_seq.get(&s)) {
                        rows[*i].delivered_at = Some(record.time.clone());
                    }
                }
                Event::Finding | Event::Failed => {
                    if let Some(seq) = record.outbox_seq {
                        by_seq.insert(seq, rows.len());
                    }
                    rows.push(Row {
                        record,
                        delivered_at: None,
                    });
                }
            }
        }
    }
    rows.retain(|r| {
        time::OffsetDateTime::parse(&r.record.time, &Rfc3339).is_ok_and(|t| t >= since)
    });
    Ok(rows)
}

/// Writes rows as CSV with a header line.
pub fn write_csv(rows: &[Row], out: impl Write) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "time",
        "event",
        "source",
        "uid_hash",
        "model_id",
        "model_version",
        "model_sha256",
        "result",
        "decode_ms",
        "prepare_ms",
        "infer_ms",
        "total_ms",
        "delivery",
        "delivered_at",
        "finding_id",
    ])?;
    for row in rows {
        let r = &row.record;
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let ms = |i: usize| r.timings_ms.map(|t| t[i].to_string()).unwrap_or_default();
        let delivery = match (r.event, &row.delivered_at) {
            (Event::Finding, Some(_)) => "delivered",
            (Event::Finding, None) => "queued",
            _ => "",
        };
        w.write_record([
            r.time.clone(),
            match r.event {
                Event::Finding => "finding",
                Event::Failed => "failed",
                Event::Delivered => "delivered",
            }
            .to_owned(),
            o(&r.source),
            o(&r.uid_hash),
            o(&r.model_id),
            o(&r.model_version),
            o(&r.model_sha256),
            o(&r.result),
            ms(0),
            ms(1),
            ms(2),
            ms(3),
            delivery.to_owned(),
            o(&row.delivered_at),
            o(&r.finding_id),
        ])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64) -> AuditConfig {
        AuditConfig {
            dir: dir.to_owned(),
            keep_days: 30,
            max_bytes,
        }
    }

    fn failed_lines(trail: &AuditTrail, n: usize) {
        for i in 0..n {
            trail.failed(SourceKind::WatchFolder, &format!("reason {i}"));
        }
    }

    #[test]
    fn lines_survive_a_reopen_and_a_torn_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let (trail, rec) = AuditTrail::open(config(tmp.path(), 64 << 20)).unwrap();
        assert_eq!(rec.cut_bytes, 0);
        failed_lines(&trail, 3);
        trail.delivered(7);
        drop(trail);
        // A write cut short by a SIGKILL or a power cut.
        let file = list(tmp.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"1234abcd {\"time\":\"2026-").unwrap();
        drop(f);
        let (trail, rec) = AuditTrail::open(config(tmp.path(), 64 << 20)).unwrap();
        assert_eq!(rec.cut_bytes, 23);
        trail.failed(SourceKind::DicomScp, "after the cut");
        let records = read_file(&file).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[4].result.as_deref(), Some("after the cut"));
        // A line whose checksum does not match is no line: cut with everything after it.
        drop(trail);
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replacen("reason 1", "reason X", 1)).unwrap();
        let (_trail, rec) = AuditTrail::open(config(tmp.path(), 64 << 20)).unwrap();
        assert!(rec.cut_bytes > 0);
        assert_eq!(read_file(&file).unwrap().len(), 1);
    }

    #[test]
    fn files_rotate_and_the_oldest_go_when_over_budget() {
        let tmp = tempfile::tempdir().unwrap();
        // 1 MiB budget: 64 KiB files.
        let (trail, _) = AuditTrail::open(config(tmp.path(), 1 << 20)).unwrap();
        failed_lines(&trail, 20_000);
        let files = list(tmp.path()).unwrap();
        let total: u64 = files
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(files.len() > 10, "{} files", files.len());
        assert!(total <= (1 << 20) + (64 << 10), "{total} bytes");
        // The newest lines are all there; the first file left is not audit-1.
        let rows = read(tmp.path(), time::OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            rows.last().unwrap().record.result.as_deref(),
            Some("reason 19999")
        );
        assert!(!files[0].ends_with("audit-0000000001.log"));
    }

    #[test]
    fn files_older_than_keep_days_are_removed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (trail, _) = AuditTrail::open(config(tmp.path(), 1 << 20)).unwrap();
        failed_lines(&trail, 2000); // several 64 KiB files
        drop(trail);
        let files = list(tmp.path()).unwrap();
        assert!(files.len() >= 3);
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        for f in &files[..files.len() - 1] {
            File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let (_trail, rec) = AuditTrail::open(config(tmp.path(), 1 << 20)).unwrap();
        assert_eq!(rec.removed, files.len() - 1);
        assert_eq!(
            list(tmp.path()).unwrap(),
            vec![files.last().unwrap().clone()]
        );
    }

    #[test]
    fn deliveries_join_the_latest_finding_with_their_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let (trail, _) = AuditTrail::open(config(tmp.path(), 64 << 20)).unwrap();
        let line = |seq: u64, id: &str| Record {
            finding_id: Some(id.into()),
            outbox_seq: Some(seq),
            ..Record::new(Event::Finding)
        };
        trail.append(&line(1, "a"), true);
        trail.delivered(1);
        // The outbox emptied and started again at 1.
        trail.append(&line(1, "b"), true);
        trail.failed(SourceKind::WatchFolder, "not DICOM");
        let rows = read(tmp.path(), time::OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].delivered_at.is_some());
        assert!(rows[1].delivered_at.is_none());
        let mut csv = Vec::new();
        write_csv(&rows, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("time,event,source,uid_hash"));
        assert!(lines[1].contains(",delivered,") && lines[1].ends_with(",a"));
        assert!(lines[2].contains(",queued,") && lines[2].ends_with(",b"));
        assert!(lines[3].contains(",failed,watch-folder,") && lines[3].contains("not DICOM"));
        // --since in the future: nothing.
        let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert!(read(tmp.path(), later).unwrap().is_empty());
    }

    #[test]
    fn since_takes_times_dates_and_ages() {
        let now = time::macros::datetime!(2026-12-04 12:00 UTC);
        assert_eq!(
            parse_since("2026-12-01", now).unwrap(),
            time::macros::datetime!(2026-12-01 0:00 UTC)
        );
        assert_eq!(
            parse_since("2026-12-03T08:30:00Z", now).unwrap(),
            time::macros::datetime!(2026-12-03 8:30 UTC)
        );
        assert_eq!(
            parse_since("7d", now).unwrap(),
            time::macros::datetime!(2026-11-27 12:00 UTC)
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            time::macros::datetime!(2026-12-04 10:30 UTC)
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("7w", now).is_err());
    }
}
