//! Configuration: defaults, then an optional TOML file, then `WARRENMQ_*` environment
//! variables and command-line flags (flags and env override the file). Every limit lives here.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// AMQP listener.
    pub amqp_addr: SocketAddr,
    /// Management HTTP API listener.
    pub http_addr: SocketAddr,
    /// Prometheus metrics listener.
    pub metrics_addr: SocketAddr,
    /// Largest management API request body, bytes.
    pub http_max_body: usize,
    /// Where sled keeps durable state.
    pub data_dir: PathBuf,
    /// tracing filter, e.g. `info` or `warrenmq=debug`.
    pub log_level: String,
    /// `text` (colour only on a terminal) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// The user created on an empty data dir.
    pub default_user: String,
    pub default_pass: String,
    /// Heartbeat interval offered in connection.tune, seconds (0 = off).
    pub heartbeat: u16,
    /// frame_max offered in connection.tune, bytes.
    pub frame_max: u32,
    /// channel_max offered in connection.tune.
    pub channel_max: u16,
    /// A client must finish the handshake within this many seconds.
    pub handshake_timeout: u64,
    /// Largest message body accepted, bytes.
    pub max_message_size: u64,
    /// Deepest nesting of field tables and arrays accepted in a frame.
    pub max_table_depth: usize,
    /// Further connections are refused beyond this many.
    pub max_connections: usize,
    /// Consumers one channel may hold.
    pub max_consumers_per_channel: usize,
    /// sled page cache, bytes.
    pub store_cache_bytes: u64,
    /// Outbound bytes buffered per connection before its consumers are paused.
    pub outbound_high_watermark: usize,
    /// Default consumer ack timeout in ms (0 = none); queues (`x-consumer-timeout`) and
    /// consumers (consume argument of the same name) may override it.
    pub consumer_timeout: u64,
    /// Queue type of declarations that name none (`classic` or `quorum`), for vhosts without
    /// their own `default_queue_type` (RabbitMQ 3.13's `default_queue_type`). Only durable,
    /// non-exclusive, non-auto-delete queues take it; the others stay classic.
    pub default_queue_type: String,
    /// amqps listener (RabbitMQ's port 5671). It runs only when `tls_cert` and `tls_key`
    /// are set, so a plain configuration opens no TLS port.
    pub amqps_addr: SocketAddr,
    /// Management HTTP API over TLS, with the same certificate; off unless set.
    pub https_addr: Option<SocketAddr>,
    /// Server certificate chain, PEM (leaf first).
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates must chain to.
    pub tls_ca: Option<PathBuf>,
    /// amqps: ask clients for a certificate and verify it against `tls_ca` when given.
    pub tls_verify_peer: bool,
    /// amqps with `tls_verify_peer`: refuse clients that present no certificate.
    pub tls_fail_if_no_peer_cert: bool,
    /// Memory alarm threshold (RabbitMQ's `vm_memory_high_watermark`): a fraction of total
    /// RAM (or of the cgroup limit) as a float, e.g. `0.4`, or an absolute size as an
    /// integer byte count or a string with a unit (`"512MiB"`, `"2GB"`). While the broker's
    /// resident memory is above it, publishing connections are blocked.
    pub memory_high_watermark: ResourceLimit,
    /// Disk alarm threshold (RabbitMQ's `disk_free_limit`): publishing connections are
    /// blocked while the file system of `data_dir` has less free space than this. An
    /// absolute size (integer bytes or a string with a unit), or a float multiple of total
    /// RAM as RabbitMQ's `disk_free_limit.relative`.
    pub disk_free_limit: ResourceLimit,
    /// How long a failed login waits before it is answered, ms: makes password guessing
    /// over one connection slow without holding up anyone else.
    pub auth_failure_delay: u64,
    /// SASL mechanisms offered in connection.start, in this order: any of `PLAIN`,
    /// `AMQPLAIN` and `RABBIT-CR-DEMO` (RabbitMQ's challenge-response demo: the user name
    /// in start-ok, the password in secure-ok; as plain-text as PLAIN).
    pub auth_mechanisms: Vec<String>,
    /// This node's name in the cluster and the management API (`warrenmq@<hostname>` by
    /// default). Its Raft id derives from it, so it must stay the same across restarts.
    pub node_name: Option<String>,
    /// The inter-node listener; the node is clustered only when this is set.
    pub cluster_addr: Option<SocketAddr>,
    /// The address other nodes reach `cluster_addr` at (default: `cluster_addr` itself;
    /// set it when that is a wildcard or behind NAT).
    pub cluster_advertise: Option<String>,
    /// Cluster addresses of the initial members. Nodes started with the same list form one
    /// cluster on first start; a new node given a running member's address joins it.
    pub cluster_peers: Vec<String>,
    /// The shared cluster secret (at least 16 bytes); default `<data dir>/cluster.secret`,
    /// or `WARRENMQ_CLUSTER_SECRET`.
    pub cluster_secret_file: Option<PathBuf>,
    /// Raft election timeout, ms: how long followers wait for a leader before electing a
    /// new one (failover time).
    pub cluster_election_timeout: u64,
}

