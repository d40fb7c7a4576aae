//! openraft's view of a quorum queue's state machine: applying committed rounds (their
//! messages become ready, their confirms due), and snapshots of the machine.

use super::machine::{Body, Machine};
use super::Quorum;
use crate::broker::message::QueuedMessage;
use crate::raft::snapshot::{write_durably, SnapshotFile};
use crate::raft::{Entry, LogId, StorageError, StoredMembership, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, StorageIOError};
use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

pub struct StateMachine(pub Arc<Quorum>);

impl StateMachine {
    /// Pin the segments that got live rounds, unpin those that lost their last.
    fn update_pins(&self, machine: &mut Machine) {
        let q = &self.0;
        for (seg, pin) in machine.pin_changes.drain(..) {
            if pin {
                q.node.log.pin(q.group, seg);
            } else {
                q.node.log.unpin(q.group, seg);
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotFile;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.0.machine.lock();
        Ok((m.applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let q = self.0.clone();
        let mut out = Vec::new();
        let mut ready = Vec::new();
        let mut ticket = 0;
        let mut applied_here = 0;
        let mut last = None;
        {
            let mut m = q.machine.lock();
            for e in entries {
                out.push(());
                let loc = q.log.lock().locs.get(&e.log_id.index).map(|(_, l)| *l);
                if let Some((origin, t, n)) = m.apply(&e, loc, &mut ready) {
                    if origin == q.node.boot {
                        ticket = ticket.max(t);
                        applied_here += n;
                    }
                }
                last = Some(e.log_id.index);
            }
            self.update_pins(&mut m);
        }
        // The log's copy of what was applied leaves memory: the machine knows where it is.
        if let Some(last) = last {
            q.log.lock().applied_upto(last);
        }
        if applied_here > 0 {
            let bytes: u64 = ready.iter().map(|m| m.msg.body.len() as u64).sum();
            q.in_flight.fetch_sub(
                applied_here.min(q.in_flight.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            let have = q.in_flight_bytes.load(Ordering::Relaxed);
            q.in_flight_bytes
                .fetch_sub(bytes.min(have), Ordering::Relaxed);
        }
        if !ready.is_empty() {
            if let Some(queue) = q.queue.get().and_then(Weak::upgrade) {
                queue.enqueue_committed(ready);
            }
        }
        if ticket > 0 {
            q.committed.fetch_max(ticket, Ordering::AcqRel);
            q.node.note_applied();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotFile {
        let m = self.0.machine.lock();
        SnapshotFile {
            bytes: m.encode(),
            meta: m.meta(),
            path: self.0.node.snapshot_path(self.0.group),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// A snapshot from the leader. Its rounds must carry their messages: places in another
    /// node's log mean nothing here (sending such snapshots comes with the cluster).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let refused = |why: &str| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(why)).into()
        };
        let Some(mut machine) = Machine::decode(&bytes) else {
            return Err(refused("snapshot does not check"));
        };
        if machine
            .rounds
            .values()
            .any(|r| matches!(r.body, Body::Log(_)))
        {
            return Err(refused("snapshot refers to another node's log"));
        }
        write_durably(&self.0.node.snapshot_path(self.0.group), &bytes).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        machine.applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        let mut ready: Vec<QueuedMessage> = Vec::new();
        for r in machine.rounds.values() {
            if let Body::Inline(msgs) = &r.body {
                ready.extend(msgs.values().map(|qm| machine.restore(qm.clone()).0));
            }
        }
        {
            let mut old = self.0.machine.lock();
            for seg in old.segments().collect::<Vec<_>>() {
                self.0.node.log.unpin(self.0.group, seg);
            }
            *old = machine;
        }
        *self.0.page_cache.lock() = None;
        if let Some(queue) = self.0.queue.get().and_then(Weak::upgrade) {
            queue.replace_ready(ready);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.0.node.snapshot_path(self.0.group);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let Some(machine) = Machine::decode(&bytes) else {
            return Err(StorageIOError::read_snapshot(
                None,
                AnyError::error("snapshot does not check"),
            )
            .into());
        };
        Ok(Some(Snapshot {
            meta: machine.meta(),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::protocol::BasicProperties;
    use crate::raft::log::EntryLoc;
    use crate::raft::QueueCommand;
    use openraft::EntryPayload;

    fn qm(body: u8) -> QueuedMessage {
        QueuedMessage {
            seq: 0,
            msg: Message::new(
                "".into(),
                "q".into(),
                BasicProperties::default(),
                bytes::Bytes::from(vec![body; 10]),
            ),
            redelivered: false,
            deadline: None,
            delivery_count: 0,
            stored: None,
        }
    }

    fn entry(index: u64, cmd: QueueCommand) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        use super::super::machine::message_id;
        let mut m = Machine::default();
        let mut ready = Vec::new();
        let publish = |n: u8| QueueCommand {
            enqueue: (0..n).map(qm).collect(),
            ..Default::default()
        };
        let at = |seg| Some(EntryLoc { seg, off: 32 });
        m.apply(&entry(3, publish(70)), at(1), &mut ready);
        m.apply(&entry(4, publish(2)), None, &mut ready);
        m.apply(&entry(5, publish(1)), at(2), &mut ready);
        assert_eq!(ready.len(), 73);
        assert_eq!(m.pin_changes, vec![(1, true), (2, true)]);
        m.pin_changes.clear();
        let (a, b, c) = (message_id(3, 65), message_id(4, 1), message_id(5, 0));
        let settle = QueueCommand {
            settle: (0..70)
                .filter(|p| *p != 65)
                .map(|p| message_id(3, p))
                .collect(),
            returned: vec![a, a, b],
            delivered: vec![b],
            dead: vec![(c, 3)],
            ..Default::default()
        };
        m.apply(&entry(6, settle), None, &mut ready);
        assert_eq!(m.len(), 4);
        m.apply(
            &entry(
                7,
                QueueCommand {
                    settle: vec![c],
                    ..Default::default()
                },
            ),
            None,
            &mut ready,
        );
        assert_eq!(m.pin_changes, vec![(2, false)]);
        let raw = m.encode();
        let back = Machine::decode(&raw).expect("decodes");
        assert_eq!(back.applied, m.applied);
        assert_eq!(back.len(), 3);
        assert!(back.is_live(a) && back.is_live(b) && !back.is_live(c));
        assert!(!back.is_live(message_id(3, 64)));
        assert_eq!(back.segments().collect::<Vec<_>>(), vec![1]);
        let mut rec = qm(1);
        rec.seq = a;
        let (restored, dead) = back.restore(rec);
        assert_eq!(
            (restored.delivery_count, restored.redelivered, dead),
            (2, true, None)
        );
        match &back.rounds[&4].body {
            Body::Inline(msgs) => assert_eq!(msgs.len(), 2),
            Body::Log(_) => panic!("round 4 had no record"),
        }
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x20;
            assert!(Machine::decode(&bad).is_none(), "flip at {i} accepted");
        }
    }
}
