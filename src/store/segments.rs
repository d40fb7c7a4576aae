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
//! Layout under `<data dir>/messages/`: `<id>.seg` holds records (record.rs has the
//! format), `<id>.ack` the offsets of the records that left and `<id>.dlv` one entry per
//! unacked delivery (offsets.rs), so only delivered messages come back flagged redelivered,
//! with their delivery count for x-delivery-limit. Each round that writes also appends a
//! sync mark: how far each segment is known synced, which recovery (recovery.rs) uses to
//! tell a torn tail from damage. All file access goes through `fs::FileSystem`.

use super::damage::Health;
use super::fs::{FileSystem, RealFs, StoreFile};
use super::offsets;
use super::record::{self, Layout};
use super::StoreError;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment size after which the log starts a new segment.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where a stored message is: segment id and byte offset of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub seg: NonZeroU32,
    pub off: u32,
}

pub(super) struct Segment {
    pub(super) file: Arc<dyn StoreFile>,
    /// Records not yet acked (counted in memory; rebuilt at start-up).
    pub(super) live: u64,
    /// How its records are framed (settled by recovery for the segments found at open).
    pub(super) layout: Layout,
}

pub(super) struct LogState {
    pub(super) active: NonZeroU32,
    /// Appended records not yet written to the active segment's file.
    buf: Vec<u8>,
    /// File offset of `buf[0]` in the active segment.
    buf_start: u64,
    pub(super) segments: BTreeMap<NonZeroU32, Segment>,
    /// Files written since their last fdatasync, with the length written.
    unsynced: Vec<(NonZeroU32, Arc<dyn StoreFile>, u64)>,
    /// A file was created since the directory was last synced.
    dir_dirty: bool,
    /// How far each segment is known synced, and what the last sync mark said.
    synced: BTreeMap<NonZeroU32, u64>,
    marked: BTreeMap<NonZeroU32, u64>,
    /// Acks not yet appended to ack files.
    pub(super) acks: Vec<Loc>,
    /// First deliveries not yet appended to delivery files.
    delivered: Vec<Loc>,
    /// Live counts of the segments found at open are known only after `recover`; until
    /// then none of them may be deleted.
    pub(super) recovered: bool,
}

/// What one flusher round must do outside the lock.
pub(super) struct Round {
    sync: Vec<(NonZeroU32, Arc<dyn StoreFile>, u64)>,
    sync_dir: bool,
    acks: Vec<Loc>,
    delivered: Vec<Loc>,
    dead: Vec<(NonZeroU32, Layout)>,
}

pub struct MessageLog {
    pub(super) dir: PathBuf,
    pub(super) fs: Arc<dyn FileSystem>,
    /// Size after which a new segment starts (`SEGMENT_BYTES`; smaller in tests).
    segment_bytes: u64,
    pub(super) state: parking_lot::Mutex<LogState>,
    /// What recovery found damaged (damage.rs).
    pub health: Health,
    /// Fault injection (see `Store::inject_faults`): appends / rounds fail as on a full disk.
    pub(super) fail_appends: std::sync::atomic::AtomicBool,
    pub(super) fail_rounds: std::sync::atomic::AtomicBool,
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected disk fault")
}

pub(super) fn seg_name(id: NonZeroU32) -> String {
    format!("{:08}.seg", id.get())
}

pub(super) fn seg_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(seg_name(id))
}

pub(super) fn ack_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(format!("{:08}.ack", id.get()))
}

pub(super) fn dlv_path(dir: &Path, id: NonZeroU32) -> PathBuf {
    dir.join(format!("{:08}.dlv", id.get()))
}

pub(super) fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        source: sled::Error::Io(e),
    }
}

