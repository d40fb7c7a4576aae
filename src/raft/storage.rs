//! openraft's log storage for one group, over the node's shared log: reads come from the
//! group's entries in memory (those after the last snapshot), writes go to the shared
//! writer, which reports durability back through openraft's `LogFlushed` callback.

use super::log::{Done, GroupLog, NodeLog};
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
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
        let state = self.state.lock();
        Ok(state.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
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
                state.entries.split_off(&first.log_id.index);
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
        self.state.lock().entries.split_off(&log_id.index);
        self.log.truncate(self.group, log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut state = self.state.lock();
            state.entries = state.entries.split_off(&(log_id.index + 1));
            state.purged = Some(log_id);
        }
        self.log.purge(self.group, &log_id);
        Ok(())
    }
}
