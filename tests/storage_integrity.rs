//! Damage to stored messages costs only the damaged record, and is reported: an ERROR log
//! line, `warrenmq check` failing, the storage health check failing until cleared, the
//! queue's lost-record count, the metrics, a quarantined copy of the bytes.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

const MESSAGES: u64 = 10_000;

fn body(i: u64) -> Vec<u8> {
    let mut b = i.to_be_bytes().to_vec();
    b.extend((0..1016).map(|j| (i as usize + j) as u8));
    b
}

async fn publish_all(b: &TestBroker) {
    let conn = connect(b).await;
    let ch = channel(&conn).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .unwrap();
    declare_durable(&ch, "jobs").await;
    let mut confirms = Vec::new();
    for i in 0..MESSAGES {
        confirms.push(publish_persistent(&ch, "jobs", &body(i)).await);
    }
    for c in confirms {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn check(dir: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warrenmq"))
        .args(["check", "--data-dir"])
        .arg(dir)
        .output()
        .expect("warrenmq check runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn depth(b: &TestBroker) -> u32 {
    let conn = connect(b).await;
    let ch = channel(&conn).await;
    ready_count(&ch, "jobs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_bytes_overwritten_mid_segment_cost_one_record_and_are_reported_until_cleared() {
    let mut b = start_broker().await;
    publish_all(&b).await;
    b.stop().await;
    let dir = b.dir;
    let (code, out) = check(dir.path());
    assert_eq!(code, Some(0), "a clean data dir passes: {out}");

    // The segment holding the messages (the biggest one): 4 bytes at 30 % overwritten.
    let seg = segments(dir.path())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() * 3 / 10;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0xa5;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let (code, out) = check(dir.path());
    assert_eq!(code, Some(1), "check fails on damage: {out}");
    assert!(out.contains("DAMAGED"), "{out}");

    let b = start_broker_with(test_config(dir.path()), dir).await;
    // Everything but the one damaged record came back (two if the 4 bytes straddle two).
    let back = depth(&b).await as u64;
    assert!(
        back == MESSAGES - 1 || back == MESSAGES - 2,
        "{back} of {MESSAGES} back"
    );
    let lost = MESSAGES - back;
    let api = api(&b);
    let (status, health) = api.get("/api/health/checks/storage").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "failed");
    let damage = health["damage"].as_array().unwrap();
    assert!(!damage.is_empty());
    let q = damage[0]["quarantine"].as_str().expect("quarantined");
    assert!(b.dir.path().join("messages").join(q).exists(), "{q}");
    let (_, queue) = api.get("/api/queues/%2F/jobs").await;
    assert_eq!(queue["storage_lost_records"], lost, "{queue}");
    let metrics_addr = b.handle.as_ref().unwrap().metrics_addr;
    let metrics = within(
        "metrics",
        reqwest::get(format!("http://{metrics_addr}/metrics")),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains(&format!("warrenmq_storage_damaged_records_total {lost}")),
        "{metrics}"
    );
    assert!(metrics.contains("warrenmq_storage_damage_uncleared 1"));

    // Cleared by an operator: passes, and stays passing over a restart that finds the same
    // damage (the segment still holds the messages).
    let (status, _) = api.delete("/api/health/checks/storage").await;
    assert_eq!(status, 204);
    assert_eq!(api.get("/api/health/checks/storage").await.0, 200);
    let mut b = b;
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    assert_eq!(api_ok(&b).await, 200);

    // Every message but the damaged one, each body intact, in order.
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let mut consumer = within(
        "consume",
        ch.basic_consume(
            "jobs".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let mut missing = Vec::new();
    let mut expect = 0u64;
    for _ in 0..back {
        let d = next(&mut consumer).await;
        let i = u64::from_be_bytes(d.data[..8].try_into().unwrap());
        assert_eq!(d.data, body(i), "message {i} intact");
        missing.extend(expect..i);
        expect = i + 1;
    }
    missing.extend(expect..MESSAGES);
    assert_eq!(missing.len() as u64, lost, "{missing:?}");
}

async fn api_ok(b: &TestBroker) -> u16 {
    api(b).get("/api/health/checks/storage").await.0
}

/// sled recovers silently to an older state when a page of its file is damaged (seen:
/// 11 to all 30 of 30 durable queues gone after one flipped bit). The definitions snapshot
/// finds that and restores sled from it: every queue, and the messages in them, come back,
/// and the damage is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_sled_costs_no_queue_and_is_reported() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        within("confirm.select", ch.confirm_select(Default::default()))
            .await
            .unwrap();
        for i in 0..30 {
            declare_durable(&ch, &format!("q{i}")).await;
        }
        for i in 0..30 {
            let c = publish_persistent(&ch, &format!("q{i}"), b"kept").await;
            assert!(within("confirm", c).await.unwrap().is_ack());
        }
    }
    b.stop().await;
    let dir = b.dir;
    let original = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), original.path());
    let db = dir.path().join("sled").join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let mut reported = 0;
    // Flips spread over the file, each on a fresh copy of the stopped data dir.
    for trial in 0..6 {
        let _ = std::fs::remove_dir_all(dir.path());
        copy_tree(original.path(), dir.path());
        let mut bytes = std::fs::read(&db).unwrap();
        let at = (trial * 2 + 1) * len / 13;
        bytes[at] ^= 0x10;
        std::fs::write(&db, &bytes).unwrap();
        let (code, out) = check(dir.path());
        let mut b = start_broker_with(test_config(dir.path()), tempfile::tempdir().unwrap()).await;
        let (status, health) = api(&b).get("/api/health/checks/storage").await;
        let (_, queues) = api(&b).get("/api/queues").await;
        let queues = queues.as_array().unwrap();
        assert_eq!(queues.len(), 30, "trial {trial} (byte {at}): {health}");
        assert!(
            queues.iter().all(|q| q["messages"] == 1),
            "trial {trial}: every message back"
        );
        if status == 503 {
            reported += 1;
            assert_eq!(code, Some(1), "check agrees: {out}");
        }
        b.stop().await;
    }
    assert!(
        reported > 0,
        "some flips hit sled's records and were reported"
    );
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// Bit rot anywhere: single-byte flips at random places of every file of a stopped data
/// dir. The broker starts, serves what is undamaged intact, and whatever is missing is
/// reported by the storage health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_byte_flips_anywhere_in_a_data_dir_are_served_around_and_reported() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = start_broker().await;
    const PER_QUEUE: u64 = 600;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        within("confirm.select", ch.confirm_select(Default::default()))
            .await
            .unwrap();
        let mut confirms = Vec::new();
        for q in 0..3 {
            declare_durable(&ch, &format!("rot{q}")).await;
            for i in 0..PER_QUEUE {
                let len = rng.random_range(8..1024);
                let rot = format!("rot{q}");
                confirms.push(publish_persistent(&ch, &rot, &body(q * PER_QUEUE + i)[..len]).await);
            }
        }
        for c in confirms {
            assert!(within("confirm", c).await.unwrap().is_ack());
        }
    }
    b.stop().await;
    let dir = b.dir;
    let mut all = Vec::new();
    files(dir.path(), &mut all);
    let total: u64 = all
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut hits = Vec::new();
    for _ in 0..8 {
        let mut at = rng.random_range(0..total);
        for p in &all {
            let len = std::fs::metadata(p).unwrap().len();
            if at < len {
                let mut bytes = std::fs::read(p).unwrap();
                bytes[at as usize] ^= 1 << rng.random_range(0..8);
                std::fs::write(p, &bytes).unwrap();
                hits.push(format!(
                    "{}@{at}",
                    p.strip_prefix(dir.path()).unwrap().display()
                ));
                break;
            }
            at -= len;
        }
    }
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let (status, health) = api(&b).get("/api/health/checks/storage").await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let mut served = std::collections::HashSet::new();
    for q in 0..3 {
        let name = format!("rot{q}");
        let declared = ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if declared.is_err() {
            assert_eq!(
                status, 503,
                "seed {seed} {hits:?}: queue {name} gone silently"
            );
            break;
        }
        while let Some(m) = within(
            "get",
            ch.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        {
            let data = &m.delivery.data;
            let i = u64::from_be_bytes(data[..8].try_into().unwrap());
            assert!(
                i / PER_QUEUE == q,
                "seed {seed} {hits:?}: message in the wrong queue"
            );
            assert_eq!(
                data[..],
                body(i)[..data.len()],
                "seed {seed} {hits:?}: body intact"
            );
            assert!(served.insert(i), "seed {seed} {hits:?}: served twice");
        }
    }
    if (served.len() as u64) < 3 * PER_QUEUE {
        assert_eq!(
            status,
            503,
            "seed {seed} {hits:?}: {} of {} served, not reported: {health}",
            served.len(),
            3 * PER_QUEUE
        );
    }
}