/// The SASL mechanisms the broker implements.
pub const KNOWN_AUTH_MECHANISMS: &[&str] = &["PLAIN", "AMQPLAIN", "RABBIT-CR-DEMO"];

/// A size limit given either absolutely or relative to total memory.
/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stdout is a terminal.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "RawLimit")]
pub enum ResourceLimit {
    /// Bytes.
    Absolute(u64),
    /// A factor applied to total memory.
    Relative(f64),
}

/// What a limit looks like in TOML: an integer, a float or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Int(u64),
    Float(f64),
    Text(String),
}

impl TryFrom<RawLimit> for ResourceLimit {
    type Error = String;
    fn try_from(raw: RawLimit) -> Result<Self, String> {
        match raw {
            RawLimit::Int(n) => Ok(ResourceLimit::Absolute(n)),
            RawLimit::Float(f) if f.is_finite() && f >= 0.0 => Ok(ResourceLimit::Relative(f)),
            RawLimit::Float(f) => Err(format!("invalid relative limit {f}")),
            RawLimit::Text(s) => parse_size(&s).map(ResourceLimit::Absolute),
        }
    }
}

impl ResourceLimit {
    /// The limit in bytes, given the total memory.
    pub fn bytes(&self, total_memory: u64) -> u64 {
        match *self {
            ResourceLimit::Absolute(n) => n,
            ResourceLimit::Relative(f) => (total_memory as f64 * f) as u64,
        }
    }
}

/// A size with an optional unit as RabbitMQ reads them: `k`/`KiB`, `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` are powers of 1024; `kB`/`KB`, `MB`, `GB`, `TB` are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "k" | "K" | "Ki" | "KiB" | "kiB" => 1 << 10,
        "kB" | "KB" => 1_000,
        "M" | "Mi" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "Gi" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "T" | "Ti" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("invalid size '{s}': unknown unit '{other}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_addr: "127.0.0.1:5672".parse().expect("static address"),
            http_addr: "127.0.0.1:15672".parse().expect("static address"),
            metrics_addr: "127.0.0.1:15692".parse().expect("static address"),
            http_max_body: 20 * 1024 * 1024,
            data_dir: PathBuf::from("./data"),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            default_user: "guest".to_string(),
            default_pass: "guest".to_string(),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            handshake_timeout: 10,
            max_message_size: 128 * 1024 * 1024,
            max_table_depth: 32,
            max_connections: 65_536,
            max_consumers_per_channel: 65_536,
            store_cache_bytes: 64 * 1024 * 1024,
            outbound_high_watermark: 1024 * 1024,
            consumer_timeout: 1_800_000,
            default_queue_type: "classic".into(),
            amqps_addr: "127.0.0.1:5671".parse().expect("static address"),
            https_addr: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_verify_peer: false,
            tls_fail_if_no_peer_cert: false,
            memory_high_watermark: ResourceLimit::Relative(0.4),
            disk_free_limit: ResourceLimit::Absolute(50_000_000),
            auth_failure_delay: 1000,
            auth_mechanisms: KNOWN_AUTH_MECHANISMS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            node_name: None,
            cluster_addr: None,
            cluster_advertise: None,
            cluster_peers: Vec::new(),
            cluster_secret_file: None,
            cluster_election_timeout: 3000,
        }
    }
}

