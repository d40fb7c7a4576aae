//! Start-up: read every segment found at open back, past any damage, and tell what was
//! lost. Each segment is scanned once; records go to the queues as they are found, damaged
//! stretches are collected, and once every sync mark is known each stretch is judged:
//! wholly after its segment's synced length it is a torn tail (a crash cut the last
//! round short; nothing there was confirmed), anywhere else it is damage (damage.rs).
//!
//! The marks lag the truth by one round (a mark says what was synced before the round that
//! writes it), so damage to the very last round before a crash is taken for a torn tail:
//! a few milliseconds of data, and only bit rot (not a crash) can damage synced bytes.

use super::damage::{self, Damage, DamageKind};
use super::fs::StoreFile;
use super::offsets;
use super::record::{self, Found, Layout};
use super::segments::{ack_path, dlv_path, io_err, seg_name, seg_path, Loc, MessageLog};
use super::StoreError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;

/// A damaged stretch as a scan reports it: offset, length, (queue id, seq) when the
/// record's header checked.
pub(super) type RawStretch = (u64, u64, Option<(u64, u64)>);

/// What one scan of a segment found besides its records.
pub(super) struct Scanned {
    pub layout: Layout,
    pub stretches: Vec<RawStretch>,
    /// Sync marks: (segment, synced length).
    pub marks: Vec<(u32, u64)>,
}

/// Scan a segment file: message records go to `record` (offset, queue id, seq, body), sync
/// marks and damaged stretches are returned. Shared by recovery and `warrenmq check`.
pub(super) fn scan_segment(
    file: &dyn StoreFile,
    size: u64,
    mut record: impl FnMut(u64, u64, u64, &[u8]),
) -> std::io::Result<Scanned> {
    let mut head = vec![0u8; (size as usize).min(record::FILE_HEADER)];
    file.read_exact_at(&mut head, 0)?;
    let mut out = Scanned {
        layout: record::layout(&head),
        stretches: Vec::new(),
        marks: Vec::new(),
    };
    match out.layout {
        Layout::DamagedHeader { salts } => {
            out.stretches.push((0, head.len() as u64, None));
            out.layout = salt_that_reads(file, size, salts);
        }
        // One copy of the header is enough to read the file, but a damaged copy is still
        // damage to report.
        Layout::Framed { .. } if head.len() == record::FILE_HEADER && head[..16] != head[16..] => {
            let bad = if record::header_copy_ok(&head[..16]) {
                16
            } else {
                0
            };
            out.stretches.push((bad, 16, None));
        }
        _ => {}
    }
    let mut found = |item: Found<'_>| match item {
        Found::Record {
            off,
            queue_id,
            seq,
            body,
        } => {
            if queue_id != record::CONTROL_QUEUE {
                record(off, queue_id, seq, body);
            } else if seq == record::SYNC_MARK {
                out.marks.extend(record::decode_marks(body));
            }
        }
        Found::Damaged { off, len, record } => out.stretches.push((off, len, record)),
    };
    match out.layout {
        Layout::Framed { salt } => record::scan(file, size, salt, &mut found)?,
        Layout::Legacy => record::scan_legacy(file, size, &mut found)?,
        Layout::DamagedHeader { .. } => found(Found::Damaged {
            off: head.len() as u64,
            len: size - head.len() as u64,
            record: None,
        }),
    }
    Ok(out)
}

/// A segment whose file header is damaged: the salt (of the two copies) under which more
/// records check.
fn salt_that_reads(file: &dyn StoreFile, size: u64, salts: [u32; 2]) -> Layout {
    let mut best = (0usize, Layout::DamagedHeader { salts });
    for salt in salts {
        let mut n = 0usize;
        let _ = record::scan(file, size, salt, |item| {
            if matches!(item, Found::Record { .. }) {
                n += 1;
            }
        });
        if n > best.0 {
            best = (n, Layout::Framed { salt });
        }
    }
    best.1
}

/// Keep the highest synced length each segment's marks claim.
pub(super) fn merge_marks(marks: &mut BTreeMap<u32, u64>, found: Vec<(u32, u64)>) {
    for (seg, len) in found {
        let e = marks.entry(seg).or_insert(0);
        *e = (*e).max(len);
    }
}

/// A damaged stretch at `off` of segment `seg` lies wholly after what the sync marks say
/// was synced: a torn tail.
pub(super) fn is_torn(off: u64, seg: u32, marks: &BTreeMap<u32, u64>) -> bool {
    off >= marks.get(&seg).copied().unwrap_or(0)
}

/// A damaged stretch found by the scan, judged once the marks are known.
struct Stretch {
    seg: NonZeroU32,
    off: u64,
    len: u64,
    record: Option<(u64, u64)>,
}

