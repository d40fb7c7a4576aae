//! The web dashboard: its assets are served from the binary with nothing loaded from
//! elsewhere, and, end to end in headless Chromium driven over WebDriver (chromedriver), a
//! queue created over AMQP shows up with its depth after logging in. The browser test
//! skips (with a message) when chromium or chromedriver is not installed.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn http_base(b: &TestBroker) -> String {
    format!("http://{}", b.handle.as_ref().unwrap().http_addr)
}

#[tokio::test]
async fn assets_are_embedded_and_local() {
    let b = start_broker().await;
    let base = http_base(&b);
    for (path, ctype) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(ctype), "{path}: {ct}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} refers to another host"
        );
    }
}

/// A chromedriver process, killed on drop.
struct Driver {
    child: std::process::Child,
    url: String,
    client: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let profile = tempfile::tempdir().unwrap();
        let mut d = Driver {
            child,
            url,
            client,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d
            .client
            .get(format!("{}/status", d.url))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", d._profile.path().display())]
            }
        }}});
        let v = d.call("POST", "/session", caps).await;
        d.session = v["sessionId"].as_str().expect("a session").to_string();
        d
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.url)
        } else {
            format!("{}/session/{}{path}", self.url, self.session)
        };
        let req = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.post(url).json(&body),
        };
        let r = within("webdriver", req.send())
            .await
            .expect("webdriver call");
        let v: Value = r.json().await.expect("webdriver json");
        v["value"].clone()
    }

    /// The element matching `css`, if any.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()?
            .iter()
            .find(|(k, _)| k.starts_with("element-"))
            .and_then(|(_, id)| id.as_str().map(str::to_string))
    }

    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }
}

#[tokio::test]
async fn a_queue_created_over_amqp_appears_with_its_depth_in_chromium() {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "skipping the dashboard browser test: {CHROMIUM} or {CHROMEDRIVER} is not installed \
             (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let b = start_broker().await;
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "dashboard-e2e").await;
    for _ in 0..3 {
        publish(&ch, "", "dashboard-e2e", b"task").await;
    }

    let d = Driver::start().await;
    d.call(
        "POST",
        "/url",
        json!({"url": format!("{}/", http_base(&b))}),
    )
    .await;
    d.type_into("#login-user", "guest").await;
    d.type_into("#login-pass", "guest").await;
    d.click("#login-btn").await;
    d.wait_for("#app:not([hidden])").await;
    d.click("nav a[data-tab=queues]").await;
    let cell = d
        .wait_for("tr[data-queue='dashboard-e2e'] td.messages-ready")
        .await;
    assert_eq!(d.text(&cell).await, "3");

    // The page follows the queue: one more message shows up on the next refresh.
    publish(&ch, "", "dashboard-e2e", b"task").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cell = d
            .wait_for("tr[data-queue='dashboard-e2e'] td.messages-ready")
            .await;
        if d.text(&cell).await == "4" {
            break;
        }
        assert!(Instant::now() < deadline, "depth not refreshed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // WARRENMQ_DASHBOARD_SCREENSHOT=page.png keeps a picture of the queues page.
    if let Ok(path) = std::env::var("WARRENMQ_DASHBOARD_SCREENSHOT") {
        use base64::Engine;
        let png = d.call("GET", "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    d.call("DELETE", "", Value::Null).await;
}
