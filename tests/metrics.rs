//! Prometheus metrics on their own port: queue depths, counters, connections, channels,
//! consumers, memory and disk, all prefixed `warrenmq_`, in the text exposition format.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

async fn scrape(b: &TestBroker) -> (String, String) {
    let addr = b.handle.as_ref().unwrap().metrics_addr;
    let r = within("scrape", reqwest::get(format!("http://{addr}/metrics")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    (ct, r.text().await.unwrap())
}

/// The value of one sample line (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_expose_depths_counters_and_process_figures() {
    let b = start_broker().await;
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "jobs").await;
    declare(&ch, "we\"ird\\name").await;
    for _ in 0..5 {
        publish(&ch, "", "jobs", b"m").await;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let _consumer = ch
        .basic_consume(
            "jobs".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let q = "{vhost=\"/\",queue=\"jobs\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let (ct, text) = scrape(&b).await;
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        if sample(&text, &format!("warrenmq_queue_messages_unacked{q}")) == Some(2.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&text, &format!("warrenmq_queue_messages_ready{q}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, &format!("warrenmq_queue_consumers{q}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("warrenmq_queue_messages_published_total{q}")
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("warrenmq_queue_messages_delivered_total{q}")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "warrenmq_global_messages_received_total"),
        Some(5.0)
    );
    assert_eq!(sample(&text, "warrenmq_connections"), Some(1.0));
    assert_eq!(sample(&text, "warrenmq_channels"), Some(1.0));
    assert_eq!(sample(&text, "warrenmq_consumers"), Some(1.0));
    assert_eq!(sample(&text, "warrenmq_queues"), Some(2.0));
    assert!(sample(&text, "warrenmq_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&text, "warrenmq_disk_space_available_bytes").unwrap() > 0.0);
    assert!(text.contains("# TYPE warrenmq_queue_messages_ready gauge"));
    assert!(text.contains("# TYPE warrenmq_queue_messages_published_total counter"));
    // Label values are escaped.
    assert!(text.contains("queue=\"we\\\"ird\\\\name\""), "{text}");
    // Every sample line belongs to a warrenmq_ family.
    assert!(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .all(|l| l.starts_with("warrenmq_")));
}
