//! Policies: per-vhost (pattern, apply-to, priority, definition) records that set queue and
//! exchange behaviour without client arguments, as RabbitMQ's.
//!
//! For one queue or exchange the matching policy with the highest priority applies (one
//! policy at a time, ties broken by name). Queue arguments win over policies as in RabbitMQ:
//! for dead-letter-exchange, dead-letter-routing-key and overflow the argument is used when
//! present; for the numeric limits message-ttl, expires, max-length, max-length-bytes and
//! delivery-limit the smaller of the two applies.
//!
//! Operator policies are a second set, written by administrators only and limited to numeric
//! queue limits. The matching operator policy is merged with the matching user policy, the
//! smaller value winning where both set a key, so operators can cap what users ask for but
//! never raise it.

use crate::broker::args::{get, int_value};
use crate::protocol::{AMQPValue, FieldTable, LongString};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    Queues,
    /// RabbitMQ 3.12's per-type choices: a policy for one queue type only.
    ClassicQueues,
    QuorumQueues,
    Streams,
    Exchanges,
    All,
}

/// What a policy is looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Exchange,
    /// A queue of this type (`classic`, `quorum`, `stream`).
    Queue(&'a str),
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queues" => Some(Self::Queues),
            "classic_queues" => Some(Self::ClassicQueues),
            "quorum_queues" => Some(Self::QuorumQueues),
            "streams" => Some(Self::Streams),
            "exchanges" => Some(Self::Exchanges),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queues => "queues",
            Self::ClassicQueues => "classic_queues",
            Self::QuorumQueues => "quorum_queues",
            Self::Streams => "streams",
            Self::Exchanges => "exchanges",
            Self::All => "all",
        }
    }

    fn applies_to(self, target: Target) -> bool {
        match (self, target) {
            (Self::All, _)
            | (Self::Exchanges, Target::Exchange)
            | (Self::Queues, Target::Queue(_)) => true,
            (Self::ClassicQueues, Target::Queue(kind)) => kind == "classic",
            (Self::QuorumQueues, Target::Queue(kind)) => kind == "quorum",
            (Self::Streams, Target::Queue(kind)) => kind == "stream",
            _ => false,
        }
    }
}

/// A policy as stored and exported in definitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyRecord {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: ApplyTo,
    pub definition: Map<String, Value>,
    pub priority: i64,
}

/// User policies (`/api/policies`) or operator policies (`/api/operator-policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    User,
    Operator,
}

impl PolicyKind {
    /// Where the records are kept in the store's meta tree; for operator policies also
    /// the runtime-parameter component they are exported under, as RabbitMQ does.
    pub fn meta(self) -> &'static str {
        match self {
            Self::User => "policy",
            Self::Operator => "operator_policy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub record: PolicyRecord,
    re: Regex,
}

/// Policy keys that apply to queues, with the queue argument each stands for.
const QUEUE_KEYS: &[(&str, &str)] = &[
    ("message-ttl", "x-message-ttl"),
    ("expires", "x-expires"),
    ("max-length", "x-max-length"),
    ("max-length-bytes", "x-max-length-bytes"),
    ("overflow", "x-overflow"),
    ("dead-letter-exchange", "x-dead-letter-exchange"),
    ("dead-letter-routing-key", "x-dead-letter-routing-key"),
    ("delivery-limit", "x-delivery-limit"),
    ("dead-letter-strategy", "x-dead-letter-strategy"),
];

/// The only keys an operator policy may set (RabbitMQ 3.10's list).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Numeric keys where the smaller of argument and policy applies.
const MIN_KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-delivery-limit",
];

impl Policy {
    /// Validate a policy record (400-worthy errors are returned as text).
    pub fn new(record: PolicyRecord, kind: PolicyKind) -> Result<Self, String> {
        let re = Regex::new(&record.pattern)
            .map_err(|e| format!("invalid pattern '{}': {e}", record.pattern))?;
        if record.definition.is_empty() {
            return Err("policy definition must not be empty".into());
        }
        if kind == PolicyKind::Operator {
            let unknown: Vec<&str> = record
                .definition
                .keys()
                .map(String::as_str)
                .filter(|k| !OPERATOR_KEYS.contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "Validation failed: {unknown:?} are not recognised operator policy \
                     settings (allowed: {})",
                    OPERATOR_KEYS.join(", ")
                ));
            }
        }
        for (k, v) in &record.definition {
            let ok = match k.as_str() {
                "message-ttl"
                | "max-length"
                | "max-length-bytes"
                | "delivery-limit"
                | "max-in-memory-length"
                | "max-in-memory-bytes" => v.as_i64().is_some_and(|n| n >= 0),
                "expires" => v.as_i64().is_some_and(|n| n > 0),
                "overflow" => matches!(
                    v.as_str(),
                    Some("drop-head" | "reject-publish" | "reject-publish-dlx")
                ),
                "dead-letter-strategy" => {
                    matches!(v.as_str(), Some("at-most-once" | "at-least-once"))
                }
                "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange" => {
                    v.is_string()
                }
                // Other keys (ha-mode, queue-mode, federation…) are kept but have no effect.
                _ => true,
            };
            if !ok {
                return Err(format!("invalid value for policy key '{k}': {v}"));
            }
        }
        Ok(Policy { record, re })
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    fn matches(&self, name: &str) -> bool {
        self.re.is_match(name)
    }
}