/// The segment ids present in `dir`.
pub(super) fn segment_ids(fs: &dyn FileSystem, dir: &Path) -> std::io::Result<Vec<NonZeroU32>> {
    let mut ids: Vec<NonZeroU32> = fs
        .list(dir)?
        .iter()
        .filter_map(|n| {
            n.strip_suffix(".seg")
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(NonZeroU32::new)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Create a new segment with its file header written (synced with the next round).
fn new_segment(fs: &dyn FileSystem, dir: &Path, id: NonZeroU32) -> std::io::Result<Segment> {
    let salt = rand::random::<u32>();
    let file = fs.open(&seg_path(dir, id), true)?;
    file.write_all_at(&record::file_header(salt), 0)?;
    Ok(Segment {
        file,
        live: 0,
        layout: Layout::Framed { salt },
    })
}

impl MessageLog {
    /// Open the log directory: existing segments are listed (their records come back
    /// through `recover`) and a fresh active segment is started after them.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_in(Arc::new(RealFs), dir, SEGMENT_BYTES)
    }

    pub fn open_in(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        fs.create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut segments = BTreeMap::new();
        for id in segment_ids(&*fs, dir).map_err(|e| io_err(dir, e))? {
            let path = seg_path(dir, id);
            let file = fs.open(&path, false).map_err(|e| io_err(&path, e))?;
            segments.insert(
                id,
                Segment {
                    file,
                    live: 0,
                    layout: Layout::Legacy,
                },
            );
        }
        let next = segments.keys().next_back().map_or(1, |id| id.get() + 1);
        let active = NonZeroU32::new(next).ok_or_else(|| StoreError::Corrupt {
            key: dir.display().to_string(),
            why: "segment ids exhausted".into(),
        })?;
        let path = seg_path(dir, active);
        let seg = new_segment(&*fs, dir, active).map_err(|e| io_err(&path, e))?;
        let unsynced = vec![(active, seg.file.clone(), record::FILE_HEADER as u64)];
        segments.insert(active, seg);
        let health = Health::load(&*fs, dir);
        Ok(MessageLog {
            dir: dir.to_path_buf(),
            fs,
            segment_bytes,
            state: parking_lot::Mutex::new(LogState {
                active,
                buf: Vec::with_capacity(1 << 20),
                buf_start: record::FILE_HEADER as u64,
                segments,
                unsynced,
                dir_dirty: true,
                synced: BTreeMap::new(),
                marked: BTreeMap::new(),
                acks: Vec::new(),
                delivered: Vec::new(),
                recovered: false,
            }),
            health,
            fail_appends: Default::default(),
            fail_rounds: Default::default(),
        })
    }

    /// Read a stored record back (a paged-out message at delivery time).
    pub fn read(&self, loc: Loc) -> std::io::Result<Vec<u8>> {
        let (file, layout) = {
            let st = self.state.lock();
            if loc.seg == st.active && loc.off as u64 >= st.buf_start {
                let at = (loc.off as u64 - st.buf_start) as usize;
                return record::body_in(&st.buf, at)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("record outside the buffer"));
            }
            match st.segments.get(&loc.seg) {
                Some(s) => (s.file.clone(), s.layout),
                None => return Err(std::io::Error::other("segment already deleted")),
            }
        };
        match layout {
            Layout::Framed { salt } => record::read_at(&*file, loc.off as u64, salt),
            Layout::Legacy => record::read_legacy_at(&*file, loc.off as u64),
            Layout::DamagedHeader { .. } => Err(std::io::Error::other("segment header damaged")),
        }
    }

    /// Start a round: take the buffered appends (written
    /// here, under the lock, so readers always find a record in the buffer or the file),
    /// the files to sync, the acks to write and the segments that can go.
    pub(super) fn begin_round(&self, st: &mut LogState) -> std::io::Result<Round> {
        if self.fail_rounds.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected());
        }
        if !st.buf.is_empty() {
            st.append_mark();
            st.write_buf()?;
        }
        let active = st.active;
        let recovered = st.recovered;
        let dead: Vec<(NonZeroU32, Layout)> = st
            .segments
            .iter()
            .filter(|(id, s)| recovered && **id != active && s.live == 0)
            .map(|(id, s)| (*id, s.layout))
            .collect();
        for (id, _) in &dead {
            st.segments.remove(id);
            st.synced.remove(id);
            st.marked.remove(id);
        }
        Ok(Round {
            sync: std::mem::take(&mut st.unsynced),
            sync_dir: std::mem::take(&mut st.dir_dirty),
            acks: std::mem::take(&mut st.acks),
            delivered: std::mem::take(&mut st.delivered),
            dead,
        })
    }

    /// A clean stop: one more mark, so that everything written counts as synced at the
    /// next start (the caller runs the round that writes and syncs it).
    pub(super) fn seal(&self) {
        let mut st = self.state.lock();
        st.append_mark();
    }

    /// The slow part of a round, outside the lock: append acks, fdatasync what was
    /// written, delete dead segments.
    pub(super) fn finish_round_or_requeue(&self, round: Round) -> std::io::Result<()> {
        match self.finish_round(&round) {
            Ok(()) => {
                let mut st = self.state.lock();
                for (id, _, len) in &round.sync {
                    if st.segments.contains_key(id) {
                        let e = st.synced.entry(*id).or_insert(0);
                        *e = (*e).max(*len);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.retry_round(round);
                Err(e)
            }
        }
    }

    fn finish_round(&self, round: &Round) -> std::io::Result<()> {
        let dead: Vec<NonZeroU32> = round.dead.iter().map(|(id, _)| *id).collect();
        let legacy = |id: NonZeroU32| {
            let st = self.state.lock();
            st.segments
                .get(&id)
                .is_some_and(|s| s.layout == Layout::Legacy)
        };
        append_offsets(&*self.fs, &self.dir, &round.acks, &dead, ack_path, legacy)?;
        append_offsets(
            &*self.fs,
            &self.dir,
            &round.delivered,
            &dead,
            dlv_path,
            legacy,
        )?;
        if round.sync_dir {
            self.fs.sync_dir(&self.dir)?;
        }
        let mut seen: Vec<*const ()> = Vec::new();
        for (_, f, _) in &round.sync {
            let p = Arc::as_ptr(f) as *const ();
            if !seen.contains(&p) {
                seen.push(p);
                f.sync_data()?;
            }
        }
        for &id in &dead {
            for path in [
                seg_path(&self.dir, id),
                ack_path(&self.dir, id),
                dlv_path(&self.dir, id),
            ] {
                if let Err(e) = self.fs.remove(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a finished segment");
                    }
                }
            }
        }
        if !dead.is_empty() {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Put a round's work back after it failed, to be retried.
    pub(super) fn retry_round(&self, round: Round) {
        let mut st = self.state.lock();
        st.unsynced.extend(round.sync);
        st.dir_dirty |= round.sync_dir;
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
        if st.buf_start + st.buf.len() as u64 >= self.segment_bytes {
            st.rotate(&*self.fs, &self.dir)?;
        }
        st.append(queue_id, seq, write)
    }
}

impl LogState {
    fn active_salt(&self) -> u32 {
        match self.segments.get(&self.active).map(|s| s.layout) {
            Some(Layout::Framed { salt }) => salt,
            _ => 0,
        }
    }

    /// Append a record; `write` encodes the message record into the buffer.
    fn append(
        &mut self,
        queue_id: u64,
        seq: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> std::io::Result<Loc> {
        let off = self.buf_start + self.buf.len() as u64;
        let salt = self.active_salt();
        record::put_record(&mut self.buf, salt, queue_id, seq, write);
        if let Some(s) = self.segments.get_mut(&self.active) {
            s.live += 1;
        }
        Ok(Loc {
            seg: self.active,
            off: off as u32,
        })
    }

    /// Append a sync mark for the segments whose synced length moved since the last one.
    fn append_mark(&mut self) {
        let changed: Vec<(u32, u64)> = self
            .synced
            .iter()
            .filter(|(id, len)| self.marked.get(id) != Some(len))
            .map(|(id, len)| (id.get(), *len))
            .collect();
        if changed.is_empty() {
            return;
        }
        let salt = self.active_salt();
        record::put_record(
            &mut self.buf,
            salt,
            record::CONTROL_QUEUE,
            record::SYNC_MARK,
            |b| record::encode_marks(&changed, b),
        );
        for (id, len) in changed {
            if let Some(id) = NonZeroU32::new(id) {
                self.marked.insert(id, len);
            }
        }
    }

    /// Write the buffer to the active segment's file (synced by the round).
    fn write_buf(&mut self) -> std::io::Result<()> {
        let active = self.active;
        let file = self
            .segments
            .get(&active)
            .map(|s| s.file.clone())
            .ok_or_else(|| std::io::Error::other("active segment missing"))?;
        file.write_all_at(&self.buf, self.buf_start)?;
        self.buf_start += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced.push((active, file, self.buf_start));
        Ok(())
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
    fn rotate(&mut self, fs: &dyn FileSystem, dir: &Path) -> std::io::Result<()> {
        self.write_buf()?;
        let next = self
            .active
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("segment ids exhausted"))?;
        let seg = new_segment(fs, dir, next)?;
        self.unsynced
            .push((next, seg.file.clone(), record::FILE_HEADER as u64));
        self.segments.insert(next, seg);
        self.dir_dirty = true;
        self.active = next;
        self.buf_start = record::FILE_HEADER as u64;
        Ok(())
    }
}

/// Append offsets, grouped by segment, to each segment's file named by `path`.
fn append_offsets(
    fs: &dyn FileSystem,
    dir: &Path,
    locs: &[Loc],
    dead: &[NonZeroU32],
    path: fn(&Path, NonZeroU32) -> PathBuf,
    legacy: impl Fn(NonZeroU32) -> bool,
) -> std::io::Result<()> {
    let mut by_seg: BTreeMap<NonZeroU32, Vec<u32>> = BTreeMap::new();
    for loc in locs.iter().filter(|l| !dead.contains(&l.seg)) {
        by_seg.entry(loc.seg).or_default().push(loc.off);
    }
    for (id, offs) in by_seg {
        if legacy(id) {
            fs.append(&path(dir, id), &[], &offsets::encode_legacy(&offs))?;
        } else {
            fs.append(
                &path(dir, id),
                &offsets::FILE_MAGIC,
                &offsets::encode_batch(&offs),
            )?;
        }
    }
    Ok(())
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
        let log = MessageLog::open_in(Arc::new(RealFs), dir.path(), 4096).expect("open");
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

        let log = MessageLog::open_in(Arc::new(RealFs), dir.path(), 4096).expect("reopen");
        let mut back = Vec::new();
        log.recover(|_, q, seq, delivered, _| {
            back.push((q, seq, delivered > 0));
            true
        })
        .expect("recover");
        let want: Vec<(u64, u64, bool)> = (90..100).map(|s| (1, s, s == 95)).collect();
        assert_eq!(back, want);
    }

    /// A data dir written by the build before framed records: its segments (bare
    /// `[len][crc][queue][seq][message]` records) and ack files (bare u32 offsets) are read,
    /// acks of them are appended in their own format, and new records go to a framed segment.
    #[test]
    fn segments_and_ack_files_of_the_earlier_format_are_read_and_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seg = Vec::new();
        let mut offs = Vec::new();
        for seq in 0..5u64 {
            offs.push(seg.len() as u32);
            let mut payload = 9u64.to_be_bytes().to_vec();
            payload.extend_from_slice(&seq.to_be_bytes());
            payload.extend_from_slice(&[seq as u8; 40]);
            seg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            seg.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            seg.extend_from_slice(&payload);
        }
        std::fs::write(dir.path().join("00000001.seg"), &seg).expect("segment");
        std::fs::write(dir.path().join("00000001.ack"), offs[1].to_le_bytes()).expect("acks");

        let recover = |log: &MessageLog| {
            let mut back = Vec::new();
            log.recover(|loc, q, seq, _, body| {
                back.push((loc, q, seq, body[0]));
                true
            })
            .expect("recover");
            back
        };
        let log = MessageLog::open_in(Arc::new(RealFs), dir.path(), 4096).expect("open");
        let back = recover(&log);
        let seqs: Vec<u64> = back.iter().map(|b| b.2).collect();
        assert_eq!(seqs, vec![0, 2, 3, 4]);
        assert!(back.iter().all(|b| b.1 == 9 && b.3 == b.2 as u8));
        assert!(log.health.summary().open.is_empty(), "no damage reported");
        // Read back by location, acked in the old format, and a new record framed.
        assert_eq!(log.read(back[1].0).expect("read")[0], 2);
        log.state.lock().remove(back[1].0);
        append(&log, 9, 100);
        round(&log);
        drop(log);

        let log = MessageLog::open_in(Arc::new(RealFs), dir.path(), 4096).expect("reopen");
        let seqs: Vec<u64> = recover(&log).iter().map(|b| b.2).collect();
        assert_eq!(seqs, vec![0, 3, 4, 100]);
        assert!(log.health.summary().open.is_empty());
    }
}