/// Flags of `warrenmq serve`; each also reads a `WARRENMQ_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see etc/warrenmq.toml).
    #[arg(long, env = "WARRENMQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for durable state.
    #[arg(long, env = "WARRENMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// AMQP listen address.
    #[arg(long, env = "WARRENMQ_AMQP_ADDR")]
    pub amqp_addr: Option<SocketAddr>,
    /// Management HTTP listen address.
    #[arg(long, env = "WARRENMQ_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Prometheus metrics listen address.
    #[arg(long, env = "WARRENMQ_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "WARRENMQ_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log line format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, env = "WARRENMQ_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Queue type of declarations that name none: classic (default) or quorum.
    #[arg(long, env = "WARRENMQ_DEFAULT_QUEUE_TYPE")]
    pub default_queue_type: Option<String>,
    /// amqps listen address (used when --tls-cert and --tls-key are given).
    #[arg(long, env = "WARRENMQ_AMQPS_ADDR")]
    pub amqps_addr: Option<SocketAddr>,
    /// Management HTTPS listen address (needs --tls-cert and --tls-key).
    #[arg(long, env = "WARRENMQ_HTTPS_ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Server certificate chain (PEM); with --tls-key it turns the amqps listener on.
    #[arg(long, env = "WARRENMQ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "WARRENMQ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, env = "WARRENMQ_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Ask amqps clients for a certificate and verify it against --tls-ca.
    #[arg(long, env = "WARRENMQ_TLS_VERIFY_PEER")]
    pub tls_verify_peer: bool,
    /// With --tls-verify-peer: refuse amqps clients without a certificate.
    #[arg(long, env = "WARRENMQ_TLS_FAIL_IF_NO_PEER_CERT")]
    pub tls_fail_if_no_peer_cert: bool,
    /// This node's name (default warrenmq@<hostname>); keep it across restarts.
    #[arg(long, env = "WARRENMQ_NODE_NAME")]
    pub node_name: Option<String>,
    /// Inter-node listen address; setting it makes this node a cluster member.
    #[arg(long, env = "WARRENMQ_CLUSTER_ADDR")]
    pub cluster_addr: Option<SocketAddr>,
    /// The address peers reach --cluster-addr at (default: --cluster-addr).
    #[arg(long, env = "WARRENMQ_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Cluster addresses of the initial members, comma-separated.
    #[arg(long, env = "WARRENMQ_CLUSTER_PEERS", value_delimiter = ',')]
    pub cluster_peers: Option<Vec<String>>,
    /// File holding the shared cluster secret (default <data dir>/cluster.secret).
    #[arg(long, env = "WARRENMQ_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Raft election timeout, ms (failover time; default 3000).
    #[arg(long, env = "WARRENMQ_CLUSTER_ELECTION_TIMEOUT")]
    pub cluster_election_timeout: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Defaults ← file ← env/flags.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut cfg = match &args.config {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = &args.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = args.amqp_addr {
            cfg.amqp_addr = v;
        }
        if let Some(v) = args.http_addr {
            cfg.http_addr = v;
        }
        if let Some(v) = args.metrics_addr {
            cfg.metrics_addr = v;
        }
        if let Some(v) = &args.log_level {
            cfg.log_level = v.clone();
        }
        if let Some(v) = args.log_format {
            cfg.log_format = v;
        }
        if let Some(v) = &args.default_queue_type {
            cfg.default_queue_type = v.clone();
        }
        if let Some(v) = args.amqps_addr {
            cfg.amqps_addr = v;
        }
        if let Some(v) = args.https_addr {
            cfg.https_addr = Some(v);
        }
        if let Some(v) = &args.tls_cert {
            cfg.tls_cert = Some(v.clone());
        }
        if let Some(v) = &args.tls_key {
            cfg.tls_key = Some(v.clone());
        }
        if let Some(v) = &args.tls_ca {
            cfg.tls_ca = Some(v.clone());
        }
        // Boolean flags can only turn these on; the file may have set them already.
        cfg.tls_verify_peer |= args.tls_verify_peer;
        cfg.tls_fail_if_no_peer_cert |= args.tls_fail_if_no_peer_cert;
        if let Some(v) = &args.node_name {
            cfg.node_name = Some(v.clone());
        }
        if let Some(v) = args.cluster_addr {
            cfg.cluster_addr = Some(v);
        }
        if let Some(v) = &args.cluster_advertise {
            cfg.cluster_advertise = Some(v.clone());
        }
        if let Some(v) = &args.cluster_peers {
            cfg.cluster_peers = v
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
        }
        if let Some(v) = &args.cluster_secret_file {
            cfg.cluster_secret_file = Some(v.clone());
        }
        if let Some(v) = args.cluster_election_timeout {
            cfg.cluster_election_timeout = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frame_max != 0 && self.frame_max < crate::protocol::FRAME_MIN_SIZE {
            return Err(ConfigError::Invalid(format!(
                "frame_max must be 0 or at least {}",
                crate::protocol::FRAME_MIN_SIZE
            )));
        }
        if self.max_table_depth == 0 {
            return Err(ConfigError::Invalid(
                "max_table_depth must be at least 1".into(),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key must be set together".into(),
                ))
            }
            _ => {}
        }
        if !self.tls_enabled() {
            if self.https_addr.is_some() {
                return Err(ConfigError::Invalid(
                    "https_addr needs tls_cert and tls_key".into(),
                ));
            }
            if self.tls_verify_peer || self.tls_ca.is_some() {
                return Err(ConfigError::Invalid(
                    "tls_ca and tls_verify_peer need tls_cert and tls_key".into(),
                ));
            }
        }
        if self.tls_verify_peer && self.tls_ca.is_none() {
            return Err(ConfigError::Invalid(
                "tls_verify_peer needs tls_ca to verify client certificates against".into(),
            ));
        }
        if !crate::broker::vhosts::QUEUE_TYPES.contains(&self.default_queue_type.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "default_queue_type must be one of {}, not '{}'",
                crate::broker::vhosts::QUEUE_TYPES.join(", "),
                self.default_queue_type
            )));
        }
        if self.auth_mechanisms.is_empty() {
            return Err(ConfigError::Invalid(
                "auth_mechanisms must name at least one mechanism".into(),
            ));
        }
        if let Some(m) = self
            .auth_mechanisms
            .iter()
            .find(|m| !KNOWN_AUTH_MECHANISMS.contains(&m.as_str()))
        {
            return Err(ConfigError::Invalid(format!(
                "unknown auth mechanism '{m}' (known: {})",
                KNOWN_AUTH_MECHANISMS.join(", ")
            )));
        }
        if self.cluster_election_timeout < 150 {
            return Err(ConfigError::Invalid(
                "cluster_election_timeout must be at least 150 ms".into(),
            ));
        }
        if self.cluster_addr.is_none()
            && (!self.cluster_peers.is_empty() || self.cluster_advertise.is_some())
        {
            return Err(ConfigError::Invalid(
                "cluster_peers and cluster_advertise need cluster_addr".into(),
            ));
        }
        if self
            .cluster_addr
            .is_some_and(|a| a.ip().is_unspecified() || a.port() == 0)
            && self.cluster_advertise.is_none()
        {
            return Err(ConfigError::Invalid(
                "cluster_addr is a wildcard address or port 0: set cluster_advertise to the \
                 address other nodes reach this one at"
                    .into(),
            ));
        }
        if self
            .node_name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 255 || n.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid(
                "node_name must be 1 to 255 bytes without spaces".into(),
            ));
        }
        if self.tls_fail_if_no_peer_cert && !self.tls_verify_peer {
            return Err(ConfigError::Invalid(
                "tls_fail_if_no_peer_cert needs tls_verify_peer".into(),
            ));
        }
        Ok(())
    }

    /// TLS is configured: the amqps listener runs (and https, if `https_addr` is set).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// This node's name: the setting, or `warrenmq@<hostname>`.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(crate::cluster::default_node_name)
    }

    /// The cluster address peers use for this node.
    pub fn cluster_advertise(&self) -> Option<String> {
        self.cluster_advertise
            .clone()
            .or_else(|| self.cluster_addr.map(|a| a.to_string()))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/warrenmq.toml");
        let cfg = Config::from_file(&path).expect("etc/warrenmq.toml parses");
        cfg.validate().expect("etc/warrenmq.toml is valid");
        assert_eq!(cfg.amqp_addr, Config::default().amqp_addr);
        assert_eq!(
            cfg.memory_high_watermark,
            Config::default().memory_high_watermark
        );
        assert_eq!(cfg.disk_free_limit, Config::default().disk_free_limit);
        assert_eq!(cfg.auth_mechanisms, Config::default().auth_mechanisms);
        let bad = Config {
            auth_mechanisms: vec!["EXTERNAL".into()],
            ..Config::default()
        };
        assert!(bad.validate().is_err(), "unknown mechanisms are refused");
    }

    #[test]
    fn limits_parse_as_rabbitmq_writes_them() {
        let parse = |v: &str| -> Config {
            toml::from_str(&format!("memory_high_watermark = {v}")).expect(v)
        };
        assert_eq!(
            parse("0.4").memory_high_watermark,
            ResourceLimit::Relative(0.4)
        );
        assert_eq!(parse("1").memory_high_watermark, ResourceLimit::Absolute(1));
        assert_eq!(
            parse("\"512MiB\"").memory_high_watermark,
            ResourceLimit::Absolute(512 << 20)
        );
        assert_eq!(
            parse("\"2GB\"").memory_high_watermark,
            ResourceLimit::Absolute(2_000_000_000)
        );
        assert!(toml::from_str::<Config>("memory_high_watermark = \"2 parsecs\"").is_err());
        assert!(toml::from_str::<Config>("disk_free_limit = -1.0").is_err());
        assert_eq!(ResourceLimit::Relative(0.5).bytes(1000), 500);
    }
}