/// The policy that applies to the queue or exchange named `name`.
pub fn matching<'a>(policies: &'a [Policy], name: &str, target: Target) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.record.apply_to.applies_to(target) && p.matches(name))
        .max_by(|a, b| {
            a.record
                .priority
                .cmp(&b.record.priority)
                .then_with(|| b.record.name.cmp(&a.record.name))
        })
}

fn json_to_arg(v: &Value) -> Option<AMQPValue> {
    match v {
        Value::Number(n) => n.as_i64().map(AMQPValue::LongLongInt),
        Value::String(s) => Some(AMQPValue::LongString(LongString::from(
            s.as_bytes().to_vec(),
        ))),
        _ => None,
    }
}

/// The definition in force for a queue: its user policy's, merged with its operator
/// policy's, the smaller number winning where both set a key (RabbitMQ's
/// `effective_policy_definition`).
pub fn effective_definition(
    policy: Option<&Policy>,
    operator: Option<&Policy>,
) -> Map<String, Value> {
    let mut out = policy
        .map(|p| p.record.definition.clone())
        .unwrap_or_default();
    for (k, ov) in operator.iter().flat_map(|o| o.record.definition.iter()) {
        let merged = match (out.get(k).and_then(Value::as_i64), ov.as_i64()) {
            (Some(p), Some(o)) => Value::from(p.min(o)),
            _ => ov.clone(),
        };
        out.insert(k.clone(), merged);
    }
    out
}

/// A queue's effective arguments: its own, completed and limited by its policies.
pub fn effective_queue_arguments(
    arguments: &FieldTable,
    policy: Option<&Policy>,
    operator: Option<&Policy>,
) -> FieldTable {
    if policy.is_none() && operator.is_none() {
        return arguments.clone();
    }
    let definition = effective_definition(policy, operator);
    let mut out = arguments.clone();
    for (key, arg) in QUEUE_KEYS {
        let Some(pv) = definition.get(*key).and_then(json_to_arg) else {
            continue;
        };
        let merged = match get(arguments, arg) {
            None => pv,
            Some(av) if MIN_KEYS.contains(arg) => match (int_value(av), int_value(&pv)) {
                (Some(a), Some(p)) => AMQPValue::LongLongInt(a.min(p)),
                _ => av.clone(),
            },
            Some(av) => av.clone(),
        };
        out.insert((*arg).into(), merged);
    }
    out
}

