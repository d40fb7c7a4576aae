//! A client connection as the broker sees it: where deliveries and replies are written
//! (its outbound buffer), what it negotiated and said it supports, its channels and the
//! counters the management API shows. The connection task (connection/) fills it in and
//! drives the socket; queues and channels only ever hold this, so the broker does not depend
//! on the connection module.

use super::delivery::ChannelShared;
use super::outbound::Outbound;
use crate::protocol::{encode, short, AMQPClass, FieldTable};
use amq_protocol::protocol::basic;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// What the client said it supports in connection.start-ok capabilities.
#[derive(Debug, Default)]
pub struct ClientCaps {
    pub consumer_cancel_notify: AtomicBool,
    pub connection_blocked: AtomicBool,
    pub authentication_failure_close: AtomicBool,
}

/// Connection state shared with queues and the rest of the broker.
pub struct ConnShared {
    pub id: u64,
    pub peer: SocketAddr,
    pub out: Arc<Outbound>,
    /// Negotiated frame_max (0 = unlimited).
    frame_max: AtomicU32,
    /// Negotiated heartbeat interval in ms (0 = off), read by the writer.
    pub heartbeat_ms: Arc<AtomicU64>,
    pub caps: ClientCaps,
    /// Who and what, for the management API (filled in by the handshake).
    pub info: parking_lot::RwLock<ConnInfo>,
    /// Open channels, for the management API.
    pub channels: parking_lot::Mutex<BTreeMap<u16, Arc<ChannelShared>>>,
    /// Messages published on this connection (overall publish rate).
    pub published: AtomicU64,
    /// Bytes and read calls received so far (management's `recv_oct`, `recv_cnt`).
    pub recv_oct: AtomicU64,
    pub recv_cnt: AtomicU64,
    /// Reads are paused by a resource alarm (shown as state `blocked`).
    pub blocked: AtomicBool,
    /// A close asked for from outside (management, vhost deletion): its reason.
    kill_reason: parking_lot::Mutex<Option<String>>,
    kill: Notify,
}

/// What the management API shows about a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub user: String,
    pub vhost: String,
    pub auth_mechanism: String,
    pub client_properties: FieldTable,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub channel_max: u16,
    /// Set once connection.open succeeded.
    pub open: bool,
    /// The TLS session, for amqps connections.
    pub tls: Option<TlsInfo>,
}

/// A TLS session as the management API shows it (RabbitMQ's `ssl_*` fields).
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub protocol: String,
    pub key_exchange: String,
    pub cipher: String,
    pub hash: String,
}

impl ConnShared {
    pub fn new(id: u64, peer: SocketAddr, high_watermark: usize) -> Arc<Self> {
        Arc::new(ConnShared {
            id,
            peer,
            out: Arc::new(Outbound::new(high_watermark)),
            frame_max: AtomicU32::new(crate::protocol::FRAME_MIN_SIZE),
            heartbeat_ms: Arc::new(AtomicU64::new(0)),
            caps: ClientCaps::default(),
            info: parking_lot::RwLock::new(ConnInfo {
                connected_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                ..ConnInfo::default()
            }),
            channels: parking_lot::Mutex::new(BTreeMap::new()),
            published: AtomicU64::new(0),
            recv_oct: AtomicU64::new(0),
            recv_cnt: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            kill_reason: parking_lot::Mutex::new(None),
            kill: Notify::new(),
        })
    }

    /// Count one read of `n` bytes.
    pub fn received(&self, n: usize) {
        self.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
        self.recv_cnt.fetch_add(1, Ordering::Relaxed);
    }

    /// Close this connection with 320 CONNECTION_FORCED and `reason`.
    pub fn force_close(&self, reason: &str) {
        *self.kill_reason.lock() = Some(reason.to_string());
        self.kill.notify_one();
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    /// The frame_max the handshake negotiated.
    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    /// Resolves once `force_close` was called: its reason.
    pub async fn kill_requested(&self) -> String {
        self.kill.notified().await;
        self.kill_reason.lock().take().unwrap_or_default()
    }

    pub fn send(&self, channel: u16, method: AMQPClass) {
        self.out.write(|buf| encode::method(buf, channel, method));
    }

    /// A queue went away under a consumer: tell the client if it understands that.
    pub fn notify_consumer_cancelled(&self, channel: u16, tag: &str) {
        if self.caps.consumer_cancel_notify.load(Ordering::Relaxed) {
            self.send(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(tag),
                    nowait: true,
                })),
            );
        }
    }
}
