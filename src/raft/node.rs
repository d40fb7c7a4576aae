//! What every group of this node shares: the log, this process's identity (so a leader
//! knows which confirm tickets are its own), and the signal connections wait on for
//! quorum confirms.

use super::log::NodeLog;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct RaftNode {
    pub log: Arc<NodeLog>,
    /// Random per process: entries proposed by an earlier run carry another origin, and
    /// their tickets mean nothing now.
    pub boot: u64,
    /// Bumped whenever a group applies entries of this process (publisher confirms and
    /// tx.commit-ok wait on it).
    pub applied: tokio::sync::watch::Sender<u64>,
    /// Where group snapshots live.
    pub snapshot_dir: PathBuf,
}

impl RaftNode {
    /// Open `<data dir>/quorum`.
    pub fn open(data_dir: &Path, store: Option<&crate::store::Store>) -> std::io::Result<Self> {
        let dir = data_dir.join("quorum");
        let log = NodeLog::open(&dir, store)?;
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(RaftNode {
            log,
            boot: rand::random::<u64>() | 1,
            applied: tokio::sync::watch::channel(0).0,
            snapshot_dir,
        })
    }

    pub fn snapshot_path(&self, group: u64) -> PathBuf {
        self.snapshot_dir.join(format!("{group}.snap"))
    }

    /// Tell waiting connections that confirms may be due.
    pub fn note_applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }
}
