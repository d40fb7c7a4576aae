//! AMQP field tables and message properties as RabbitMQ's management API writes them:
//! plain JSON values (numbers, strings, booleans, objects, arrays), and back.

use crate::protocol::{AMQPValue, BasicProperties, FieldArray, FieldTable, LongString};
use serde_json::{json, Map, Number, Value};

pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(x) => json!(x),
        AMQPValue::ShortShortUInt(x) => json!(x),
        AMQPValue::ShortInt(x) => json!(x),
        AMQPValue::ShortUInt(x) => json!(x),
        AMQPValue::LongInt(x) => json!(x),
        AMQPValue::LongUInt(x) => json!(x),
        AMQPValue::LongLongInt(x) => json!(x),
        AMQPValue::Float(x) => Number::from_f64(*x as f64).map_or(Value::Null, Value::Number),
        AMQPValue::Double(x) => Number::from_f64(*x).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            json!(d.value as f64 / 10f64.powi(d.scale as i32))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
            .collect(),
    )
}

pub fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(json_to_value(x));
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(o) => AMQPValue::FieldTable(map_to_table(o)),
    }
}

pub fn map_to_table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(k.as_str().into(), json_to_value(v));
    }
    t
}

/// An `arguments` field: an object (or absent/null → empty).
pub fn json_to_table(v: Option<&Value>) -> Result<FieldTable, String> {
    match v {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(o)) => Ok(map_to_table(o)),
        Some(other) => Err(format!("arguments must be an object, got {other}")),
    }
}

pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v));
        }
    };
    s(
        "content_type",
        p.content_type().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "content_encoding",
        p.content_encoding()
            .as_ref()
            .map(|x| x.as_str().to_string()),
    );
    s(
        "correlation_id",
        p.correlation_id().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "reply_to",
        p.reply_to().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "expiration",
        p.expiration().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "message_id",
        p.message_id().as_ref().map(|x| x.as_str().to_string()),
    );
    s("type", p.kind().as_ref().map(|x| x.as_str().to_string()));
    s(
        "user_id",
        p.user_id().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "app_id",
        p.app_id().as_ref().map(|x| x.as_str().to_string()),
    );
    s(
        "cluster_id",
        p.cluster_id().as_ref().map(|x| x.as_str().to_string()),
    );
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), json!(d));
    }
    if let Some(x) = p.priority() {
        m.insert("priority".into(), json!(x));
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), json!(t));
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    Value::Object(m)
}

/// Message properties from a publish request; unknown keys are refused (400).
pub fn json_to_properties(v: Option<&Value>) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(v) = v else { return Ok(p) };
    let Some(o) = v.as_object() else {
        return Err("properties must be an object".into());
    };
    for (k, v) in o {
        let text = || {
            v.as_str()
                .map(|s| s.into())
                .ok_or_else(|| format!("property {k} must be a string"))
        };
        let int = || {
            v.as_u64()
                .ok_or_else(|| format!("property {k} must be an integer"))
        };
        p = match k.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "message_id" => p.with_message_id(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "cluster_id" => p.with_cluster_id(text()?),
            "delivery_mode" => p.with_delivery_mode(int()?.min(2) as u8),
            "priority" => p.with_priority(int()?.min(255) as u8),
            "timestamp" => p.with_timestamp(int()?),
            "headers" => match v {
                Value::Object(o) => p.with_headers(map_to_table(o)),
                _ => return Err("headers must be an object".into()),
            },
            other => return Err(format!("unknown property '{other}'")),
        };
    }
    Ok(p)
}
