//! The node's Raft log: the entries, votes and commit points of every group this node is a
//! member of, in shared segment files under `<data dir>/quorum/`.
//!
//! Groups append from their own tasks; one writer thread takes everything queued, writes it
//! to the current segment and fsyncs once for all of it, then tells each group its write
//! is durable (openraft's `LogFlushed`). So a node with a thousand busy quorum queues
//! does one fsync per round, never one per message or per group.
//!
//! Segments use the message store's framing (`store::record`): a doubled file header with
//! a salt, then CRC-checked records `[queue id = group][seq][body]`. `seq` is the entry's
//! log index, or a control kind (top bit set): vote, committed, purged-up-to, truncate.
//! Appending an entry at index i replaces every entry of that group from i on, as Raft
//! requires, so a scan in file order rebuilds each group's log exactly.
//!
//! Entries stay in memory only until they are written and applied; after that openraft
//! reads them back from their records. A quorum queue's state machine refers to its
//! messages' entries by place (`EntryLoc`) rather than holding their bodies, so a segment
//! is deleted once every group with entries in it has purged them (after a snapshot) or is
//! gone, and no group's state machine still holds messages from it (pins). When a new segment starts, each group's vote, commit point and
//! purge point are written again at its head, so old segments never hold the only copy.
//!
//! Recovery reads every segment. A record whose CRC fails, or an index missing inside a
//! group's log, marks that group damaged: it is reported (ERROR line, metric, storage
//! health check) and its queue refuses work; every other group is unaffected. Bytes after
//! the last good record of the newest segment are a torn tail (never acknowledged).

use super::{codec, Entry, LogId, TypeConfig, Vote};
use crate::store::damage::{Damage, DamageKind};
use crate::store::fs::{FileSystem, RealFs, StoreFile};
use crate::store::record::{self, Found, Layout};
use crate::store::Store;
use openraft::storage::LogFlushed;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CTRL: u64 = 1 << 63;
const VOTE: u64 = CTRL | 1;
const COMMITTED: u64 = CTRL | 2;
const PURGED: u64 = CTRL | 3;
const TRUNCATE: u64 = CTRL | 4;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Where an entry's record is: its segment and the record's offset in it. A quorum queue
/// reads its messages back from there (paging, recovery) instead of keeping them in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLoc {
    pub seg: u32,
    pub off: u64,
}

/// One group's log as it stands: what openraft reads back, and what recovery found.
#[derive(Default)]
pub struct GroupLog {
    /// Entries after the purge point not yet applied (or not yet written), by index.
    /// Applied entries are read back from their records when openraft asks for them.
    pub entries: BTreeMap<u64, Entry>,
    /// Where the written entries after the purge point are, with their ids.
    pub locs: BTreeMap<u64, (LogId, EntryLoc)>,
    /// Highest index the state machine applied: entries up to it leave memory once written.
    pub applied: u64,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    /// Why this group's log cannot be trusted (damage found at start).
    pub damaged: Option<String>,
}

