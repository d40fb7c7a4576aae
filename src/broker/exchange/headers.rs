//! Headers exchange: match on message headers per the binding's `x-match`.

use super::{Binding, Destination, Matcher};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{AMQPValue, FieldTable};

#[derive(Debug, Clone, Copy)]
enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn x_match(args: &FieldTable) -> AmqpResult<XMatch> {
    match args.inner().get("x-match") {
        None => Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => match s.as_bytes() {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            _ => Err(AmqpError::precondition(format!(
                "Invalid x-match field value {:?}; expected all, any, all-with-x, or any-with-x",
                String::from_utf8_lossy(s.as_bytes())
            ))),
        },
        Some(AMQPValue::ShortString(s)) => x_match_str(s.as_str()),
        Some(other) => Err(AmqpError::precondition(format!(
            "Invalid x-match field type {other:?} (value {other:?}); expected longstr"
        ))),
    }
}

fn x_match_str(s: &str) -> AmqpResult<XMatch> {
    let mut t = FieldTable::default();
    t.insert(
        "x-match".into(),
        AMQPValue::LongString(s.as_bytes().to_vec().into()),
    );
    x_match(&t)
}

/// Does a message with `headers` match a binding with `args`?
fn matches(mode: XMatch, args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let all = matches!(mode, XMatch::All | XMatch::AllWithX);
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    for (k, want) in args.inner() {
        if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
            continue;
        }
        let hit = match (want, headers.get(k)) {
            (AMQPValue::Void, Some(_)) => true,
            (_, Some(have)) => have == want,
            (_, None) => false,
        };
        if all && !hit {
            return false;
        }
        if !all && hit {
            return true;
        }
    }
    // all: every considered key matched (vacuously true); any: none did.
    all
}

#[derive(Default)]
pub struct HeadersMatcher {
    bindings: Vec<(XMatchMode, Binding)>,
}

#[derive(Clone, Copy)]
struct XMatchMode(XMatch);

impl Matcher for HeadersMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        let mode = x_match(&b.arguments)?;
        if self.bindings.iter().any(|(_, x)| x == &b) {
            return Ok(false);
        }
        self.bindings.push((XMatchMode(mode), b));
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|(_, x)| x != b);
        before != self.bindings.len()
    }

    fn route(&self, _routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        for (mode, b) in &self.bindings {
            if matches(mode.0, &b.arguments, headers) {
                out.push(b.destination.clone());
            }
        }
    }

    fn bindings(&self) -> Vec<Binding> {
        self.bindings.iter().map(|(_, b)| b.clone()).collect()
    }

    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}
