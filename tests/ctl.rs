//! End to end against the real binary: `warrenmq serve` in a child process, a plain HTTP
//! client on its management port, and `warrenmq ctl` list/declare/delete/export/import
//! talking to it.

use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warrenmq");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    http: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (amqp, http) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--log-level", "warn"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg(format!("--amqp-addr=127.0.0.1:{amqp}"))
        .arg(format!("--http-addr=127.0.0.1:{http}"))
        .arg("--metrics-addr=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the broker binary starts");
    let s = Server {
        child,
        http: format!("http://127.0.0.1:{http}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the HTTP listener did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

fn ctl(s: &Server, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--url")
        .arg(&s.http)
        .args(args)
        .output()
        .expect("ctl runs");
    out
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = ctl(s, args);
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ctl_and_a_plain_http_client_against_the_running_binary() {
    let s = serve();
    // A plain HTTP client sees RabbitMQ's overview shape.
    let body = reqwest::blocking_get(&format!("{}/api/overview", s.http));
    assert_eq!(body["product_name"], "WarrenMQ");

    assert_eq!(
        ok(&s, &["declare", "queue", "jobs"]),
        "queue declared: jobs\n"
    );
    ok(
        &s,
        &[
            "declare",
            "queue",
            "scratch",
            "--durable",
            "false",
            "--arguments",
            r#"{"x-max-length": 10}"#,
        ],
    );
    ok(&s, &["declare", "exchange", "work", "--type", "topic"]);
    let queues = ok(&s, &["list", "queues"]);
    let lines: Vec<&str> = queues.lines().collect();
    assert!(lines[0].starts_with("vhost"), "{queues}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("jobs") && l.ends_with("true")),
        "{queues}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("scratch") && l.ends_with("false")),
        "{queues}"
    );
    let exchanges = ok(&s, &["list", "exchanges", "--vhost", "/"]);
    assert!(
        exchanges
            .lines()
            .any(|l| l.contains("work") && l.contains("topic")),
        "{exchanges}"
    );
    assert_eq!(ok(&s, &["list", "connections"]).lines().count(), 1);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    ok(&s, &["export", file]);
    let defs: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "jobs"));
    assert!(!defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "scratch"));

    assert_eq!(
        ok(&s, &["delete", "queue", "jobs"]),
        "queue deleted: jobs\n"
    );
    ok(&s, &["delete", "exchange", "work"]);
    assert!(!ok(&s, &["list", "queues"]).contains("jobs"));
    ok(&s, &["import", file]);
    assert!(ok(&s, &["list", "queues"]).contains("jobs"));
    assert!(ok(&s, &["list", "exchanges"]).contains("work"));

    // Errors come back as the API's reason and a failing exit status.
    let out = ctl(&s, &["delete", "queue", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--url",
            &s.http,
            "--password",
            "wrong",
            "list",
            "queues",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

mod reqwest {
    /// GET with guest credentials on a throwaway runtime (this test is synchronous).
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            ::reqwest::Client::new()
                .get(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    }
}
