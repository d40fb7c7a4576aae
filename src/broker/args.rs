//! Reading and comparing declaration arguments (field tables) the way RabbitMQ does:
//! integer types compare by value, and only the arguments that matter are compared for
//! equivalence.

use crate::protocol::{AMQPValue, FieldTable};

/// An integer argument of any integer wire type.
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

/// A string argument, long or short.
pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub fn get<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    args.inner().get(key)
}

/// Equal as RabbitMQ's equivalence check sees it: integers by value, strings by content.
pub fn values_equivalent(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (int_value(a), int_value(b)) {
        (Some(x), Some(y)) => return x == y,
        (None, None) => {}
        _ => return false,
    }
    match (str_value(a), str_value(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

/// Compare `keys` of two argument tables; returns the first that differs.
pub fn first_difference<'k>(
    old: &FieldTable,
    new: &FieldTable,
    keys: &[&'k str],
) -> Option<&'k str> {
    keys.iter()
        .copied()
        .find(|k| match (get(old, k), get(new, k)) {
            (None, None) => false,
            // Classic is the type a queue declared without one has.
            (None, Some(v)) | (Some(v), None)
                if *k == "x-queue-type" && str_value(v).as_deref() == Some("classic") =>
            {
                false
            }
            (Some(a), Some(b)) => !values_equivalent(a, b),
            _ => true,
        })
}

/// Queue arguments compared on redeclare (RabbitMQ's declare-time argument set).
pub const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-consumer-timeout",
];

/// Exchange arguments compared on redeclare.
pub const EXCHANGE_EQUIVALENCE_KEYS: &[&str] = &["alternate-exchange"];

/// RabbitMQ's name of a field type, for error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => "byte",
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => "short",
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) => "signedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "bytes",
        AMQPValue::Void => "void",
    }
}
