//! What recovery found damaged, and what the broker tells about it: an ERROR line per
//! damaged stretch (file, offset, length, records lost), counters for `/metrics`, the
//! storage health check that fails until an operator clears it, and lost-record counts per
//! queue. The damaged bytes are copied to `messages/quarantine/` before anything else can
//! happen to their segment; that directory is never cleaned up by the broker.
//!
//! A torn tail (bytes after the last sync of a segment: what a crash or power cut leaves)
//! is not damage: nothing there was confirmed. It is logged at WARN and counted apart.
//!
//! Clearing records the stretches cleared in `messages/damage.json`, so the same damage
//! found again at the next start (its segment still holds live records) does not fail the
//! health check again.

use super::fs::FileSystem;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Synced message data that no longer checks: records lost.
    Records,
    /// An ack or delivery file stretch: its offsets are lost, those messages come back.
    Offsets,
    /// A definition record in sled that does not decode.
    Definition,
    /// A quorum queue's Raft log entry or snapshot that does not check: that queue
    /// refuses work until the damage is dealt with.
    RaftLog,
}

/// One damaged stretch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Damage {
    pub kind: DamageKind,
    /// File name (inside the messages dir) or sled key.
    pub file: String,
    pub offset: u64,
    pub len: u64,
    /// Records known lost (a damaged body of a known header: 1; a stretch whose headers
    /// are damaged: 0, unknown).
    pub records: u64,
    /// The queue the lost record belonged to, when its header checked.
    pub queue_id: Option<u64>,
    /// Where the bytes were copied.
    #[serde(default)]
    pub quarantine: Option<String>,
}

impl Damage {
    fn same_place(&self, other: &Damage) -> bool {
        self.kind == other.kind && self.file == other.file && self.offset == other.offset
    }
}

#[derive(Default, Serialize, Deserialize)]
struct ClearedFile {
    cleared: Vec<Damage>,
}

#[derive(Default)]
struct Inner {
    /// Damage found since start that an operator has not cleared.
    open: Vec<Damage>,
    cleared: Vec<Damage>,
    lost_by_queue: HashMap<u64, u64>,
}

/// The storage health of a running store.
#[derive(Default)]
pub struct Health {
    inner: parking_lot::Mutex<Inner>,
    damaged_records: std::sync::atomic::AtomicU64,
    damaged_bytes: std::sync::atomic::AtomicU64,
    torn_bytes: std::sync::atomic::AtomicU64,
    offset_bytes: std::sync::atomic::AtomicU64,
    /// Definitions were found damaged at this start (stored messages of queues no
    /// definition names are then kept, not dropped).
    definitions_damaged: std::sync::atomic::AtomicBool,
}

/// Totals for metrics and the health check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthSummary {
    pub damaged_records: u64,
    pub damaged_bytes: u64,
    pub torn_bytes: u64,
    /// Bytes of ack and delivery files skipped (messages came back, none lost).
    pub offset_bytes: u64,
    pub open: Vec<Damage>,
}

fn cleared_path(dir: &Path) -> PathBuf {
    dir.join("damage.json")
}

impl Health {
    /// Load the stretches an operator cleared before.
    pub fn load(fs: &dyn FileSystem, dir: &Path) -> Health {
        let h = Health::default();
        if let Ok(bytes) = fs.read(&cleared_path(dir)) {
            match serde_json::from_slice::<ClearedFile>(&bytes) {
                Ok(c) => h.inner.lock().cleared = c.cleared,
                Err(e) => {
                    tracing::error!(error = %e, "the list of cleared storage damage does not decode; cleared damage will be reported again")
                }
            }
        }
        h
    }

