//! The durable outbox: every finding is written here, and fsync'd, before it counts as made;
//! it leaves only after the broker has acknowledged it. A board that loses power, a broker
//! that is away for days, a daemon killed mid-write: nothing that was recorded is lost, and a
//! finding may be delivered more than once (its id is stable, so consumers drop duplicates).
//!
//! # On disk
//! A folder of segments, each named by the sequence number of its first record:
//!
//! ```text
//! 00000000000000000001.seg   magic "BSOUTBX1", then records:
//!                            [len u32][crc32 u32][seq u64][class u8][payload; len - 9 bytes]
//! 00000000000000000001.ack   marks, 16 bytes each: [seq u64][state u8][0 0 0][crc32 u32]
//! ```
//!
//! All integers are little endian; each CRC (IEEE, as zlib) covers the bytes after it in a
//! record, or the 12 bytes before it in a mark. Records are only ever appended; a segment is
//! deleted, with its marks, once every record in it is delivered. Marks are synced lazily
//! ([`Outbox::sync_marks`]): losing one to a crash re-sends a delivered finding, never loses
//! one.
//!
//! # Recovery
//! [`Outbox::open`] reads every segment: a record cut short or failing its CRC ends the
//! segment — in the last segment that is the torn tail of a write that never completed
//! (nothing acknowledged it), so it is cut off with a warning; everything before it is kept
//! and replayed. New records always go to a fresh segment after a restart.
//!
//! # When it is full
//! The outbox holds at most `max_records` undelivered records and `max_bytes` on disk. When
//! a new record would pass either, [`Outbox::append`] refuses it with [`OutboxError::Full`]
//! and keeps everything it already has: a recorded finding is never dropped to make room.
//! The caller decides what refusing means for its source — the watch folder leaves the file
//! in the inbox to be processed when the broker has drained the outbox.
//!
//! Why a log of our own rather than an embedded database: see `docs/outbox.md`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

const MAGIC: &[u8; 8] = b"BSOUTBX1";
/// `len` and `crc`.
const HEADER: usize = 8;
/// `seq` and `class`, counted in `len`.
const BODY_FIXED: usize = 9;
const MARK: usize = 16;
const MARK_DELIVERED: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "the outbox is full ({records} undelivered records, {bytes} bytes on disk; limits {max_records} records, {max_bytes} bytes): the new finding is refused and every recorded one is kept"
    )]
    Full {
        records: usize,
        bytes: u64,
        max_records: usize,
        max_bytes: u64,
    },
    #[error("a record of {0} bytes is larger than the outbox allows ({1} bytes)")]
    TooLarge(usize, usize),
    #[error("outbox {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl OutboxError {
    /// True when the record was refused for lack of room (by the limits or by the disk):
    /// the caller should keep its source and try again once the outbox has drained.
    pub fn is_full(&self) -> bool {
        match self {
            OutboxError::Full { .. } => true,
            OutboxError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                )
            }
            OutboxError::TooLarge(..) => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a finding is, for the outbox's accounting and the status topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// From an image that its source still holds (a DICOM file or object).
    Image = 1,
    /// A summary of live video: it cannot be made again.
    Summary = 2,
}

impl Class {
    fn from_u8(v: u8) -> Option<Class> {
        match v {
            1 => Some(Class::Image),
            2 => Some(Class::Summary),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    pub max_bytes: u64,
    pub max_records: usize,
    /// A segment is closed and a new one begun when a record would take it past this.
    pub segment_bytes: u64,
}

impl OutboxConfig {
    /// The largest record payload accepted: a record must fit in one segment.
    pub fn max_payload(&self) -> usize {
        (self.segment_bytes as usize).saturating_sub(MAGIC.len() + HEADER + BODY_FIXED)
    }
}

/// What [`Outbox::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records waiting for delivery.
    pub pending: usize,
    /// Records already delivered in segments that still hold pending ones.
    pub delivered: usize,
    /// Bytes cut off the tail of the last segment (a write that never completed).
    pub torn_bytes: u64,
    /// Bytes skipped in earlier segments after a damaged record (should never happen).
    pub damaged_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    InFlight,
    Delivered,
}

/// One record, as the outbox remembers it: 32 bytes of memory per undelivered finding.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u32,
    len: u32,
    class: Class,
    state: State,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: File,
    marks: Option<File>,
    bytes: u64,
    records: u32,
    delivered: u32,
}

impl Segment {
    fn marks_path(&self) -> PathBuf {
        self.path.with_extension("ack")
    }
}

