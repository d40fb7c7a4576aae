//! A group's snapshot on disk: the state machine's encoded bytes, written durably to the
//! group's snapshot file when openraft asks for a snapshot. Every state machine of this
//! node (quorum queues, the cluster group) builds its snapshots through this.

use super::{NodeId, StorageError, TypeConfig};
use openraft::storage::{Snapshot, SnapshotMeta};
use openraft::{AnyError, BasicNode, RaftSnapshotBuilder, StorageIOError};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// A snapshot taken (the machine encoded under its lock), to be written when built.
pub struct SnapshotFile {
    pub bytes: Vec<u8>,
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotFile {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        write_durably(&self.path, &self.bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.bytes))),
        })
    }
}

/// Write a snapshot file so that a crash leaves the old one or the new one, whole.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use crate::store::fs::FileSystem;
    crate::store::fs::RealFs.write_durably(path, bytes)
}