/// The alternate exchange of an exchange: its argument, else its policy's.
pub fn effective_alternate_exchange(
    arguments: &FieldTable,
    policy: Option<&Policy>,
) -> Option<String> {
    get(arguments, "alternate-exchange")
        .and_then(crate::broker::args::str_value)
        .or_else(|| {
            policy
                .and_then(|p| p.record.definition.get("alternate-exchange"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(name: &str, pattern: &str, priority: i64, def: Value) -> PolicyRecord {
        PolicyRecord {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: ApplyTo::Queues,
            definition: def.as_object().unwrap().clone(),
            priority,
        }
    }

    fn policy(name: &str, pattern: &str, priority: i64, def: Value) -> Policy {
        Policy::new(record(name, pattern, priority, def), PolicyKind::User).unwrap()
    }

    fn operator(def: Value) -> Policy {
        Policy::new(record("op", ".*", 0, def), PolicyKind::Operator).unwrap()
    }

    #[test]
    fn highest_priority_wins() {
        let ps = vec![
            policy("low", "^jobs", 0, json!({"max-length": 10})),
            policy("high", "^jobs\\.", 5, json!({"max-length": 20})),
        ];
        let q = Target::Queue("classic");
        assert_eq!(matching(&ps, "jobs.gpu", q).unwrap().name(), "high");
        assert_eq!(matching(&ps, "jobsx", q).unwrap().name(), "low");
        assert!(matching(&ps, "other", q).is_none());
        assert!(matching(&ps, "jobs.gpu", Target::Exchange).is_none());
    }

    #[test]
    fn per_type_policies_apply_to_their_queue_type_only() {
        let typed = |name: &str, apply_to: &str, priority| {
            let mut r = record(name, "^jobs", priority, json!({"max-length": 1}));
            r.apply_to = ApplyTo::parse(apply_to).unwrap();
            Policy::new(r, PolicyKind::User).unwrap()
        };
        let ps = vec![
            typed("any", "queues", 0),
            typed("cq", "classic_queues", 1),
            typed("qq", "quorum_queues", 2),
            typed("sq", "streams", 3),
        ];
        let name = |kind| matching(&ps, "jobs", Target::Queue(kind)).map(Policy::name);
        assert_eq!(name("classic"), Some("cq"));
        assert_eq!(name("quorum"), Some("qq"));
        assert_eq!(name("stream"), Some("sq"));
        assert!(matching(&ps, "jobs", Target::Exchange).is_none());
        assert_eq!(
            ApplyTo::parse("quorum_queues").unwrap().as_str(),
            "quorum_queues"
        );
        assert!(ApplyTo::parse("quorum").is_none());
    }

    #[test]
    fn arguments_win() {
        let p = policy(
            "p",
            ".*",
            0,
            json!({"max-length": 10, "message-ttl": 5000, "dead-letter-exchange": "dlx", "overflow": "reject-publish"}),
        );
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(100));
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("mine".into()),
        );
        let eff = effective_queue_arguments(&args, Some(&p), None);
        assert_eq!(get(&eff, "x-max-length").and_then(int_value), Some(10));
        assert_eq!(get(&eff, "x-message-ttl").and_then(int_value), Some(1000));
        assert_eq!(
            get(&eff, "x-dead-letter-exchange").and_then(crate::broker::args::str_value),
            Some("mine".into())
        );
        assert_eq!(
            get(&eff, "x-overflow").and_then(crate::broker::args::str_value),
            Some("reject-publish".into())
        );
    }

    #[test]
    fn bad_definitions_refused() {
        let rec = |def: Value| PolicyRecord {
            vhost: "/".into(),
            name: "p".into(),
            pattern: ".*".into(),
            apply_to: ApplyTo::All,
            definition: def.as_object().unwrap().clone(),
            priority: 0,
        };
        let user = |def| Policy::new(rec(def), PolicyKind::User);
        assert!(user(json!({"max-length": -1})).is_err());
        assert!(user(json!({"overflow": "nope"})).is_err());
        assert!(user(json!({})).is_err());
        assert!(Policy::new(
            PolicyRecord {
                pattern: "(".into(),
                ..rec(json!({"expires": 1}))
            },
            PolicyKind::User
        )
        .is_err());
        // Operator policies take numeric queue limits only.
        let op = |def| Policy::new(rec(def), PolicyKind::Operator);
        assert!(op(json!({"dead-letter-exchange": "x"})).is_err());
        assert!(op(json!({"overflow": "reject-publish"})).is_err());
        assert!(op(json!({"expires": 0})).is_err());
        assert!(op(json!({"max-in-memory-length": 5, "delivery-limit": 3})).is_ok());
    }

    #[test]
    fn operator_policy_caps_but_never_raises() {
        let user = policy(
            "up",
            ".*",
            0,
            json!({"max-length": 3, "message-ttl": 90000, "dead-letter-exchange": "dlx"}),
        );
        let op = operator(json!({"max-length": 5, "message-ttl": 60000, "expires": 1000}));
        // As RabbitMQ reports it: the smaller of each, the rest from whichever sets it.
        assert_eq!(
            Value::Object(effective_definition(Some(&user), Some(&op))),
            json!({"max-length": 3, "message-ttl": 60000, "expires": 1000,
                   "dead-letter-exchange": "dlx"})
        );
        assert_eq!(
            Value::Object(effective_definition(None, Some(&op))),
            json!({"max-length": 5, "message-ttl": 60000, "expires": 1000})
        );
        // A queue argument below the cap stays; one above it is cut to the cap.
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(30000));
        args.insert("x-expires".into(), AMQPValue::LongInt(5000));
        let eff = effective_queue_arguments(&args, Some(&user), Some(&op));
        assert_eq!(get(&eff, "x-message-ttl").and_then(int_value), Some(30000));
        assert_eq!(get(&eff, "x-expires").and_then(int_value), Some(1000));
        assert_eq!(get(&eff, "x-max-length").and_then(int_value), Some(3));
    }
}
