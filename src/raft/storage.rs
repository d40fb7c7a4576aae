//! openraft's log storage for one group, over the node's shared log: reads come from the
//! group's entries still in memory (not yet applied) or from their records on disk, writes
//! go to the shared writer, which reports durability back through openraft's `LogFlushed`
//! callback.

use super::log::{Done, EntryLoc, GroupLog, NodeLog};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

#[derive(Clone)]
pub struct LogStore {
    pub group: u64,
    pub log: Arc<NodeLog>,
    pub state: Arc<Mutex<GroupLog>>,
}

impl LogStore {
    pub fn new(log: Arc<NodeLog>, group: u64) -> Self {
        LogStore {
            state: log.group(group),
            group,
            log,
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Entries still in memory, and where the others are (read outside the lock).
        let wanted: Vec<Stored> = {
            let state = self.state.lock();
            let mut wanted: BTreeMap<u64, Stored> = state
                .locs
                .range(range.clone())
                .map(|(i, (_, loc))| (*i, Stored::At(*loc)))
                .collect();
            for (i, e) in state.entries.range(range) {
                wanted.insert(*i, Stored::Here(Box::new(e.clone())));
            }
            wanted.into_values().collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for w in wanted {
            out.push(match w {
                Stored::Here(e) => *e,
                Stored::At(loc) => self
                    .log
                    .read_entry(loc)
                    .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?,
            });
        }
        Ok(out)
    }
}

/// An entry openraft asked for: in memory, or only in its record.
enum Stored {
    Here(Box<Entry>),
    At(EntryLoc),
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.state.lock();
        Ok(LogState {
            last_purged_log_id: state.purged,
            last_log_id: state.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.log
            .save_vote(self.group, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.state.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.log.save_committed(self.group, committed.as_ref());
        self.state.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut state = self.state.lock();
            if let Some(first) = entries.first() {
                state.cut(first.log_id.index);
            }
            for e in &entries {
                state.entries.insert(e.log_id.index, e.clone());
            }
        }
        self.log
            .append(self.group, &entries, Done::Flushed(callback));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.state.lock().cut(log_id.index);
        self.log.truncate(self.group, log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut state = self.state.lock();
            state.purge_upto(log_id.index);
            state.purged = Some(log_id);
        }
        self.log.purge(self.group, &log_id);
        Ok(())
    }
}