/// Counters since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub appended: u64,
    pub delivered: u64,
    pub refused: u64,
    /// Records the disk no longer returned intact: skipped, with an error logged.
    pub unreadable: u64,
}

/// The outbox. Not thread-safe by itself: the publisher wraps it in a mutex.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    config: OutboxConfig,
    segments: VecDeque<Segment>,
    entries: VecDeque<Entry>,
    /// Accepting appends: the last segment, created by this process.
    active: bool,
    next_seq: u64,
    /// No pending entry has a smaller seq.
    cursor: u64,
    undelivered: usize,
    unsynced_marks: bool,
    frame: Vec<u8>,
    stats: OutboxStats,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<(Outbox, Recovery), OutboxError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "seg") {
                match path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                {
                    Some(first) => names.push((first, path)),
                    None => warn!(file = %path.display(), "not an outbox segment name; left alone"),
                }
            }
        }
        names.sort();
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            config,
            segments: VecDeque::new(),
            entries: VecDeque::with_capacity(config.max_records.min(4096)),
            active: false,
            next_seq: 1,
            cursor: 0,
            undelivered: 0,
            unsynced_marks: false,
            frame: Vec::new(),
            stats: OutboxStats::default(),
        };
        let mut recovery = Recovery::default();
        let last = names.len().saturating_sub(1);
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            outbox.recover_segment(first_seq, path, i == last, &mut recovery)?;
        }
        outbox.compact()?;
        recovery.pending = outbox.undelivered;
        recovery.delivered = outbox.entries.len() - outbox.undelivered;
        Ok((outbox, recovery))
    }

    fn recover_segment(
        &mut self,
        first_seq: u64,
        path: PathBuf,
        is_last: bool,
        recovery: &mut Recovery,
    ) -> Result<(), OutboxError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(&path))?;
        let mut segment = Segment {
            first_seq,
            path,
            file,
            marks: None,
            bytes: data.len() as u64,
            records: 0,
            delivered: 0,
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            // A segment created but never written (crash between create and header), or not ours.
            warn!(file = %segment.path.display(), "outbox segment without a valid header; removed ({} bytes)", data.len());
            recovery.damaged_bytes += data.len() as u64;
            std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            let _ = std::fs::remove_file(segment.marks_path());
            return Ok(());
        }
        let mut at = MAGIC.len();
        let mut prev = first_seq.saturating_sub(1);
        while at < data.len() {
            match parse_record(&data[at..]) {
                Some((seq, class, len)) if seq > prev && seq >= first_seq => {
                    self.entries.push_back(Entry {
                        seq,
                        segment: first_seq,
                        offset: at as u32,
                        len: len as u32,
                        class,
                        state: State::Pending,
                    });
                    segment.records += 1;
                    prev = seq;
                    at += len;
                }
                _ => break,
            }
        }
        if at < data.len() {
            let cut = (data.len() - at) as u64;
            if is_last {
                warn!(
                    file = %segment.path.display(),
                    offset = at,
                    "outbox: dropped a torn record of {cut} bytes at the tail (a write cut short, never acknowledged); the {} records before it are kept",
                    segment.records
                );
                segment
                    .file
                    .set_len(at as u64)
                    .map_err(io_err(&segment.path))?;
                segment.file.sync_all().map_err(io_err(&segment.path))?;
                segment.bytes = at as u64;
                recovery.torn_bytes += cut;
            } else {
                warn!(
                    file = %segment.path.display(),
                    offset = at,
                    "outbox: damaged record inside a closed segment; {cut} bytes after it are unreadable, the {} records before it are kept",
                    segment.records
                );
                recovery.damaged_bytes += cut;
            }
        }
        self.next_seq = self.next_seq.max(prev + 1);
        self.undelivered += segment.records as usize;
        self.read_marks(&mut segment)?;
        self.segments.push_back(segment);
        Ok(())
    }

    fn read_marks(&mut self, segment: &mut Segment) -> Result<(), OutboxError> {
        let path = segment.marks_path();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let whole = data.len() / MARK * MARK;
        for mark in data[..whole].chunks_exact(MARK) {
            let crc = u32::from_le_bytes(mark[12..16].try_into().unwrap());
            if crc32fast::hash(&mark[..12]) != crc || mark[8] != MARK_DELIVERED {
                debug!(file = %path.display(), "outbox: ignoring a damaged delivery mark");
                continue;
            }
            let seq = u64::from_le_bytes(mark[..8].try_into().unwrap());
            if let Some(i) = self.position(seq)
                && self.entries[i].segment == segment.first_seq
                && self.entries[i].state != State::Delivered
            {
                self.entries[i].state = State::Delivered;
                segment.delivered += 1;
                self.undelivered -= 1;
            }
        }
        let marks = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if whole != data.len() {
            marks.set_len(whole as u64).map_err(io_err(&path))?;
        }
        segment.marks = Some(marks);
        Ok(())
    }

    /// Writes a record and syncs it to disk; when this returns `Ok`, the record survives a
    /// crash or a power cut. Refuses ([`OutboxError::Full`]) rather than grow past its limits.
    pub fn append(&mut self, class: Class, payload: &[u8]) -> Result<u64, OutboxError> {
        let max = self.config.max_payload();
        if payload.len() > max {
            return Err(OutboxError::TooLarge(payload.len(), max));
        }
        let len = HEADER + BODY_FIXED + payload.len();
        if self.undelivered >= self.config.max_records
            || self.disk_bytes() + len as u64 > self.config.max_bytes
        {
            self.stats.refused += 1;
            return Err(OutboxError::Full {
                records: self.undelivered,
                bytes: self.disk_bytes(),
                max_records: self.config.max_records,
                max_bytes: self.config.max_bytes,
            });
        }
        let needs_new = match self.segments.back() {
            Some(s) if self.active => s.bytes + len as u64 > self.config.segment_bytes,
            _ => true,
        };
        if needs_new {
            self.start_segment()?;
        }
        let seq = self.next_seq;
        self.frame.clear();
        self.frame
            .extend_from_slice(&((len - HEADER) as u32).to_le_bytes());
        self.frame.extend_from_slice(&[0; 4]);
        self.frame.extend_from_slice(&seq.to_le_bytes());
        self.frame.push(class as u8);
        self.frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&self.frame[HEADER..]);
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());

        let segment = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        let offset = segment.bytes;
        let written = segment
            .file
            .write_all(&self.frame)
            .and_then(|()| segment.file.sync_data());
        if let Err(source) = written {
            // Leave no half record behind; nothing was acknowledged, the caller keeps its source.
            let _ = segment.file.set_len(offset);
            self.stats.refused += 1;
            return Err(OutboxError::Io {
                path: segment.path.clone(),
                source,
            });
        }
        segment.bytes += len as u64;
        segment.records += 1;
        self.entries.push_back(Entry {
            seq,
            segment: segment.first_seq,
            offset: offset as u32,
            len: len as u32,
            class,
            state: State::Pending,
        });
        self.next_seq += 1;
        self.undelivered += 1;
        self.stats.appended += 1;
        Ok(seq)
    }

    fn start_segment(&mut self) -> Result<(), OutboxError> {
        let path = self.dir.join(format!("{:020}.seg", self.next_seq));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let created = file.write_all(MAGIC).and_then(|()| file.sync_all());
        // The new name must reach the disk too, or a synced record could vanish with it.
        let created = created.and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = created {
            let _ = std::fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            path,
            file,
            marks: None,
            bytes: MAGIC.len() as u64,
            records: 0,
            delivered: 0,
        });
        self.active = true;
        Ok(())
    }

    /// The oldest record not yet handed out: marks it in flight and reads its payload into
    /// `buf`. `None` when nothing is waiting. A record that no longer reads back intact is
    /// skipped and reported as an error (call again for the next one).
    pub fn take_next(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>, OutboxError> {
        let start = self
            .entries
            .partition_point(|e| e.seq < self.cursor)
            .min(self.entries.len());
        let Some(i) =
            (start..self.entries.len()).find(|&i| self.entries[i].state == State::Pending)
        else {
            self.cursor = self.next_seq;
            return Ok(None);
        };
        let entry = self.entries[i];
        self.cursor = entry.seq + 1;
        let segment = self
            .segment(entry.segment)
            .expect("every entry's segment is open");
        buf.clear();
        buf.resize(entry.len as usize, 0);
        let read = segment.file.read_exact_at(buf, entry.offset as u64);
        // Read back from disk: check it again rather than send bytes the disk has changed.
        let failure = match read {
            Err(e) => Some(e),
            Ok(()) => match parse_record(buf) {
                Some((seq, _, _)) if seq == entry.seq => None,
                _ => Some(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "record {} no longer passes its CRC: the disk changed it",
                        entry.seq
                    ),
                )),
            },
        };
        if let Some(source) = failure {
            // Never send it damaged; count it and move on, or it would block the line.
            let path = segment.path.clone();
            self.stats.unreadable += 1;
            self.settle(entry.seq)?;
            self.stats.delivered -= 1;
            return Err(OutboxError::Io { path, source });
        }
        buf.drain(..HEADER + BODY_FIXED);
        self.entries[i].state = State::InFlight;
        Ok(Some(entry.seq))
    }

    /// The broker has it: record that (lazily synced), and delete segments fully delivered.
    pub fn settle(&mut self, seq: u64) -> Result<(), OutboxError> {
        let Some(i) = self.position(seq) else {
            return Ok(()); // already compacted away: a duplicate acknowledgement
        };
        if self.entries[i].state == State::Delivered {
            return Ok(());
        }
        self.entries[i].state = State::Delivered;
        self.undelivered -= 1;
        self.stats.delivered += 1;
        let segment_id = self.entries[i].segment;
        let front = self.front_segment();
        let segment = self
            .segments
            .iter_mut()
            .find(|s| s.first_seq == segment_id)
            .expect("every entry's segment is open");
        segment.delivered += 1;
        // A mark is not needed when this delivery empties the oldest segment: it goes now.
        if segment.delivered < segment.records || segment.first_seq != front {
            let mut mark = [0u8; MARK];
            mark[..8].copy_from_slice(&seq.to_le_bytes());
            mark[8] = MARK_DELIVERED;
            let crc = crc32fast::hash(&mark[..12]);
            mark[12..].copy_from_slice(&crc.to_le_bytes());
            let path = segment.marks_path();
            if segment.marks.is_none() {
                segment.marks = Some(
                    OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&path)
                        .map_err(io_err(&path))?,
                );
            }
            segment
                .marks
                .as_mut()
                .expect("just opened")
                .write_all(&mark)
                .map_err(io_err(&path))?;
            self.unsynced_marks = true;
        }
        self.compact()
    }

    /// Puts an in-flight record back in line (its delivery was not confirmed).
    pub fn requeue(&mut self, seq: u64) {
        if let Some(i) = self.position(seq)
            && self.entries[i].state == State::InFlight
        {
            self.entries[i].state = State::Pending;
            self.cursor = self.cursor.min(seq);
        }
    }

    /// Puts every in-flight record back in line (the broker lost the session).
    pub fn requeue_all(&mut self) {
        for e in self.entries.iter_mut() {
            if e.state == State::InFlight {
                e.state = State::Pending;
                self.cursor = self.cursor.min(e.seq);
            }
        }
    }

    /// Syncs delivery marks written since the last call.
    pub fn sync_marks(&mut self) -> Result<(), OutboxError> {
        if !self.unsynced_marks {
            return Ok(());
        }
        for s in &self.segments {
            if let Some(m) = &s.marks {
                m.sync_data().map_err(io_err(&s.marks_path()))?;
            }
        }
        self.unsynced_marks = false;
        Ok(())
    }

    /// Deletes segments whose every record is delivered, oldest first.
    fn compact(&mut self) -> Result<(), OutboxError> {
        while let Some(s) = self.segments.front() {
            if s.delivered < s.records
                || (s.records == 0 && self.active && self.segments.len() == 1)
            {
                break;
            }
            let s = self.segments.pop_front().expect("just looked");
            while self
                .entries
                .front()
                .is_some_and(|e| e.segment == s.first_seq)
            {
                self.entries.pop_front();
            }
            if self.segments.is_empty() {
                self.active = false;
            }
            let marks = s.marks_path();
            drop(s.file);
            drop(s.marks);
            std::fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            match std::fs::remove_file(&marks) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&marks)(e)),
            }
            debug!(
                segment = s.first_seq,
                "outbox segment delivered and removed"
            );
        }
        Ok(())
    }

    fn front_segment(&self) -> u64 {
        self.segments.front().map_or(0, |s| s.first_seq)
    }

    fn segment(&self, first_seq: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.first_seq == first_seq)
    }

    fn position(&self, seq: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&seq, |e| e.seq).ok()
    }

    /// Records not yet acknowledged by the broker.
    pub fn depth(&self) -> usize {
        self.undelivered
    }

    /// Undelivered records of one class.
    pub fn depth_of(&self, class: Class) -> usize {
        self.entries
            .iter()
            .filter(|e| e.class == class && e.state != State::Delivered)
            .count()
    }

    /// Bytes the segments take on disk (delivered records stay until their segment goes).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// True when the next record of ordinary size would be refused.
    pub fn is_full(&self) -> bool {
        self.undelivered >= self.config.max_records
            || self.disk_bytes() + 4096 > self.config.max_bytes
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    pub fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// Heap memory the outbox holds now: its record index and its frame buffer.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.segments.capacity() * std::mem::size_of::<Segment>()
            + self.frame.capacity()
    }

    /// Heap memory the outbox may reach at its limits.
    pub fn memory_limit(config: &OutboxConfig) -> usize {
        config.max_records * std::mem::size_of::<Entry>()
            + (config.max_bytes / config.segment_bytes.max(1) + 2) as usize
                * std::mem::size_of::<Segment>()
            + config.segment_bytes as usize
    }
}