impl GroupLog {
    pub fn last_log_id(&self) -> Option<LogId> {
        let in_memory = self.entries.values().next_back().map(|e| e.log_id);
        let written = self.locs.values().next_back().map(|(id, _)| *id);
        match (in_memory, written) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b).or(self.purged),
        }
    }

    /// Entries from `index` on are gone (replaced or truncated).
    pub fn cut(&mut self, index: u64) {
        self.entries.split_off(&index);
        self.locs.split_off(&index);
    }

    /// Entries up to `index` are purged.
    pub fn purge_upto(&mut self, index: u64) {
        self.entries = self.entries.split_off(&(index + 1));
        self.locs = self.locs.split_off(&(index + 1));
    }

    /// The state machine applied up to `index`: written entries up to it leave memory.
    pub fn applied_upto(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.evict();
    }

    fn evict(&mut self) {
        while let Some((&i, _)) = self.entries.first_key_value() {
            if i > self.applied || !self.locs.contains_key(&i) {
                break;
            }
            self.entries.pop_first();
        }
    }

    /// Entries after the purge point (in memory or only in their records).
    pub fn len(&self) -> usize {
        self.locs.len()
            + self
                .entries
                .keys()
                .filter(|i| !self.locs.contains_key(i))
                .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the writer is told once its round is durable.
pub enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Notify(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

#[derive(Default)]
struct WriteQueue {
    /// (group, seq, body) in append order.
    records: Vec<(u64, u64, Vec<u8>)>,
    done: Vec<Done>,
    stop: bool,
}

struct Segment {
    no: u32,
    file: Arc<dyn StoreFile>,
    salt: u32,
    size: u64,
}

#[derive(Default)]
struct Files {
    /// Per segment: the highest entry index each group has there.
    live: BTreeMap<u32, HashMap<u64, u64>>,
    /// Per segment: the groups whose state machines still hold messages of its records
    /// (after those entries were purged). Such a segment stays.
    pins: BTreeMap<u32, std::collections::HashSet<u64>>,
    /// Open files to read records back from, with their salts.
    handles: BTreeMap<u32, (Arc<dyn StoreFile>, u32)>,
    current: u32,
    /// Pins are known only once every group's state machine is open: until then no
    /// segment is deleted.
    recovered: bool,
}

pub struct NodeLog {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    groups: Mutex<HashMap<u64, Arc<Mutex<GroupLog>>>>,
    files: Mutex<Files>,
    queue: Mutex<WriteQueue>,
    wake: Condvar,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Fsync rounds done (metrics, tests).
    pub rounds: std::sync::atomic::AtomicU64,
    /// A segment is closed past this size.
    segment_bytes: u64,
}

fn segment_name(no: u32) -> String {
    format!("{no:08}.rlog")
}

impl NodeLog {
    /// Open (or create) the log in `dir`, reading back every group's state. Damage is
    /// reported to `store`'s health.
    pub fn open(dir: &Path, store: Option<&Store>) -> std::io::Result<Arc<NodeLog>> {
        Self::open_with(dir, store, SEGMENT_BYTES)
    }

    /// `open` with another segment size (tests).
    pub fn open_with(
        dir: &Path,
        store: Option<&Store>,
        segment_bytes: u64,
    ) -> std::io::Result<Arc<NodeLog>> {
        let fs: Arc<dyn FileSystem> = Arc::new(RealFs);
        fs.create_dir_all(dir)?;
        let mut nos: Vec<u32> = fs
            .list(dir)?
            .iter()
            .filter_map(|n| n.strip_suffix(".rlog")?.parse().ok())
            .collect();
        nos.sort_unstable();
        let mut groups: HashMap<u64, GroupLog> = HashMap::new();
        let mut files = Files::default();
        let last = nos.last().copied();
        for &no in &nos {
            let path = dir.join(segment_name(no));
            let file = fs.open(&path, false)?;
            let size = file.size()?;
            let mut head = vec![0u8; record::FILE_HEADER.min(size as usize)];
            file.read_exact_at(&mut head, 0)?;
            let salt = match record::layout(&head) {
                Layout::Framed { salt } => salt,
                Layout::DamagedHeader { salts } => salts[0],
                Layout::Legacy => {
                    if size > 0 {
                        report(store, &path, 0, size, None, "segment header unreadable");
                    }
                    continue;
                }
            };
            files.handles.insert(no, (file.clone(), salt));
            let live = files.live.entry(no).or_default();
            let mut bad: Vec<(u64, u64, Option<u64>)> = Vec::new();
            record::scan(&*file, size, salt, |found| match found {
                Found::Record {
                    queue_id,
                    seq,
                    body,
                    off,
                } => {
                    let g = groups.entry(queue_id).or_default();
                    if !apply_record(g, seq, body, EntryLoc { seg: no, off }) {
                        bad.push((off, body.len() as u64, Some(queue_id)));
                        return;
                    }
                    if seq & CTRL == 0 {
                        let max = live.entry(queue_id).or_insert(0);
                        *max = (*max).max(seq);
                    }
                }
                Found::Damaged { off, len, record } => bad.push((off, len, record.map(|r| r.0))),
            })?;
            for (off, len, group) in bad {
                let tail = Some(no) == last && off + len == size && group.is_none();
                if tail {
                    tracing::warn!(file = %path.display(), offset = off, bytes = len, "torn tail of the quorum log ignored (never acknowledged)");
                    continue;
                }
                report(store, &path, off, len, group, "damaged record");
                if let Some(g) = group {
                    groups.entry(g).or_default().damaged =
                        Some(format!("damaged log record in {}", segment_name(no)));
                }
            }
        }
        // A hole in a group's indexes: records whose headers were damaged.
        for (id, g) in groups.iter_mut() {
            let mut expect = g.purged.map(|p| p.index + 1);
            for &i in g.locs.keys() {
                if expect.is_some_and(|e| e != i) && g.damaged.is_none() {
                    g.damaged = Some(format!("log entries missing before index {i}"));
                    tracing::error!(group = id, index = i, "quorum log entries missing");
                }
                expect = Some(i + 1);
            }
        }
        files.current = last.map_or(1, |n| n + 1);
        let log = Arc::new(NodeLog {
            dir: dir.to_path_buf(),
            fs,
            groups: Mutex::new(
                groups
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
                    .collect(),
            ),
            files: Mutex::new(files),
            queue: Mutex::new(WriteQueue::default()),
            wake: Condvar::new(),
            writer: Mutex::new(None),
            rounds: Default::default(),
            segment_bytes,
        });
        let segment = log.start_segment()?;
        let w = log.clone();
        let handle = std::thread::Builder::new()
            .name("quorum-log".into())
            .spawn(move || w.write_loop(segment))?;
        *log.writer.lock() = Some(handle);
        Ok(log)
    }

    /// The log of one group (empty for a new group).
    pub fn group(&self, id: u64) -> Arc<Mutex<GroupLog>> {
        self.groups.lock().entry(id).or_default().clone()
    }

    /// Groups no queue claimed after recovery (their queue was deleted): forget them so
    /// their segments can go.
    pub fn retain_groups(&self, keep: impl Fn(u64) -> bool) {
        {
            let mut files = self.files.lock();
            files.recovered = true;
            self.delete_dead_segments(&mut files);
        }
        let gone: Vec<u64> = self
            .groups
            .lock()
            .keys()
            .copied()
            .filter(|g| !keep(*g))
            .collect();
        for g in gone {
            self.drop_group(g);
        }
    }

    /// A group's queue was deleted: its entries no longer keep any segment.
    pub fn drop_group(&self, id: u64) {
        self.groups.lock().remove(&id);
        let mut files = self.files.lock();
        for live in files.live.values_mut() {
            live.remove(&id);
        }
        for pins in files.pins.values_mut() {
            pins.remove(&id);
        }
        self.delete_dead_segments(&mut files);
    }

    fn push(&self, group: u64, seq: u64, body: Vec<u8>, done: Option<Done>) {
        let mut q = self.queue.lock();
        q.records.push((group, seq, body));
        if let Some(d) = done {
            q.done.push(d);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Append entries; `done` is told once they are durable.
    pub fn append(&self, group: u64, entries: &[Entry], done: Done) {
        let mut q = self.queue.lock();
        for e in entries {
            let mut body = Vec::new();
            codec::encode_entry(e, &mut body);
            q.records.push((group, e.log_id.index, body));
        }
        q.done.push(done);
        drop(q);
        self.wake.notify_one();
    }

    /// Write the vote and wait until it is durable.
    pub async fn save_vote(&self, group: u64, v: &Vote) -> std::io::Result<()> {
        let mut body = Vec::new();
        codec::put_vote(&mut body, v);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.push(group, VOTE, body, Some(Done::Notify(tx)));
        rx.await
            .unwrap_or_else(|_| Err(std::io::Error::other("quorum log writer stopped")))
    }

    /// Record the commit point (durable with the next round; openraft re-derives it if lost).
    pub fn save_committed(&self, group: u64, c: Option<&LogId>) {
        let mut body = Vec::new();
        codec::put_opt_log_id(&mut body, c);
        self.push(group, COMMITTED, body, None);
    }

    /// Entries from `index` on are gone (a follower's conflicting suffix).
    pub fn truncate(&self, group: u64, index: u64) {
        self.push(group, TRUNCATE, index.to_be_bytes().to_vec(), None);
    }

    /// Entries up to `upto` are covered by a snapshot: gone from the log, and from the
    /// segments once no other group needs them.
    pub fn purge(&self, group: u64, upto: &LogId) {
        let mut body = Vec::new();
        codec::put_log_id(&mut body, upto);
        self.push(group, PURGED, body, None);
        let mut files = self.files.lock();
        let current = files.current;
        for (no, live) in files.live.iter_mut() {
            if *no != current && live.get(&group).is_some_and(|max| *max <= upto.index) {
                live.remove(&group);
            }
        }
        self.delete_dead_segments(&mut files);
    }

    /// A group's state machine holds messages whose bodies are in segment `seg`.
    pub fn pin(&self, group: u64, seg: u32) {
        self.files.lock().pins.entry(seg).or_default().insert(group);
    }

    /// It no longer does: the segment may go once nothing else needs it.
    pub fn unpin(&self, group: u64, seg: u32) {
        let mut files = self.files.lock();
        if let Some(p) = files.pins.get_mut(&seg) {
            p.remove(&group);
            if p.is_empty() {
                files.pins.remove(&seg);
                self.delete_dead_segments(&mut files);
            }
        }
    }

    /// Read an entry back from its record (CRCs checked).
    pub fn read_entry(&self, loc: EntryLoc) -> std::io::Result<Entry> {
        let (file, salt) = self
            .files
            .lock()
            .handles
            .get(&loc.seg)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("segment {} is gone", loc.seg)))?;
        let body = record::read_at(&*file, loc.off, salt)?;
        codec::decode_entry(&body)
            .ok_or_else(|| std::io::Error::other("quorum log entry does not decode"))
    }

    fn delete_dead_segments(&self, files: &mut Files) {
        if !files.recovered {
            return;
        }
        let current = files.current;
        let dead: Vec<u32> = files
            .live
            .iter()
            .filter(|(no, live)| **no != current && live.is_empty() && !files.pins.contains_key(no))
            .map(|(no, _)| *no)
            .collect();
        for no in dead {
            files.live.remove(&no);
            files.handles.remove(&no);
            let path = self.dir.join(segment_name(no));
            if let Err(e) = self.fs.remove(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not delete a quorum log segment");
            }
        }
        let _ = self.fs.sync_dir(&self.dir);
    }

    fn new_segment(&self) -> std::io::Result<Segment> {
        let no = {
            let mut files = self.files.lock();
            let no = files.current;
            files.live.entry(no).or_default();
            no
        };
        let salt: u32 = rand::random();
        let file = self.fs.open(&self.dir.join(segment_name(no)), true)?;
        file.write_all_at(&record::file_header(salt), 0)?;
        file.sync_data()?;
        self.fs.sync_dir(&self.dir)?;
        self.files.lock().handles.insert(no, (file.clone(), salt));
        Ok(Segment {
            no,
            file,
            salt,
            size: record::FILE_HEADER as u64,
        })
    }

    /// Start the next segment.
    fn roll(&self, old: &Segment) -> std::io::Result<Segment> {
        old.file.sync_data()?;
        self.files.lock().current = old.no + 1;
        self.start_segment()
    }

    /// A new current segment with every group's state (vote, purge and commit points)
    /// written at its head, so that older segments can go once their entries are purged.
    fn start_segment(&self) -> std::io::Result<Segment> {
        let mut seg = self.new_segment()?;
        let groups: Vec<(u64, Arc<Mutex<GroupLog>>)> = self
            .groups
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut buf = Vec::new();
        for (id, g) in groups {
            let g = g.lock();
            if let Some(v) = &g.vote {
                record::put_record(&mut buf, seg.salt, id, VOTE, |b| codec::put_vote(b, v));
            }
            if let Some(p) = &g.purged {
                record::put_record(&mut buf, seg.salt, id, PURGED, |b| codec::put_log_id(b, p));
            }
            if g.committed.is_some() {
                record::put_record(&mut buf, seg.salt, id, COMMITTED, |b| {
                    codec::put_opt_log_id(b, g.committed.as_ref())
                });
            }
        }
        seg.file.write_all_at(&buf, seg.size)?;
        seg.file.sync_data()?;
        seg.size += buf.len() as u64;
        let mut files = self.files.lock();
        self.delete_dead_segments(&mut files);
        Ok(seg)
    }

    fn write_loop(self: Arc<Self>, mut seg: Segment) {
        let mut buf = Vec::new();
        loop {
            let (records, done, stop) = {
                let mut q = self.queue.lock();
                while q.records.is_empty() && q.done.is_empty() && !q.stop {
                    self.wake.wait(&mut q);
                }
                (
                    std::mem::take(&mut q.records),
                    std::mem::take(&mut q.done),
                    q.stop,
                )
            };
            if records.is_empty() && done.is_empty() && stop {
                break;
            }
            if seg.size > self.segment_bytes {
                match self.roll(&seg) {
                    Ok(s) => seg = s,
                    Err(e) => {
                        tracing::error!(error = %e, "could not start a new quorum log segment")
                    }
                }
            }
            buf.clear();
            let mut highest: HashMap<u64, u64> = HashMap::new();
            let mut written: Vec<(u64, u64, u64)> = Vec::new();
            for (group, seq, body) in &records {
                if seq & CTRL == 0 {
                    written.push((*group, *seq, seg.size + buf.len() as u64));
                }
                record::put_record(&mut buf, seg.salt, *group, *seq, |b| {
                    b.extend_from_slice(body)
                });
                if seq & CTRL == 0 {
                    let h = highest.entry(*group).or_insert(0);
                    *h = (*h).max(*seq);
                }
            }
            let result = seg
                .file
                .write_all_at(&buf, seg.size)
                .and_then(|_| seg.file.sync_data());
            match &result {
                Ok(()) => {
                    seg.size += buf.len() as u64;
                    let mut files = self.files.lock();
                    let live = files.live.entry(seg.no).or_default();
                    for (g, h) in highest {
                        let max = live.entry(g).or_insert(0);
                        *max = (*max).max(h);
                    }
                    drop(files);
                    self.note_written(seg.no, &written);
                }
                Err(e) => tracing::error!(error = %e, "writing the quorum log failed"),
            }
            self.rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for d in done {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                match d {
                    Done::Flushed(cb) => cb.log_io_completed(r),
                    Done::Notify(tx) => {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }

    /// Record where the entries just written are, and let applied ones leave memory.
    fn note_written(&self, seg: u32, written: &[(u64, u64, u64)]) {
        let groups = self.groups.lock();
        let mut last: Option<(u64, &Arc<Mutex<GroupLog>>)> = None;
        let mut touched = Vec::new();
        for &(group, index, off) in written {
            let g = match last {
                Some((id, g)) if id == group => g,
                _ => match groups.get(&group) {
                    Some(g) => {
                        last = Some((group, g));
                        g
                    }
                    None => continue,
                },
            };
            let mut g = g.lock();
            // The entry may have been replaced or purged since it was queued.
            if let Some(log_id) = g.entries.get(&index).map(|e| e.log_id) {
                g.locs.insert(index, (log_id, EntryLoc { seg, off }));
                touched.push(group);
            }
        }
        touched.dedup();
        for group in touched {
            if let Some(g) = groups.get(&group) {
                g.lock().evict();
            }
        }
    }

    /// Write what is queued and stop the writer (clean stop; the log can be opened again).
    pub fn close(&self) {
        self.queue.lock().stop = true;
        self.wake.notify_one();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for NodeLog {
    fn drop(&mut self) {
        self.queue.lock().stop = true;
        self.wake.notify_one();
    }
}

/// Apply one recovered record to a group's state. False if its body does not decode.
fn apply_record(g: &mut GroupLog, seq: u64, body: &[u8], loc: EntryLoc) -> bool {
    let mut b = body;
    match seq {
        VOTE => match codec::get_vote(&mut b) {
            Some(v) => g.vote = Some(v),
            None => return false,
        },
        COMMITTED => match codec::get_opt_log_id(&mut b) {
            Some(c) => g.committed = c,
            None => return false,
        },
        PURGED => match codec::get_log_id(&mut b) {
            Some(p) => {
                g.purge_upto(p.index);
                if g.purged.is_none_or(|old| old.index < p.index) {
                    g.purged = Some(p);
                }
            }
            None => return false,
        },
        TRUNCATE => match body.try_into().map(u64::from_be_bytes) {
            Ok(i) => g.cut(i),
            Err(_) => return false,
        },
        s if s & CTRL != 0 => return false,
        // Purged: covered by the snapshot (its CRC was checked by the scan).
        index if g.purged.is_some_and(|p| index <= p.index) => {}
        // Only the id is read now: the entry stays in its record until it is replayed or
        // asked for, so recovery does not hold the log in memory.
        index => match codec::get_log_id(&mut b) {
            Some(id) if id.index == index => {
                g.cut(index);
                g.locs.insert(index, (id, loc));
            }
            _ => return false,
        },
    }
    true
}

fn report(store: Option<&Store>, path: &Path, off: u64, len: u64, group: Option<u64>, what: &str) {
    let file = path
        .file_name()
        .map(|n| format!("quorum/{}", n.to_string_lossy()))
        .unwrap_or_default();
    match store {
        Some(s) => s.report_damage(Damage {
            kind: DamageKind::RaftLog,
            file,
            offset: off,
            len,
            records: group.is_some() as u64,
            queue_id: group,
            quarantine: None,
        }),
        None => {
            tracing::error!(file, offset = off, bytes = len, group = ?group, "{what} in the quorum log")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::QueueCommand;
    use openraft::EntryPayload;

    fn entry(index: u64, body: u8) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(QueueCommand {
                origin: body as u64,
                ..Default::default()
            }),
        }
    }

    async fn append(log: &NodeLog, group: u64, e: Entry) {
        let g = log.group(group);
        {
            let mut g = g.lock();
            g.cut(e.log_id.index);
            g.entries.insert(e.log_id.index, e.clone());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.append(group, &[e], Done::Notify(tx));
        rx.await.unwrap().unwrap();
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".rlog"))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn applied_entries_leave_memory_and_pinned_segments_outlive_their_purge() {
        let dir = tempfile::tempdir().unwrap();
        let log = NodeLog::open_with(dir.path(), None, 1).unwrap();
        log.retain_groups(|_| true);
        // Every round rolls to a new segment (1 byte segments): 1 has the head, 2.. entries.
        for i in 1..=3 {
            append(&log, 7, entry(i, i as u8)).await;
        }
        let g = log.group(7);
        g.lock().applied_upto(2);
        assert_eq!(
            g.lock().entries.keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(g.lock().len(), 3);
        let (_, loc) = g.lock().locs[&1];
        let back = log.read_entry(loc).unwrap();
        assert!(matches!(back.payload, EntryPayload::Normal(c) if c.origin == 1));
        let first = loc.seg;
        log.pin(7, first);
        log.purge(7, &LogId::new(openraft::CommittedLeaderId::new(1, 1), 3));
        g.lock().purge_upto(3);
        let name = segment_name(first);
        assert!(
            segments(dir.path()).contains(&name),
            "a pinned segment stays"
        );
        assert!(log.read_entry(loc).is_ok());
        log.unpin(7, first);
        assert!(
            !segments(dir.path()).contains(&name),
            "unpinned and purged: deleted"
        );
        log.close();
    }

    #[tokio::test]
    async fn recovery_keeps_entries_on_disk_and_deletes_nothing_before_the_pins_are_known() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = NodeLog::open_with(dir.path(), None, 1).unwrap();
            log.retain_groups(|_| true);
            for i in 1..=3 {
                append(&log, 7, entry(i, i as u8)).await;
            }
            log.purge(7, &LogId::new(openraft::CommittedLeaderId::new(1, 1), 2));
            log.close();
        }
        let before = segments(dir.path());
        let log = NodeLog::open_with(dir.path(), None, 1).unwrap();
        let g = log.group(7);
        assert!(
            g.lock().entries.is_empty(),
            "recovery reads no entry into memory"
        );
        assert_eq!(g.lock().locs.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(g.lock().last_log_id().map(|l| l.index), Some(3));
        let kept = segments(dir.path());
        assert!(
            before.iter().all(|s| kept.contains(s)),
            "{before:?} -> {kept:?}"
        );
        log.retain_groups(|_| true);
        assert!(
            segments(dir.path()).len() < kept.len(),
            "purged segments go once recovered"
        );
        let (_, loc) = g.lock().locs[&3];
        assert!(log.read_entry(loc).is_ok());
        log.close();
    }
}
