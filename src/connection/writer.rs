//! The writer task of a connection: it swaps out the connection's outbound buffer
//! (broker/outbound.rs) and writes it with one syscall per batch, and sends heartbeats when
//! the connection is idle.

use crate::broker::outbound::Outbound;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The writer task: write batches until closed; send heartbeats when idle.
pub async fn run_writer<W: tokio::io::AsyncWrite + Unpin>(
    out: Arc<Outbound>,
    mut sock: W,
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncWriteExt;
    let mut local = BytesMut::new();
    loop {
        if out.pending() == 0 {
            if out.is_closing() {
                break;
            }
            let hb_ms = heartbeat.load(Ordering::Relaxed);
            if hb_ms == 0 {
                out.woken().await;
            } else {
                // Idle for half the interval: send a heartbeat so the peer sees traffic.
                let idle = std::time::Duration::from_millis(hb_ms / 2);
                tokio::select! {
                    _ = out.woken() => {}
                    _ = tokio::time::sleep(idle) => out.heartbeat_if_idle(),
                }
            }
            continue;
        }
        out.take(&mut local);
        if let Err(e) = sock.write_all(&local).await {
            tracing::debug!(error = %e, "write failed; connection is gone");
            out.close();
            break;
        }
        out.send_oct
            .fetch_add(local.len() as u64, Ordering::Relaxed);
        out.send_cnt.fetch_add(1, Ordering::Relaxed);
        local.clear();
        // Keep a reasonably sized buffer, but do not hold on to a huge one after a burst.
        if local.capacity() > 4 * 1024 * 1024 {
            local = BytesMut::new();
        }
        out.after_write();
    }
    out.close();
    let _ = sock.shutdown().await;
}
