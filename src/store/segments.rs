//! Persistent messages in append-only segment files, the way a log-structured broker keeps
//! them: publishing appends a record to the active segment (in memory first, written and
//! fdatasync'd by the flusher's next round), and a message leaving for good appends its
//! offset to the segment's ack file. A segment whose records are all acked is deleted.
//!
//! Why not one sled record per message: sled copies a leaf node on every insert, so a 1 KB
//! message costs several KB of copying plus an index update, and its page cache grows with
//! the backlog. An append is one memcpy; a queued message costs nothing in RAM beyond its
//! place in its queue (`Loc`, 8 bytes), and start-up is one sequential read.
//!
//! Layout under `<data dir>/messages/`: `<id>.seg` holds records
//! `[len u32 LE][crc32 u32 LE][payload: queue id u64 BE, seq u64 BE, message record]`;
//! `<id>.ack` holds the u32 LE offsets of the records that left, `<id>.dlv` one entry per
//! unacked delivery (so only delivered messages come back flagged redelivered, with their
//! delivery count for x-delivery-limit). A torn record at the end
//! of a segment (a crash mid-write) ends that segment's scan; it was never confirmed.

use super::StoreError;
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::num::NonZeroU32;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment size after which the log starts a new segment.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Record header: payload length and CRC-32 of the payload.
const HEADER: usize = 8;
/// Queue id and seq at the start of every payload.
const IDS: usize = 16;
/// No record may claim more than this (max message size plus properties, with margin).
const MAX_RECORD: u32 = 1 << 30;

/// Where a stored message is: segment id and byte offset of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub seg: NonZeroU32,
    pub off: u32,
}

struct Segment {
    file: Arc<File>,
    /// Records not yet acked (counted in memory; rebuilt at start-up).
    live: u64,
}

pub(super) struct LogState {
    active: NonZeroU32,
    /// Appended records not yet written to the active segment's file.
    buf: Vec<u8>,
    /// File offset of `buf[0]` in the active segment.
    buf_start: u64,
    segments: BTreeMap<NonZeroU32, Segment>,
    /// Files written since their last fdatasync.
    unsynced: Vec<Arc<File>>,
    /// Acks not yet appended to ack files.
    acks: Vec<Loc>,
    /// First deliveries not yet appended to delivery files.
    delivered: Vec<Loc>,
    /// Live counts of the segments found at open are known only after `recover`; until
    /// then none of them may be deleted.
    recovered: bool,
}

/// What one flusher round must do outside the lock.
pub(super) struct Round {
    sync: Vec<Arc<File>>,
    acks: Vec<Loc>,
    delivered: Vec<Loc>,
    dead: Vec<NonZeroU32>,
}

pub struct MessageLog {
    dir: PathBuf,
    /// Size after which a new segment starts (`SEGMENT_BYTES`; smaller in tests).
    segment_bytes: u64,
    pub(super) state: parking_lot::Mutex<LogState>,
    /// Fault injection (see `Store::inject_faults`): appends / rounds fail as on a full disk.
    pub(super) fail_appends: std::sync::atomic::AtomicBool,
    pub(super) fail_rounds: std::sync::atomic::AtomicBool,
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected disk fault")
}

fn seg_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(format!("{:08}.seg", id.get()))
}

fn ack_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(format!("{:08}.ack", id.get()))
}

fn dlv_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(format!("{:08}.dlv", id.get()))
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        source: sled::Error::Io(e),
    }
}