impl MessageLog {
    /// Read every live record of the segments found at open, oldest first, and pass
    /// (location, queue id, seq, times delivered, message record) to `f`; `f` returns false
    /// for a record nobody claims (its queue is gone), which is then acked.
    pub fn recover(
        &self,
        mut f: impl FnMut(Loc, u64, u64, u32, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let (ids, active): (Vec<NonZeroU32>, NonZeroU32) = {
            let st = self.state.lock();
            (st.segments.keys().copied().collect(), st.active)
        };
        let mut total = 0u64;
        let mut marks: BTreeMap<u32, u64> = BTreeMap::new();
        let mut stretches = Vec::new();
        let mut acked_by_seg: HashMap<NonZeroU32, HashSet<u32>> = HashMap::new();
        for id in ids.into_iter().filter(|id| *id != active) {
            let acked: HashSet<u32> = self.read_offsets(id, true)?.into_iter().collect();
            let mut delivered: HashMap<u32, u32> = HashMap::new();
            for off in self.read_offsets(id, false)? {
                *delivered.entry(off).or_insert(0) += 1;
            }
            let path = seg_path(&self.dir, id);
            let file = self
                .state
                .lock()
                .segments
                .get(&id)
                .map(|s| s.file.clone())
                .ok_or_else(|| io_err(&path, std::io::Error::other("segment vanished")))?;
            let size = file.size().map_err(|e| io_err(&path, e))?;
            let mut live = 0u64;
            let mut orphans = Vec::new();
            let scanned = scan_segment(&*file, size, |off, queue_id, seq, body| {
                let here = off as u32;
                if acked.contains(&here) {
                    return;
                }
                let loc = Loc { seg: id, off: here };
                let times = delivered.get(&here).copied().unwrap_or(0);
                if f(loc, queue_id, seq, times, body) {
                    live += 1;
                    total += 1;
                    if total.is_multiple_of(100_000) {
                        tracing::info!(recovered = total, "recovering persistent messages");
                    }
                } else {
                    orphans.push(loc);
                }
            })
            .map_err(|e| io_err(&path, e))?;
            merge_marks(&mut marks, scanned.marks);
            stretches.extend(
                scanned
                    .stretches
                    .into_iter()
                    .map(|(off, len, record)| Stretch {
                        seg: id,
                        off,
                        len,
                        record,
                    }),
            );
            if let Some(s) = self.state.lock().segments.get_mut(&id) {
                s.layout = scanned.layout;
            }
            let mut st = self.state.lock();
            if let Some(s) = st.segments.get_mut(&id) {
                s.live = live;
            }
            st.acks.extend(orphans);
            drop(st);
            acked_by_seg.insert(id, acked);
        }
        for s in stretches {
            self.judge(s, &marks, &acked_by_seg);
        }
        self.state.lock().recovered = true;
        Ok(total)
    }

    /// Tell a torn tail from damage, and report it.
    fn judge(
        &self,
        s: Stretch,
        marks: &BTreeMap<u32, u64>,
        acked: &HashMap<NonZeroU32, HashSet<u32>>,
    ) {
        let name = seg_name(s.seg);
        if is_torn(s.off, s.seg.get(), marks) {
            self.health.torn(&name, s.off, s.len);
            return;
        }
        let bytes = self.stretch_bytes(s.seg, s.off, s.len);
        let quarantine = damage::quarantine(&*self.fs, &self.dir, &name, &bytes, s.off);
        let left_already = acked
            .get(&s.seg)
            .is_some_and(|a| a.contains(&(s.off as u32)));
        let (records, queue_id) = match s.record {
            Some((q, _)) if q == record::CONTROL_QUEUE => (0, None),
            Some(_) if left_already => (0, None),
            Some((q, _)) => (1, Some(q)),
            None => (0, None),
        };
        self.health.damaged(Damage {
            kind: DamageKind::Records,
            file: name,
            offset: s.off,
            len: s.len,
            records,
            queue_id,
            quarantine,
        });
    }

    fn stretch_bytes(&self, seg: NonZeroU32, off: u64, len: u64) -> Vec<u8> {
        let file = self.state.lock().segments.get(&seg).map(|s| s.file.clone());
        let mut out = vec![0u8; len as usize];
        match file.map(|f| f.read_exact_at(&mut out, off)) {
            Some(Ok(())) => out,
            _ => Vec::new(),
        }
    }

    /// The offsets in a segment's ack (or delivery) file; damaged stretches are reported
    /// (they can only bring messages back) and quarantined.
    fn read_offsets(&self, id: NonZeroU32, ack: bool) -> Result<Vec<u32>, StoreError> {
        let path = if ack {
            ack_path(&self.dir, id)
        } else {
            dlv_path(&self.dir, id)
        };
        let bytes = match self.fs.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path, e)),
        };
        let parsed = offsets::parse(&bytes);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for &(off, len) in &parsed.damaged {
            // A tail is what a crash leaves in these unsynced files; only damage with good
            // batches after it is worth keeping a copy of.
            let quarantine = if off + len < bytes.len() as u64 {
                let stretch = bytes
                    .get(off as usize..(off + len) as usize)
                    .unwrap_or_default();
                damage::quarantine(&*self.fs, &self.dir, &name, stretch, off)
            } else {
                None
            };
            self.health.offsets_damaged(&name, off, len, quarantine);
        }
        if !parsed.damaged.is_empty() {
            // Rewrite the file clean, so later appends do not follow the damage and the
            // next start does not report it again.
            self.fs
                .write_durably(&path, &parsed.rewritten())
                .map_err(|e| io_err(&path, e))?;
        }
        Ok(parsed.offsets)
    }
}
