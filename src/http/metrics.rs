//! Prometheus text format on its own listener (`--metrics-addr`, `/metrics`): queue depths
//! and message counters per queue, overall counters, connections, channels, consumers,
//! resident memory and free disk space of the data dir. Names start with `warrenmq_`.

use super::Ctx;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::broker::alarms::rss_bytes;

/// Bytes available on the file system holding `path` (0 when it cannot be read).
pub fn disk_free(path: &Path) -> u64 {
    crate::broker::alarms::disk_free(path).unwrap_or(0)
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP warrenmq_{name} {help}\n# TYPE warrenmq_{name} {kind}"
    );
}

struct QueueRow {
    vhost: String,
    name: String,
    ready: u64,
    unacked: u64,
    bytes: u64,
    consumers: u32,
    counts: crate::broker::queue::stats::Counts,
}

/// The whole exposition.
pub fn render(ctx: &Ctx) -> String {
    let broker = &ctx.broker;
    let mut rows = Vec::new();
    for v in broker.vhosts.iter() {
        for q in v.queues.iter() {
            let (ready, bytes, consumers) = q.depth();
            rows.push(QueueRow {
                vhost: v.name.clone(),
                name: q.name().to_string(),
                ready,
                unacked: q.stats.unacked(),
                bytes,
                consumers,
                counts: q.stats.counts(),
            });
        }
    }
    let mut out = String::with_capacity(256 + rows.len() * 900);
    type Get = fn(&QueueRow) -> u64;
    let per_queue: [(&str, &str, &str, Get); 9] = [
        (
            "queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers.",
            |r| r.ready,
        ),
        (
            "queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged.",
            |r| r.unacked,
        ),
        (
            "queue_messages_ready_bytes",
            "gauge",
            "Body bytes of ready messages.",
            |r| r.bytes,
        ),
        ("queue_consumers", "gauge", "Consumers on the queue.", |r| {
            r.consumers as u64
        }),
        (
            "queue_messages_published_total",
            "counter",
            "Messages enqueued.",
            |r| r.counts.publish,
        ),
        (
            "queue_messages_delivered_total",
            "counter",
            "Messages delivered to consumers.",
            |r| r.counts.deliver,
        ),
        (
            "queue_messages_get_total",
            "counter",
            "Messages fetched with basic.get.",
            |r| r.counts.get,
        ),
        (
            "queue_messages_redelivered_total",
            "counter",
            "Messages delivered again.",
            |r| r.counts.redeliver,
        ),
        (
            "queue_messages_acked_total",
            "counter",
            "Messages acknowledged.",
            |r| r.counts.ack,
        ),
    ];
    for (name, kind, help, get) in per_queue {
        family(&mut out, name, kind, help);
        for r in &rows {
            out.push_str("warrenmq_");
            out.push_str(name);
            out.push_str("{vhost=\"");
            label(&mut out, &r.vhost);
            out.push_str("\",queue=\"");
            label(&mut out, &r.name);
            let _ = writeln!(out, "\"}} {}", get(r));
        }
    }
    let (total, _) = ctx.rates.overall(broker);
    let channels: usize = broker
        .connections
        .iter()
        .map(|c| c.channels.lock().len())
        .sum();
    let consumers: u64 = rows.iter().map(|r| r.consumers as u64).sum();
    let alarms = broker.alarms.state();
    let storage = broker
        .store
        .as_ref()
        .map(|s| s.storage_health())
        .unwrap_or_default();
    let globals: [(&str, &str, &str, u64); 21] = [
        (
            "connections",
            "gauge",
            "Open AMQP connections.",
            broker.connections.len() as u64,
        ),
        ("channels", "gauge", "Open channels.", channels as u64),
        ("consumers", "gauge", "Consumers on all queues.", consumers),
        (
            "queues",
            "gauge",
            "Queues in all vhosts.",
            rows.len() as u64,
        ),
        (
            "global_messages_received_total",
            "counter",
            "Messages published to the broker.",
            total.publish,
        ),
        (
            "global_messages_delivered_total",
            "counter",
            "Messages delivered to consumers.",
            total.deliver,
        ),
        (
            "global_messages_get_total",
            "counter",
            "Messages fetched with basic.get.",
            total.get,
        ),
        (
            "global_messages_redelivered_total",
            "counter",
            "Messages delivered again.",
            total.redeliver,
        ),
        (
            "global_messages_acknowledged_total",
            "counter",
            "Messages acknowledged.",
            total.ack,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the broker process.",
            rss_bytes(),
        ),
        (
            "disk_space_available_bytes",
            "gauge",
            "Free disk space where the data dir is.",
            disk_free(&broker.config.data_dir),
        ),
        (
            "resident_memory_limit_bytes",
            "gauge",
            "Memory high watermark: above it the memory alarm is set.",
            broker.alarms.memory_limit(),
        ),
        (
            "disk_space_available_limit_bytes",
            "gauge",
            "Disk free limit: below it the disk alarm is set.",
            broker.alarms.disk_free_limit(),
        ),
        (
            "alarms_memory_used_watermark",
            "gauge",
            "1 while the memory alarm is in effect.",
            alarms.memory as u64,
        ),
        (
            "alarms_free_disk_space_watermark",
            "gauge",
            "1 while the disk alarm is in effect.",
            alarms.disk as u64,
        ),
        (
            "storage_damaged_records_total",
            "counter",
            "Message records lost to damage found in synced data at start.",
            storage.damaged_records,
        ),
        (
            "storage_damaged_bytes_total",
            "counter",
            "Bytes of damaged data (messages, definitions) found at start.",
            storage.damaged_bytes,
        ),
        (
            "storage_torn_bytes_total",
            "counter",
            "Bytes of torn segment tails (written after the last sync, never confirmed) ignored at start.",
            storage.torn_bytes,
        ),
        (
            "storage_offset_damage_bytes_total",
            "counter",
            "Bytes of ack/delivery files skipped at start (their messages came back).",
            storage.offset_bytes,
        ),
        (
            "storage_damage_uncleared",
            "gauge",
            "Damaged stretches found that an operator has not cleared (the storage health check fails while above 0).",
            storage.open.len() as u64,
        ),
        (
            "process_uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            ctx.started.elapsed().as_secs(),
        ),
    ];
    for (name, kind, help, value) in globals {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "warrenmq_{name} {value}");
    }
    family(&mut out, "build_info", "gauge", "Version of this broker.");
    let _ = writeln!(
        out,
        "warrenmq_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || render(&ctx))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Serve `/metrics` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(ctx)
        .into_make_service_with_connect_info::<SocketAddr>();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "metrics server failed");
    }
}
