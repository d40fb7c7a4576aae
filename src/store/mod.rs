//! Durable state in sled: definitions (exchanges, queues, queue and exchange-to-exchange
//! bindings) written when declared and recovered at start. The data dir carries a format
//! version so a newer layout is refused.

pub mod check;
pub mod damage;
mod delayed;
pub mod fs;
pub mod messages;
mod offsets;
#[cfg(test)]
mod powercut;
pub(crate) mod record;
mod recovery;
pub mod segments;
mod snapshot;

use crate::broker::exchange::{ExchangeSpec, ExchangeType};
use crate::broker::queue::QueueSpec;
use crate::protocol::FieldTable;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

mod meta;

/// Version of the on-disk layout this build reads and writes.
/// 2: persistent messages in the segment log (`messages/`). A version-1 dir (messages in
/// sled) is upgraded at start: its records move into the log during recovery.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the data store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("data store I/O error: {0}")]
    Io(#[from] sled::Error),
    #[error("the data dir has format version {found}, this build reads {FORMAT_VERSION}; refusing to start")]
    Version { found: String },
    #[error("corrupt record {key} in the data store: {why}")]
    Corrupt { key: String, why: String },
    #[error("cannot open the quorum queue log: {0}")]
    Quorum(std::io::Error),
}

/// Decode one definition record of `kind` into `out`; why not, if it does not decode.
pub(crate) fn decode_definition(kind: &str, v: &[u8], out: &mut Recovered) -> Result<(), String> {
    let e = |e: serde_json::Error| e.to_string();
    match kind {
        "x" => {
            let r: ExchangeRecord = serde_json::from_slice(v).map_err(e)?;
            let kind = ExchangeType::declared(&r.kind, &r.arguments).map_err(|e| e.to_string())?;
            out.exchanges.push(ExchangeSpec {
                name: r.name,
                kind,
                durable: true,
                auto_delete: r.auto_delete,
                internal: r.internal,
                arguments: r.arguments,
            });
        }
        "q" => {
            let r: QueueRecord = serde_json::from_slice(v).map_err(e)?;
            out.queues.push(QueueSpec {
                name: r.name,
                durable: true,
                exclusive_owner: None,
                store_id: (r.id != 0).then_some(r.id),
                auto_delete: r.auto_delete,
                arguments: r.arguments,
            });
        }
        "b" => out.bindings.push(serde_json::from_slice(v).map_err(e)?),
        _ => out
            .exchange_bindings
            .push(serde_json::from_slice(v).map_err(e)?),
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct ExchangeRecord {
    name: String,
    kind: String,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
}

#[derive(Serialize, Deserialize)]
struct QueueRecord {
    name: String,
    /// Key prefix of the queue's message records.
    #[serde(default)]
    id: u64,
    auto_delete: bool,
    arguments: FieldTable,
}

#[derive(Serialize, Deserialize)]
pub struct BindingRecord {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// An exchange-to-exchange binding (stored when both exchanges are durable).
#[derive(Serialize, Deserialize)]
pub struct ExchangeBindingRecord {
    pub source: String,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Everything recovered from disk for one vhost.
#[derive(Default)]
pub struct Recovered {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingRecord>,
    pub exchange_bindings: Vec<ExchangeBindingRecord>,
}

pub struct Store {
    db: sled::Db,
    defs: sled::Tree,
    /// Persistent message records (see messages.rs).
    msgs: sled::Tree,
    /// Count of message writes; a confirm waits until `flushed` reaches its write.
    write_epoch: std::sync::atomic::AtomicU64,
    flushed: tokio::sync::watch::Sender<u64>,
    flush_wake: std::sync::Arc<tokio::sync::Notify>,
    /// Persistent messages (segments.rs).
    log: segments::MessageLog,
    /// Definitions changed since the last sled flush.
    defs_dirty: std::sync::atomic::AtomicBool,
    failed_rounds: std::sync::atomic::AtomicU64,
    data_dir: std::path::PathBuf,
    /// Generation of the definitions and metadata (snapshot.rs): bumped with every change,
    /// under `defs_lock`, which the snapshot takes to read a consistent state.
    defs_gen: std::sync::atomic::AtomicU64,
    snap_gen: std::sync::atomic::AtomicU64,
    defs_lock: parking_lot::Mutex<()>,
    /// Highest queue id the recovered definitions use: new ids go above it (a sled
    /// restored from the snapshot starts its id counter again).
    queue_id_floor: std::sync::atomic::AtomicU64,
    /// The Raft log and shared state of quorum queue groups (opened after the store, as
    /// its damage reports go to the store's health).
    quorum: std::sync::OnceLock<std::sync::Arc<crate::raft::node::RaftNode>>,
    /// Dropped last, after `Drop::drop` has written the final round and snapshot and every
    /// other field (sled included) is gone: [`Store::closed`] receivers see that. The Arc's
    /// strong count reaches zero before `drop` runs, so it cannot tell a stop is complete.
    closed: tokio::sync::watch::Sender<()>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // A clean stop keeps what was accepted but not yet written, then marks all of it
        // synced, so the next start treats any damage found in it as damage.
        let stopped = self.sync_round().and_then(|_| {
            self.log.seal();
            self.sync_round()
        });
        if let Err(e) = stopped {
            tracing::error!(error = %e, "could not write pending messages at shutdown");
        }
        self.flush();
        if let Err(e) = self.write_definitions_snapshot() {
            tracing::error!(error = %e, "could not write the definitions snapshot at shutdown");
        }
        if let Some(q) = self.quorum.get() {
            q.log.close();
        }
        // Let the flusher task notice the store is gone and end.
        self.flush_wake.notify_one();
    }
}

fn key(parts: &[&str]) -> Vec<u8> {
    // NUL cannot appear in names that came through shortstrs meaningfully; it separates parts.
    parts.join("\u{0}").into_bytes()
}

impl Store {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let log = segments::MessageLog::open(&dir.join("messages"))?;
        let db = snapshot::open_checked(dir, cache_bytes, &log.health)?;
        match db.get("format_version")? {
            None => {
                db.insert("format_version", FORMAT_VERSION.to_string().as_bytes())?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(v) if v.as_ref() == b"1" => {
                // Older builds must not open this dir any more: they would not see the log.
                db.insert("format_version", FORMAT_VERSION.to_string().as_bytes())?;
                tracing::info!("data dir format 1 upgraded to {FORMAT_VERSION}");
            }
            Some(v) => {
                return Err(StoreError::Version {
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        let generation = snapshot::generation_of(&db);
        let defs = db.open_tree("definitions")?;
        let msgs = db.open_tree("messages")?;
        Ok(Store {
            db,
            defs,
            msgs,
            write_epoch: std::sync::atomic::AtomicU64::new(0),
            flushed: tokio::sync::watch::channel(0).0,
            flush_wake: std::sync::Arc::new(tokio::sync::Notify::new()),
            log,
            defs_dirty: std::sync::atomic::AtomicBool::new(false),
            failed_rounds: std::sync::atomic::AtomicU64::new(0),
            data_dir: dir.to_path_buf(),
            defs_gen: std::sync::atomic::AtomicU64::new(generation),
            snap_gen: std::sync::atomic::AtomicU64::new(u64::MAX),
            defs_lock: parking_lot::Mutex::new(()),
            queue_id_floor: std::sync::atomic::AtomicU64::new(0),
            quorum: std::sync::OnceLock::new(),
            closed: tokio::sync::watch::channel(()).0,
        })
    }

    /// Open the quorum queue log (`<data dir>/quorum`).
    pub fn open_quorum(&self) -> Result<(), StoreError> {
        let node = crate::raft::node::RaftNode::open(&self.data_dir, Some(self))
            .map_err(StoreError::Quorum)?;
        let _ = self.quorum.set(std::sync::Arc::new(node));
        Ok(())
    }

    /// Resolves (its `changed()` errs) once this store is completely dropped.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.closed.subscribe()
    }

    pub fn quorum(&self) -> Option<&std::sync::Arc<crate::raft::node::RaftNode>> {
        self.quorum.get()
    }

    /// A definition or metadata record changed (the caller holds `defs_lock`): the
    /// generation moves on, in sled with the change.
    fn bump_generation(&self) {
        let g = self
            .defs_gen
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        if let Err(e) = self.db.insert(snapshot::GENERATION_KEY, &g.to_be_bytes()) {
            tracing::error!(error = %e, "could not store the definitions generation");
        }
    }

    /// Write `definitions.snapshot` if anything changed since the last one: read under
    /// the lock, made durable in sled, then written (the snapshot never claims more than
    /// sled has on disk).
    pub fn write_definitions_snapshot(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.defs_gen.load(Ordering::Acquire) == self.snap_gen.load(Ordering::Acquire) {
            return Ok(());
        }
        let snap = {
            let _g = self.defs_lock.lock();
            snapshot::take(&self.db)?
        };
        self.db.flush()?;
        let p = snapshot::path(&self.data_dir);
        fs::FileSystem::write_durably(&fs::RealFs, &p, &snapshot::encode(&snap))
            .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        self.snap_gen.store(snap.generation, Ordering::Release);
        Ok(())
    }

    fn put<T: Serialize>(&self, k: Vec<u8>, v: &T) {
        match serde_json::to_vec(v) {
            Ok(bytes) => {
                let _g = self.defs_lock.lock();
                if let Err(e) = self.defs.insert(k, bytes) {
                    tracing::error!(error = %e, "could not store a definition");
                }
                self.bump_generation();
                drop(_g);
                self.definition_written();
            }
            Err(e) => tracing::error!(error = %e, "could not encode a definition"),
        }
    }

    fn del(&self, k: Vec<u8>) {
        let _g = self.defs_lock.lock();
        if let Err(e) = self.defs.remove(k) {
            tracing::error!(error = %e, "could not remove a definition");
        }
        self.bump_generation();
        drop(_g);
        self.definition_written();
    }

    /// A definition changed: it goes to disk with the next group-commit flush, and counts
    /// as a write so that any later confirm implies it is durable too.
    fn definition_written(&self) {
        self.defs_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        self.write_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.flush_wake.notify_one();
    }

    pub fn save_exchange(&self, vhost: &str, spec: &ExchangeSpec) {
        let rec = ExchangeRecord {
            name: spec.name.clone(),
            kind: spec.kind.as_str().to_string(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: spec.arguments.clone(),
        };
        self.put(key(&["x", vhost, &spec.name]), &rec);
    }

    pub fn remove_exchange(&self, vhost: &str, name: &str) {
        self.del(key(&["x", vhost, name]));
    }

    pub fn save_queue(&self, vhost: &str, spec: &QueueSpec) {
        let rec = QueueRecord {
            name: spec.name.clone(),
            id: spec.store_id.unwrap_or(0),
            auto_delete: spec.auto_delete,
            arguments: spec.arguments.clone(),
        };
        self.put(key(&["q", vhost, &spec.name]), &rec);
    }

    pub fn remove_queue(&self, vhost: &str, name: &str) {
        self.del(key(&["q", vhost, name]));
    }

    fn binding_key(
        vhost: &str,
        exchange: &str,
        queue: &str,
        rk: &str,
        args: &FieldTable,
    ) -> Vec<u8> {
        let args = serde_json::to_string(args).unwrap_or_default();
        key(&["b", vhost, exchange, queue, rk, &args])
    }

    pub fn save_binding(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        rk: &str,
        args: &FieldTable,
    ) {
        let rec = BindingRecord {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            routing_key: rk.to_string(),
            arguments: args.clone(),
        };
        self.put(Self::binding_key(vhost, exchange, queue, rk, args), &rec);
    }

    pub fn remove_binding(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        rk: &str,
        args: &FieldTable,
    ) {
        self.del(Self::binding_key(vhost, exchange, queue, rk, args));
    }

    fn exchange_binding_key(
        vhost: &str,
        source: &str,
        destination: &str,
        rk: &str,
        args: &FieldTable,
    ) -> Vec<u8> {
        let args = serde_json::to_string(args).unwrap_or_default();
        key(&["e", vhost, source, destination, rk, &args])
    }

    pub fn save_exchange_binding(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        rk: &str,
        args: &FieldTable,
    ) {
        let rec = ExchangeBindingRecord {
            source: source.to_string(),
            destination: destination.to_string(),
            routing_key: rk.to_string(),
            arguments: args.clone(),
        };
        let k = Self::exchange_binding_key(vhost, source, destination, rk, args);
        self.put(k, &rec);
    }

    pub fn remove_exchange_binding(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        rk: &str,
        args: &FieldTable,
    ) {
        self.del(Self::exchange_binding_key(
            vhost,
            source,
            destination,
            rk,
            args,
        ));
    }

    /// Read every definition stored for `vhost`.
    pub fn recover(&self, vhost: &str) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        for kind in ["x", "q", "b", "e"] {
            let mut prefix = key(&[kind, vhost]);
            prefix.push(0);
            for item in self.defs.scan_prefix(&prefix) {
                let (k, v) = item?;
                let decoded = decode_definition(kind, &v, &mut out);
                if let Some(id) = out.queues.last().and_then(|q| q.store_id) {
                    self.queue_id_floor
                        .fetch_max(id, std::sync::atomic::Ordering::AcqRel);
                }
                if let Err(why) = decoded {
                    // One damaged definition costs only itself: the rest recover, and the
                    // damage is reported as for message data.
                    self.log.health.damaged(damage::Damage {
                        kind: damage::DamageKind::Definition,
                        file: format!(
                            "sled definitions/{}: {why}; skipped, not recovered",
                            String::from_utf8_lossy(&k).replace('\u{0}', "/")
                        ),
                        offset: 0,
                        len: v.len() as u64,
                        records: 0,
                        queue_id: None,
                        quarantine: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// What recovery found damaged, and the torn tails it ignored.
    pub fn storage_health(&self) -> damage::HealthSummary {
        self.log.health.summary()
    }

    /// Records of a durable queue lost to damage found at start.
    pub fn lost_records(&self, queue_id: u64) -> u64 {
        self.log.health.lost_records(queue_id)
    }

    /// Damage found outside the message log (a quorum queue's Raft log or snapshot):
    /// reported with the rest (ERROR line, metrics, the storage health check).
    pub fn report_damage(&self, d: damage::Damage) {
        self.log.health.damaged(d);
    }

    /// An operator acknowledged the damage found (the storage health check passes again).
    pub fn clear_storage_damage(&self) -> std::io::Result<usize> {
        self.log.health.clear(&*self.log.fs, &self.log.dir)
    }

    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "flushing the data store failed");
        }
    }
}
