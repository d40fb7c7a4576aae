//! `warrenmq ctl`: a small admin client for the management HTTP API of a running broker
//! (list, declare, delete, export, import, cluster status and forget), so operators need no
//! other tool.

use serde_json::{json, Value};
use std::io::Write;

/// Where the API is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// Management API base URL.
    #[arg(
        long,
        env = "WARRENMQ_CTL_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub url: String,
    #[arg(long, env = "WARRENMQ_CTL_USER", default_value = "guest")]
    pub user: String,
    #[arg(long, env = "WARRENMQ_CTL_PASSWORD", default_value = "guest")]
    pub password: String,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// List queues, exchanges or connections.
    List {
        #[arg(value_enum)]
        what: Listable,
        /// Only this vhost.
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare a queue or an exchange.
    Declare {
        #[command(subcommand)]
        what: Declarable,
    },
    /// Delete a queue or an exchange.
    Delete {
        #[arg(value_enum)]
        what: Deletable,
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Write the broker's definitions as JSON (to FILE, or stdout).
    Export { file: Option<std::path::PathBuf> },
    /// Load definitions from a JSON file (a RabbitMQ export works too).
    Import { file: std::path::PathBuf },
    /// The cluster: its members, or forgetting one that is gone for good.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Every member: name, cluster address, running, voter, leader.
    Status,
    /// Remove a member that will not come back (it stops counting towards majorities).
    Forget { node: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Listable {
    Queues,
    Exchanges,
    Connections,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Deletable {
    Queue,
    Exchange,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Declarable {
    Queue {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Survives a broker restart.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// Queue arguments as a JSON object, e.g. '{"x-max-length": 1000}'.
        #[arg(long)]
        arguments: Option<String>,
    },
    Exchange {
        name: String,
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
    },
}

/// Percent-encode one path segment (`/` becomes `%2F`).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Client {
    http: reqwest::Client,
    args: CtlArgs,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/api{path}", self.args.url.trim_end_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .basic_auth(&self.args.user, Some(&self.args.password));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let reason = v["reason"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(format!("{status}: {reason}"));
        }
        Ok(v)
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Print rows as aligned columns.
fn table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(headers.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

/// Run one ctl command; Err is the message to print.
pub async fn run(args: CtlArgs) -> Result<(), String> {
    let c = Client {
        http: reqwest::Client::new(),
        args: args.clone(),
    };
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| e.to_string();
    use reqwest::Method;
    match args.command {
        CtlCommand::List { what, vhost } => {
            let scope = vhost
                .as_deref()
                .map(|v| format!("/{}", seg(v)))
                .unwrap_or_default();
            let (path, headers, fields): (String, &[&str], &[&str]) = match what {
                Listable::Queues => (
                    format!("/queues{scope}"),
                    &[
                        "vhost",
                        "name",
                        "messages_ready",
                        "messages_unacknowledged",
                        "consumers",
                        "durable",
                    ],
                    &[
                        "vhost",
                        "name",
                        "messages_ready",
                        "messages_unacknowledged",
                        "consumers",
                        "durable",
                    ],
                ),
                Listable::Exchanges => (
                    format!("/exchanges{scope}"),
                    &["vhost", "name", "type", "durable", "internal"],
                    &["vhost", "name", "type", "durable", "internal"],
                ),
                Listable::Connections => (
                    match &vhost {
                        Some(v) => format!("/vhosts/{}/connections", seg(v)),
                        None => "/connections".to_string(),
                    },
                    &["name", "user", "vhost", "channels"],
                    &["name", "user", "vhost", "channels"],
                ),
            };
            let v = c.call(Method::GET, &path, None).await?;
            let rows: Vec<Vec<String>> = v
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[])
                .iter()
                .map(|item| fields.iter().map(|f| cell(&item[*f])).collect())
                .collect();
            table(&mut out, headers, &rows).map_err(io)?;
        }
        CtlCommand::Declare { what } => match what {
            Declarable::Queue {
                name,
                vhost,
                durable,
                auto_delete,
                arguments,
            } => {
                let arguments: Value = match arguments {
                    Some(a) => serde_json::from_str(&a).map_err(|e| format!("--arguments: {e}"))?,
                    None => json!({}),
                };
                let body =
                    json!({"durable": durable, "auto_delete": auto_delete, "arguments": arguments});
                c.call(
                    Method::PUT,
                    &format!("/queues/{}/{}", seg(&vhost), seg(&name)),
                    Some(&body),
                )
                .await?;
                writeln!(out, "queue declared: {name}").map_err(io)?;
            }
            Declarable::Exchange {
                name,
                kind,
                vhost,
                durable,
                auto_delete,
            } => {
                let body = json!({"type": kind, "durable": durable, "auto_delete": auto_delete, "internal": false, "arguments": {}});
                c.call(
                    Method::PUT,
                    &format!("/exchanges/{}/{}", seg(&vhost), seg(&name)),
                    Some(&body),
                )
                .await?;
                writeln!(out, "exchange declared: {name}").map_err(io)?;
            }
        },
        CtlCommand::Delete { what, name, vhost } => {
            let kind = match what {
                Deletable::Queue => "queues",
                Deletable::Exchange => "exchanges",
            };
            c.call(
                Method::DELETE,
                &format!("/{kind}/{}/{}", seg(&vhost), seg(&name)),
                None,
            )
            .await?;
            writeln!(out, "{} deleted: {name}", &kind[..kind.len() - 1]).map_err(io)?;
        }
        CtlCommand::Export { file } => {
            let v = c.call(Method::GET, "/definitions", None).await?;
            let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            match file {
                Some(f) => {
                    std::fs::write(&f, text + "\n").map_err(|e| format!("{}: {e}", f.display()))?;
                    writeln!(out, "definitions exported to {}", f.display()).map_err(io)?;
                }
                None => writeln!(out, "{text}").map_err(io)?,
            }
        }
        CtlCommand::Import { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            c.call(Method::POST, "/definitions", Some(&v)).await?;
            writeln!(out, "definitions imported from {}", file.display()).map_err(io)?;
        }
        CtlCommand::Cluster {
            what: ClusterCommand::Status,
        } => {
            let v = c.call(Method::GET, "/nodes", None).await?;
            let fields = [
                "name",
                "cluster_addr",
                "running",
                "raft_voter",
                "raft_leader",
            ];
            let rows: Vec<Vec<String>> = v
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|n| fields.iter().map(|f| cell(&n[*f])).collect())
                .collect();
            table(
                &mut out,
                &["node", "cluster address", "running", "voter", "leader"],
                &rows,
            )
            .map_err(io)?;
        }
        CtlCommand::Cluster {
            what: ClusterCommand::Forget { node },
        } => {
            c.call(
                Method::DELETE,
                &format!("/cluster/nodes/{}", seg(&node)),
                None,
            )
            .await?;
            writeln!(out, "{node} forgotten").map_err(io)?;
        }
    }
    Ok(())
}
