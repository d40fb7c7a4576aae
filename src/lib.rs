//! WarrenMQ: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
//!
//! Module map:
//! - `config`     — defaults, TOML file, `WARRENMQ_*` env and flags; every limit in one place
//! - `server`     — listener, accept loop with back-off, connection limit, shutdown
//! - `tls`        — rustls configs from the PEM files, the amqps handshake
//! - `protocol`   — wire codec: frame reading with limits, hand-encoded hot frames, table checks
//! - `connection` — per-connection task: handshake, read loop, heartbeats, the socket writer
//! - `channel`    — channel state machine and content assembly; one file per AMQP class
//! - `broker`     — vhosts, exchanges (one matcher per type, delayed-message holding), queues
//!   (one engine; their types behind `queue::kind`: classic, quorum on `raft`), deliveries,
//!   messages, policies, direct reply-to (`reply_to`), resource alarms (memory
//!   watermark, disk free limit), and the client connection as queues see it (`client`,
//!   with its `outbound` buffer): `broker` does not depend on `connection`
//! - `store`      — durable definitions and delayed messages in sled (checked against a
//!   definitions snapshot), persistent messages in an append-only segment log (`segments`,
//!   `record`, `recovery`), damage reporting, `warrenmq check`, format version
//! - `raft`       — openraft groups (one per quorum queue) over one shared, group-committed
//!   log whose records the queues read their paged-out messages back from; their RPCs go
//!   between nodes over `cluster`
//! - `cluster`    — node names and ids, the shared secret and its handshake, the inter-node
//!   transport (one authenticated, pipelined connection per peer) and its frames
//! - `auth`       — users, password hashes, tags, permissions and their checks; PLAIN/AMQPLAIN
//! - `ctl`        — `warrenmq ctl`, the admin client of the management API
//! - `http`       — management HTTP API, Prometheus metrics, rates, the dashboard
//! - `error`      — reply codes and the error type every handler returns

pub mod auth;
pub mod broker;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod error;
pub mod http;
pub mod protocol;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;
