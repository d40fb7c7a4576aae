//! A small reqwest client for the management API of a TestBroker.

use super::TestBroker;
use serde_json::Value;

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub user: String,
    pub pass: String,
}

pub fn api(b: &TestBroker) -> Api {
    api_as(b, "guest", "guest")
}

pub fn api_as(b: &TestBroker, user: &str, pass: &str) -> Api {
    let addr = b.handle.as_ref().expect("running").http_addr;
    Api {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        user: user.into(),
        pass: pass.into(),
    }
}

impl Api {
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.pass))
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = super::within("http request", rb.send())
            .await
            .expect("http");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::PUT, path).json(&body))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    /// GET that must answer 200.
    pub async fn ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }
}