/// Checks one record at the start of `data`: `(seq, class, whole length)`, or `None` when it
/// is cut short or damaged.
fn parse_record(data: &[u8]) -> Option<(u64, Class, usize)> {
    if data.len() < HEADER + BODY_FIXED {
        return None;
    }
    let len = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
    if len < BODY_FIXED || data.len() - HEADER < len {
        return None;
    }
    let crc = u32::from_le_bytes(data[4..8].try_into().ok()?);
    let body = &data[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[..8].try_into().ok()?);
    let class = Class::from_u8(body[8])?;
    Some((seq, class, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutboxConfig {
        OutboxConfig {
            max_bytes: 1 << 20,
            max_records: 1000,
            segment_bytes: 1024,
        }
    }

    fn payload(i: usize) -> Vec<u8> {
        format!("{{\"finding\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 300)).into_bytes()
    }

    fn drain(outbox: &mut Outbox) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(seq) = outbox.take_next(&mut buf).unwrap() {
            out.push(buf.clone());
            outbox.settle(seq).unwrap();
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_survive_a_reopen_in_order_and_leave_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut o, r) = Outbox::open(dir.path(), config()).unwrap();
            assert_eq!(r, Recovery::default());
            for i in 0..100 {
                o.append(Class::Image, &payload(i)).unwrap();
            }
            assert!(
                segment_files(dir.path()).len() > 3,
                "segments roll at 1 KiB"
            );
            // Deliver the first 10, with one in flight that never gets its ack.
            let mut buf = Vec::new();
            for _ in 0..10 {
                let seq = o.take_next(&mut buf).unwrap().unwrap();
                o.settle(seq).unwrap();
            }
            o.take_next(&mut buf).unwrap().unwrap();
            o.sync_marks().unwrap();
        }
        let (mut o, r) = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(r.pending, 90);
        assert_eq!(r.torn_bytes, 0);
        let got = drain(&mut o);
        let want: Vec<Vec<u8>> = (10..100).map(payload).collect();
        assert_eq!(got, want);
        assert_eq!(o.depth(), 0);
        assert!(
            segment_files(dir.path()).is_empty(),
            "delivered segments are deleted"
        );
        // And a fresh start after everything was delivered.
        drop(o);
        let (o, r) = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!((r.pending, o.depth()), (0, 0));
    }

    #[test]
    fn a_torn_or_corrupted_tail_keeps_every_whole_record_before_it() {
        /// Damages the segment at `path`, whose length is `len` and whose last record
        /// starts at `last`.
        type Damage = fn(&Path, u64, u64);
        let damages: [(&str, Damage); 5] = [
            ("cut inside the header", |p, _, last| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(last + 3).unwrap();
            }),
            ("cut inside the payload", |p, len, _| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(len - 5).unwrap();
            }),
            ("a flipped byte in the last record", |p, len, _| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.write_at(&[0xAA], len - 3).unwrap();
            }),
            ("zeros after the last record", |p, len, _| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.write_at(&[0; 700], len).unwrap();
            }),
            ("garbage after the last record", |p, len, _| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.write_at(&[0x5A; 33], len).unwrap();
            }),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let cfg = OutboxConfig {
                segment_bytes: 1 << 20,
                ..config()
            };
            let (len, last) = {
                let (mut o, _) = Outbox::open(dir.path(), cfg).unwrap();
                for i in 0..20 {
                    o.append(Class::Image, &payload(i)).unwrap();
                }
                (o.disk_bytes(), o.entries.back().unwrap().offset as u64)
            };
            let seg = &segment_files(dir.path())[0];
            damage(seg, len, last);
            let (mut o, r) = Outbox::open(dir.path(), cfg).unwrap();
            let survivors = drain(&mut o);
            let whole_before = if what.contains("after") { 20 } else { 19 };
            assert_eq!(survivors.len(), whole_before, "{what}: {r:?}");
            assert_eq!(
                survivors,
                (0..whole_before).map(payload).collect::<Vec<_>>(),
                "{what}"
            );
            assert!(r.torn_bytes > 0, "{what}: the damage is reported");
            // The tail was cut: a new append and a reopen find no damage any more.
            let (mut o, _) = {
                drop(o);
                Outbox::open(dir.path(), cfg).unwrap()
            };
            o.append(Class::Image, b"after recovery").unwrap();
            drop(o);
            let (mut o, r) = Outbox::open(dir.path(), cfg).unwrap();
            assert_eq!(r.torn_bytes, 0, "{what}");
            assert_eq!(drain(&mut o), vec![b"after recovery".to_vec()], "{what}");
        }
    }

    #[test]
    fn full_refuses_new_records_and_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OutboxConfig {
            max_records: 5,
            ..config()
        };
        let (mut o, _) = Outbox::open(dir.path(), cfg).unwrap();
        for i in 0..5 {
            o.append(Class::Summary, &payload(i)).unwrap();
        }
        assert!(o.is_full());
        let e = o.append(Class::Image, &payload(5)).unwrap_err();
        assert!(e.is_full(), "{e}");
        assert!(e.to_string().contains("every recorded one is kept"), "{e}");
        assert_eq!(o.stats().refused, 1);
        assert_eq!(o.depth_of(Class::Summary), 5);
        // Delivering one makes room for one.
        let mut buf = Vec::new();
        let seq = o.take_next(&mut buf).unwrap().unwrap();
        o.settle(seq).unwrap();
        o.append(Class::Image, &payload(5)).unwrap();
        assert_eq!(drain(&mut o), (1..6).map(payload).collect::<Vec<_>>());

        let small = OutboxConfig {
            max_bytes: 2000,
            ..config()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(dir.path(), small).unwrap();
        let mut n = 0;
        while o.append(Class::Image, &[b'y'; 300]).is_ok() {
            n += 1;
        }
        assert!(n >= 5 && o.disk_bytes() <= 2000, "{n} {}", o.disk_bytes());
        assert!(matches!(
            o.append(Class::Image, &[0; 5000]),
            Err(OutboxError::TooLarge(..))
        ));
    }

    #[test]
    fn requeued_records_go_again_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(dir.path(), config()).unwrap();
        for i in 0..6 {
            o.append(Class::Image, &payload(i)).unwrap();
        }
        let mut buf = Vec::new();
        let a = o.take_next(&mut buf).unwrap().unwrap();
        let b = o.take_next(&mut buf).unwrap().unwrap();
        let c = o.take_next(&mut buf).unwrap().unwrap();
        o.settle(b).unwrap();
        o.requeue_all();
        let again: Vec<u64> = std::iter::from_fn(|| o.take_next(&mut buf).unwrap()).collect();
        assert_eq!(again, vec![a, c, c + 1, c + 2, c + 3]);
        o.requeue(a);
        assert_eq!(o.take_next(&mut buf).unwrap(), Some(a));
        assert_eq!(buf, payload(0));
    }

    #[test]
    fn a_mark_for_every_delivery_survives_a_crash_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut o, _) = Outbox::open(dir.path(), config()).unwrap();
            for i in 0..30 {
                o.append(Class::Image, &payload(i)).unwrap();
            }
            let mut buf = Vec::new();
            // Deliver every other one: no segment empties, so marks carry the state.
            let mut seqs = Vec::new();
            while let Some(s) = o.take_next(&mut buf).unwrap() {
                seqs.push(s);
            }
            for s in seqs.iter().step_by(2) {
                o.settle(*s).unwrap();
            }
            o.sync_marks().unwrap();
            // A torn mark at the end of one file is ignored.
            let ack = o.segments[0].marks_path();
            let f = OpenOptions::new().append(true).open(ack).unwrap();
            (&f).write_all(&[1, 2, 3]).unwrap();
        }
        let (mut o, r) = Outbox::open(dir.path(), config()).unwrap();
        assert_eq!(r.pending, 15);
        let left = drain(&mut o);
        assert_eq!(
            left,
            (0..30).skip(1).step_by(2).map(payload).collect::<Vec<_>>()
        );
    }
}