fn open_segment(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl MessageLog {
    /// Open the log directory: existing segments are listed (their records come back
    /// through `recover`) and a fresh active segment is started after them.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(NonZeroU32::new)
            else {
                continue;
            };
            let path = seg_path(dir, id);
            let file = open_segment(&path, false).map_err(|e| io_err(&path, e))?;
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    live: 0,
                },
            );
        }
        let next = segments.keys().next_back().map_or(1, |id| id.get() + 1);
        let active = NonZeroU32::new(next).ok_or_else(|| StoreError::Corrupt {
            key: dir.display().to_string(),
            why: "segment ids exhausted".into(),
        })?;
        let path = seg_path(dir, active);
        let file = open_segment(&path, true).map_err(|e| io_err(&path, e))?;
        segments.insert(
            active,
            Segment {
                file: Arc::new(file),
                live: 0,
            },
        );
        Ok(MessageLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: parking_lot::Mutex::new(LogState {
                active,
                buf: Vec::with_capacity(1 << 20),
                buf_start: 0,
                segments,
                unsynced: Vec::new(),
                acks: Vec::new(),
                delivered: Vec::new(),
                recovered: false,
            }),
            fail_appends: Default::default(),
            fail_rounds: Default::default(),
        })
    }

    /// Read every live record of the segments found at open, oldest first, and pass
    /// (location, queue id, seq, times delivered, message record) to `f`; `f` returns false for a record
    /// nobody claims (its queue is gone), which is then acked.
    pub fn recover(
        &self,
        mut f: impl FnMut(Loc, u64, u64, u32, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let (ids, active): (Vec<NonZeroU32>, NonZeroU32) = {
            let st = self.state.lock();
            (st.segments.keys().copied().collect(), st.active)
        };
        let mut total = 0u64;
        for id in ids.into_iter().filter(|id| *id != active) {
            let acked = read_offsets(&ack_path(&self.dir, id))?;
            let delivered = count_offsets(&dlv_path(&self.dir, id))?;
            let path = seg_path(&self.dir, id);
            let file = File::open(&path).map_err(|e| io_err(&path, e))?;
            let size = file.metadata().map_err(|e| io_err(&path, e))?.len();
            let mut r = BufReader::with_capacity(1 << 20, file);
            let mut off: u64 = 0;
            let mut live = 0u64;
            let mut orphans = Vec::new();
            let mut payload = Vec::new();
            while off + HEADER as u64 <= size {
                let mut h = [0u8; HEADER];
                if r.read_exact(&mut h).is_err() {
                    break;
                }
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                if len < IDS as u32 || len > MAX_RECORD || off + (HEADER as u64) + len as u64 > size
                {
                    if len != 0 {
                        tracing::warn!(segment = %path.display(), offset = off, "torn record at the end of a segment ignored (never confirmed)");
                    }
                    break;
                }
                payload.resize(len as usize, 0);
                if r.read_exact(&mut payload).is_err() {
                    break;
                }
                if crc32fast::hash(&payload) != crc {
                    tracing::warn!(segment = %path.display(), offset = off, "record with a bad checksum: the rest of this segment is ignored");
                    break;
                }
                let here = off as u32;
                off += (HEADER as u64) + len as u64;
                if acked.contains(&here) {
                    continue;
                }
                let queue_id = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                let seq = u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default());
                let loc = Loc { seg: id, off: here };
                let times = delivered.get(&here).copied().unwrap_or(0);
                if f(loc, queue_id, seq, times, &payload[IDS..]) {
                    live += 1;
                    total += 1;
                    if total.is_multiple_of(100_000) {
                        tracing::info!(recovered = total, "recovering persistent messages");
                    }
                } else {
                    orphans.push(loc);
                }
            }
            let mut st = self.state.lock();
            if let Some(s) = st.segments.get_mut(&id) {
                s.live = live;
            }
            st.acks.extend(orphans);
        }
        self.state.lock().recovered = true;
        Ok(total)
    }

    /// Read a stored record back (a paged-out message at delivery time).
    pub fn read(&self, loc: Loc) -> std::io::Result<Vec<u8>> {
        let file = {
            let st = self.state.lock();
            if loc.seg == st.active && loc.off as u64 >= st.buf_start {
                let at = (loc.off as u64 - st.buf_start) as usize;
                return record_in(&st.buf, at);
            }
            match st.segments.get(&loc.seg) {
                Some(s) => s.file.clone(),
                None => return Err(std::io::Error::other("segment already deleted")),
            }
        };
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, loc.off as u64)?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if !(IDS as u32..=MAX_RECORD).contains(&len) {
            return Err(std::io::Error::other("bad record length"));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, loc.off as u64 + HEADER as u64)?;
        if crc32fast::hash(&payload) != crc {
            return Err(std::io::Error::other("record checksum mismatch"));
        }
        payload.drain(..IDS);
        Ok(payload)
    }

    /// Start a round: take the buffered appends (written
    /// here, under the lock, so readers always find a record in the buffer or the file),
    /// the files to sync, the acks to write and the segments that can go.
    pub(super) fn begin_round(&self, st: &mut LogState) -> std::io::Result<Round> {
        if self.fail_rounds.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected());
        }
        if !st.buf.is_empty() {
            let active = st.active;
            let file = st
                .segments
                .get(&active)
                .map(|s| s.file.clone())
                .ok_or_else(|| std::io::Error::other("active segment missing"))?;
            file.write_all_at(&st.buf, st.buf_start)?;
            st.buf_start += st.buf.len() as u64;
            st.buf.clear();
            st.unsynced.push(file);
        }
        let active = st.active;
        let recovered = st.recovered;
        let dead: Vec<NonZeroU32> = st
            .segments
            .iter()
            .filter(|(id, s)| recovered && **id != active && s.live == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            st.segments.remove(id);
        }
        Ok(Round {
            sync: std::mem::take(&mut st.unsynced),
            acks: std::mem::take(&mut st.acks),
            delivered: std::mem::take(&mut st.delivered),
            dead,
        })
    }

    /// The slow part of a round, outside the lock: append acks, fdatasync what was
    /// written, delete dead segments.
    pub(super) fn finish_round_or_requeue(&self, round: Round) -> std::io::Result<()> {
        self.finish_round(&round)
            .inspect_err(|_| self.retry_round(round))
    }

    fn finish_round(&self, round: &Round) -> std::io::Result<()> {
        append_offsets(&self.dir, &round.acks, &round.dead, ack_path)?;
        append_offsets(&self.dir, &round.delivered, &round.dead, dlv_path)?;
        let mut seen: Vec<*const File> = Vec::new();
        for f in &round.sync {
            let p = Arc::as_ptr(f);
            if !seen.contains(&p) {
                seen.push(p);
                f.sync_data()?;
            }
        }
        for &id in &round.dead {
            for path in [
                seg_path(&self.dir, id),
                ack_path(&self.dir, id),
                dlv_path(&self.dir, id),
            ] {
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a finished segment");
                    }
                }
            }
        }
        Ok(())
    }

    /// Put a round's work back after it failed, to be retried.
    pub(super) fn retry_round(&self, round: Round) {
        let mut st = self.state.lock();
        st.unsynced.extend(round.sync);
        let mut acks = round.acks;
        acks.append(&mut st.acks);
        st.acks = acks;
        st.delivered.extend(round.delivered);
        // Dead segments were dropped from the map already; their files are removed on a
        // later start (they have no live records and are never read again).
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a record (see `LogState::append`).
    pub(super) fn append(
        &self,
        st: &mut LogState,
        queue_id: u64,
        seq: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> std::io::Result<Loc> {
        st.append(&self.dir, self.segment_bytes, queue_id, seq, write)
    }
}

impl LogState {
    /// Append a record; `write` encodes the message record into the buffer.
    fn append(
        &mut self,
        dir: &Path,
        segment_bytes: u64,
        queue_id: u64,
        seq: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> std::io::Result<Loc> {
        if self.buf_start + self.buf.len() as u64 >= segment_bytes {
            self.rotate(dir)?;
        }
        let start = self.buf.len();
        let off = self.buf_start + start as u64;
        self.buf.extend_from_slice(&[0u8; HEADER]);
        self.buf.extend_from_slice(&queue_id.to_be_bytes());
        self.buf.extend_from_slice(&seq.to_be_bytes());
        write(&mut self.buf);
        let len = (self.buf.len() - start - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[start + HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        if let Some(s) = self.segments.get_mut(&self.active) {
            s.live += 1;
        }
        Ok(Loc {
            seg: self.active,
            off: off as u32,
        })
    }

    /// Records appended since the last round took the buffer?
    pub(super) fn has_appends(&self) -> bool {
        !self.buf.is_empty()
    }

    /// A stored message left for good. True for the first ack since the last round.
    pub(super) fn remove(&mut self, loc: Loc) -> bool {
        if let Some(s) = self.segments.get_mut(&loc.seg) {
            s.live = s.live.saturating_sub(1);
        }
        self.acks.push(loc);
        self.acks.len() == 1
    }

    /// A stored message was delivered (unacked).
    pub(super) fn delivered(&mut self, loc: Loc) {
        self.delivered.push(loc);
    }

    /// Write out the buffer and start a new active segment.
    fn rotate(&mut self, dir: &Path) -> std::io::Result<()> {
        let old = self
            .segments
            .get(&self.active)
            .map(|s| s.file.clone())
            .ok_or_else(|| std::io::Error::other("active segment missing"))?;
        old.write_all_at(&self.buf, self.buf_start)?;
        self.unsynced.push(old);
        let next = self
            .active
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("segment ids exhausted"))?;
        let file = open_segment(&seg_path(dir, next), true)?;
        self.segments.insert(
            next,
            Segment {
                file: Arc::new(file),
                live: 0,
            },
        );
        self.active = next;
        self.buf.clear();
        self.buf_start = 0;
        Ok(())
    }
}

/// The u32 offsets listed in an ack or delivery file (none if it does not exist).
fn read_offsets(path: &Path) -> Result<HashSet<u32>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// How often each offset is listed in a delivery file.
fn count_offsets(path: &Path) -> Result<std::collections::HashMap<u32, u32>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut counts = std::collections::HashMap::new();
    for c in bytes.chunks_exact(4) {
        *counts
            .entry(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .or_insert(0u32) += 1;
    }
    Ok(counts)
}

/// Append offsets, grouped by segment, to each segment's file named by `path`.
fn append_offsets(
    dir: &Path,
    locs: &[Loc],
    dead: &[NonZeroU32],
    path: fn(&Path, NonZeroU32) -> PathBuf,
) -> std::io::Result<()> {
    let mut by_seg: BTreeMap<NonZeroU32, Vec<u8>> = BTreeMap::new();
    for loc in locs.iter().filter(|l| !dead.contains(&l.seg)) {
        by_seg
            .entry(loc.seg)
            .or_default()
            .extend_from_slice(&loc.off.to_le_bytes());
    }
    for (id, bytes) in by_seg {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path(dir, id))?;
        f.write_all(&bytes)?;
    }
    Ok(())
}

/// The message record of the record at `at` in an in-memory buffer.
fn record_in(buf: &[u8], at: usize) -> std::io::Result<Vec<u8>> {
    let h = buf
        .get(at..at + HEADER)
        .ok_or_else(|| std::io::Error::other("record outside the buffer"))?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    buf.get(at + HEADER + IDS..at + HEADER + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| std::io::Error::other("record outside the buffer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &MessageLog, queue: u64, seq: u64) -> Loc {
        let mut st = log.state.lock();
        log.append(&mut st, queue, seq, |b| {
            b.extend_from_slice(&[seq as u8; 200])
        })
        .expect("append")
    }

    fn round(log: &MessageLog) {
        let r = {
            let mut st = log.state.lock();
            log.begin_round(&mut st).expect("begin")
        };
        log.finish_round_or_requeue(r).expect("finish");
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count()
    }

    #[test]
    fn segments_rotate_are_read_across_and_go_when_fully_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = MessageLog::open_with(dir.path(), 4096).expect("open");
        log.recover(|_, _, _, _, _| true)
            .expect("nothing to recover");
        let locs: Vec<Loc> = (0..100).map(|i| append(&log, 1, i)).collect();
        assert!(
            locs.last().expect("locs").seg.get() > 3,
            "rotated several times"
        );
        // Readable from the buffer, from rotated files, and after the round from the file.
        for (i, loc) in locs.iter().enumerate().step_by(7) {
            assert_eq!(log.read(*loc).expect("read")[16], i as u8);
        }
        round(&log);
        for (i, loc) in locs.iter().enumerate() {
            assert_eq!(log.read(*loc).expect("read")[16], i as u8);
        }
        let before = segment_files(dir.path());
        for loc in &locs[..90] {
            log.state.lock().remove(*loc);
        }
        log.state.lock().delivered(locs[95]);
        round(&log);
        let after = segment_files(dir.path());
        assert!(
            after < before,
            "fully acked segments deleted: {before} -> {after}"
        );
        drop(log);

        let log = MessageLog::open_with(dir.path(), 4096).expect("reopen");
        let mut back = Vec::new();
        log.recover(|_, q, seq, delivered, _| {
            back.push((q, seq, delivered > 0));
            true
        })
        .expect("recover");
        let want: Vec<(u64, u64, bool)> = (90..100).map(|s| (1, s, s == 95)).collect();
        assert_eq!(back, want);
    }
}
