//! Forming and joining a cluster: three broker processes on this host, watched through
//! each one's `/api/nodes`. Every wait is a bounded poll.

mod common;

use common::process::BrokerProcess;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "a cluster secret for the tests";
/// Formation, joins and elections all finish well within this on a loaded 2-core host.
const BOUND: Duration = Duration::from_secs(45);

/// A free port below the ephemeral range (32768 and up on Linux), so that no broker's own
/// port-0 listener can take it between this pick and the node's bind; never the same twice
/// in one test process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "no free port left below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Node {
    name: String,
    http: u16,
    cluster: u16,
    dir: PathBuf,
    proc: Option<BrokerProcess>,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("data dir");
        Node {
            name: format!("warrenmq@{name}"),
            http: free_port(),
            cluster: free_port(),
            dir,
            proc: None,
        }
    }

    fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster)
    }

    fn start(&mut self, peers: &[String], secret: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warrenmq"));
        cmd.args(["serve", "--amqp-addr", "127.0.0.1:0"])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--log-level", "warn"])
            .args(["--node-name", &self.name])
            .args(["--cluster-addr", &self.cluster_addr()])
            .args(["--cluster-peers", &peers.join(",")])
            .args(["--cluster-election-timeout", "1000"])
            .env("WARRENMQ_CLUSTER_SECRET", secret)
            .env_remove("WARRENMQ_CLUSTER_SECRET_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.proc = Some(BrokerProcess(cmd.spawn().expect("spawn broker")));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}/api{path}", self.http))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `/api/nodes` as this node answers it (None while it is not serving).
    async fn nodes(&self) -> Option<Vec<Value>> {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/nodes", self.http))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        resp.json::<Vec<Value>>().await.ok()
    }
}

/// Poll `check` until it holds, failing the test with `what` and the last view after BOUND.
async fn until(node: &Node, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + BOUND;
    let mut last = None;
    loop {
        if let Some(nodes) = node.nodes().await {
            if check(&nodes) {
                return nodes;
            }
            last = Some(nodes);
        }
        if Instant::now() > deadline {
            panic!(
                "{}: {what} not seen in {BOUND:?}; last /api/nodes: {last:#?}",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(nodes: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["name"].as_str().map(String::from))
        .collect();
    n.sort();
    n
}

/// Every one of `expected` is a running voter, and one of them leads.
fn formed(expected: &[&str]) -> impl Fn(&[Value]) -> bool {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    move |nodes| {
        names(nodes) == want
            && nodes
                .iter()
                .all(|n| n["running"] == true && n["raft_voter"] == true)
            && nodes.iter().filter(|n| n["raft_leader"] == true).count() == 1
    }
}

fn leader(nodes: &[Value]) -> String {
    nodes
        .iter()
        .find(|n| n["raft_leader"] == true)
        .and_then(|n| n["name"].as_str())
        .expect("a leader")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_one_peer_list_form_one_cluster_and_survive_a_kill() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::new(root.path(), n))
        .collect();
    let peers: Vec<String> = nodes.iter().map(Node::cluster_addr).collect();
    for n in nodes.iter_mut() {
        n.start(&peers, SECRET);
    }
    let all: Vec<&str> = vec!["warrenmq@a", "warrenmq@b", "warrenmq@c"];
    let mut leaders = Vec::new();
    for n in &nodes {
        let view = until(n, "a cluster of all three", formed(&all)).await;
        leaders.push(leader(&view));
    }
    leaders.dedup();
    assert_eq!(leaders.len(), 1, "every node names the same leader");
    // Each node shows the others' own figures (their process ids, memory in use).
    let b_pid = nodes[1].proc.as_ref().expect("b runs").0.id().to_string();
    let view = until(&nodes[0], "b's figures", |v| {
        v.iter()
            .any(|n| n["name"] == "warrenmq@b" && n["os_pid"] == b_pid.as_str())
    })
    .await;
    let b = view.iter().find(|n| n["name"] == "warrenmq@b").expect("b");
    assert!(b["mem_used"].as_u64() > Some(0), "{b}");
    assert!(b["fd_used"].as_u64() > Some(0), "{b}");

    // A member killed shows as not running on the others, and comes back as a member
    // (from its own log: it does not join again) when restarted.
    nodes[2].kill();
    until(&nodes[0], "c not running", |v| {
        v.iter()
            .any(|n| n["name"] == "warrenmq@c" && n["running"] == false)
    })
    .await;
    nodes[2].start(&[], SECRET);
    for n in &nodes {
        until(n, "c back in the cluster", formed(&all)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_a_running_member_through_any_member_and_a_wrong_secret_stays_out() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    let mut c = Node::new(root.path(), "c");
    let mut d = Node::new(root.path(), "d");
    // A alone forms a cluster of one.
    a.start(&[], SECRET);
    until(&a, "a cluster of one", formed(&["warrenmq@a"])).await;
    // B joins through A; C joins through B (a follower, which names the leader).
    b.start(&[a.cluster_addr()], SECRET);
    until(&a, "b admitted", formed(&["warrenmq@a", "warrenmq@b"])).await;
    c.start(&[b.cluster_addr()], SECRET);
    let three = ["warrenmq@a", "warrenmq@b", "warrenmq@c"];
    for n in [&a, &b, &c] {
        until(n, "a cluster of three", formed(&three)).await;
    }
    // D has another secret: A refuses it (the handshake fails, counted), so D is in no
    // cluster, not even one of its own, and the three stay three.
    let refused = |v: &[Value]| {
        v.iter()
            .find(|n| n["name"] == "warrenmq@a")
            .and_then(|n| n["cluster_peers_refused"].as_u64())
            .unwrap_or(0)
    };
    let before = refused(&a.nodes().await.expect("a answers"));
    d.start(&[a.cluster_addr()], "not the cluster's secret at all");
    let view = until(&a, "d's attempts refused", |v| refused(v) >= before + 2).await;
    assert_eq!(names(&view), three, "d never got in");
    let view = d.nodes().await.expect("d answers");
    assert_eq!(names(&view), ["warrenmq@d"]);
    assert_eq!(
        view[0]["raft_voter"], false,
        "d formed no cluster of its own"
    );

    // A quorum queue has its one member on A: stopping A would cost it its majority.
    let critical = "/health/checks/node-is-quorum-critical";
    assert_eq!(a.get(critical).await.0, 200);
    let (status, _) = a
        .put(
            "/queues/%2F/qq",
            serde_json::json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = a.get(critical).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["queues"][0]["name"], "qq", "{body}");
    assert_eq!(
        b.get(critical).await,
        (200, serde_json::json!({"status": "ok"}))
    );

    // C is gone for good: `ctl cluster forget` on B (a follower or the leader) removes it,
    // and the two left still have a leader.
    c.kill();
    let status = ctl(&b, &["cluster", "status"]);
    assert!(status.contains("warrenmq@c"), "{status}");
    let out = ctl(&b, &["cluster", "forget", "warrenmq@c"]);
    assert!(out.contains("warrenmq@c forgotten"), "{out}");
    for n in [&a, &b] {
        until(n, "a cluster of two", formed(&["warrenmq@a", "warrenmq@b"])).await;
    }
    let status = ctl(&a, &["cluster", "status"]);
    assert!(
        status.contains("warrenmq@a") && !status.contains("warrenmq@c"),
        "{status}"
    );
}

/// `warrenmq ctl` against `node`'s API: its stdout (the test fails if it fails).
fn ctl(node: &Node, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warrenmq"))
        .args(["ctl", "--url", &format!("http://127.0.0.1:{}", node.http)])
        .args(args)
        .output()
        .expect("run ctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