    /// A torn tail found at recovery.
    pub fn torn(&self, file: &str, offset: u64, len: u64) {
        tracing::warn!(
            file,
            offset,
            bytes = len,
            "torn tail after the last sync of a segment ignored (written by the crash, never confirmed)"
        );
        self.torn_bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// A damaged stretch of an ack or delivery file. These files are not synced (a crash
    /// can tear them) and what they lose only brings messages back, so this warns and
    /// counts but does not fail the health check.
    pub fn offsets_damaged(&self, file: &str, offset: u64, len: u64, quarantine: Option<String>) {
        tracing::warn!(
            file,
            offset,
            bytes = len,
            quarantine = ?quarantine,
            "damaged ack/delivery entries skipped: the messages they named come back, redelivered"
        );
        self.offset_bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// Damage found: logged, counted, and open until cleared (unless cleared before).
    pub fn damaged(&self, d: Damage) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut inner = self.inner.lock();
        let known = inner.cleared.iter().any(|c| c.same_place(&d));
        match d.kind {
            DamageKind::Records => tracing::error!(
                file = %d.file, offset = d.offset, bytes = d.len, records_lost = d.records,
                queue_id = ?d.queue_id, quarantine = ?d.quarantine, cleared_before = known,
                "damaged message data skipped: the records there are lost"
            ),
            DamageKind::Offsets => {
                drop(inner);
                self.offsets_damaged(&d.file, d.offset, d.len, d.quarantine);
                return;
            }
            DamageKind::Definition => tracing::error!(
                what = %d.file, cleared_before = known,
                "damaged definitions found"
            ),
            DamageKind::RaftLog => tracing::error!(
                file = %d.file, offset = d.offset, bytes = d.len, records_lost = d.records,
                queue_id = ?d.queue_id, cleared_before = known,
                "damaged quorum queue log data: that queue refuses work"
            ),
        }
        if d.kind == DamageKind::Definition {
            self.definitions_damaged
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.damaged_records.fetch_add(d.records, Relaxed);
        self.damaged_bytes.fetch_add(d.len, Relaxed);
        if let Some(q) = d.queue_id {
            *inner.lost_by_queue.entry(q).or_insert(0) += d.records;
        }
        if !known && !inner.open.iter().any(|o| o.same_place(&d)) {
            inner.open.push(d);
        }
    }

    pub fn summary(&self) -> HealthSummary {
        use std::sync::atomic::Ordering::Relaxed;
        HealthSummary {
            damaged_records: self.damaged_records.load(Relaxed),
            damaged_bytes: self.damaged_bytes.load(Relaxed),
            torn_bytes: self.torn_bytes.load(Relaxed),
            offset_bytes: self.offset_bytes.load(Relaxed),
            open: self.inner.lock().open.clone(),
        }
    }

    pub fn definitions_damaged(&self) -> bool {
        self.definitions_damaged
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records of `queue_id` lost to damage since start.
    pub fn lost_records(&self, queue_id: u64) -> u64 {
        self.inner
            .lock()
            .lost_by_queue
            .get(&queue_id)
            .copied()
            .unwrap_or(0)
    }

    /// An operator acknowledged the damage: the health check passes again, also after a
    /// restart that finds the same stretches. Returns how many were cleared.
    pub fn clear(&self, fs: &dyn FileSystem, dir: &Path) -> std::io::Result<usize> {
        let mut inner = self.inner.lock();
        let n = inner.open.len();
        let open = std::mem::take(&mut inner.open);
        inner.cleared.extend(open);
        let bytes = serde_json::to_vec_pretty(&ClearedFile {
            cleared: inner.cleared.clone(),
        })
        .map_err(std::io::Error::other)?;
        fs.write_durably(&cleared_path(dir), &bytes)?;
        Ok(n)
    }
}

/// Copy a damaged stretch of `file` into the quarantine dir; the name it got.
pub fn quarantine(
    fs: &dyn FileSystem,
    dir: &Path,
    file: &str,
    bytes: &[u8],
    offset: u64,
) -> Option<String> {
    let qdir = dir.join("quarantine");
    let name = format!("{file}.{offset}.bin");
    let path = qdir.join(&name);
    let res = fs
        .create_dir_all(&qdir)
        .and_then(|()| match fs.read(&path) {
            Ok(_) => Ok(()),
            Err(_) => fs.write_durably(&path, bytes),
        });
    match res {
        Ok(()) => Some(format!("quarantine/{name}")),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "could not keep a copy of damaged bytes");
            None
        }
    }
}
