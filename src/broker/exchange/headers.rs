//! Headers exchange: match on message headers per the binding's `x-match`.
//!
//! Rules (RabbitMQ's): `x-match` is `all` (default), `any`, `all-with-x` or `any-with-x`,
//! a longstr; anything else is refused at bind time (406). Binding keys starting with `x-`
//! are ignored by `all`/`any` and considered by the `-with-x` forms; `x-match` itself never
//! is. A void binding value matches the header's presence. Values compare by type class, as
//! RabbitMQ does: integers of any width by value, `f`/`d` floats by value, everything else
//! only with the same type and value (the integer 1 never equals the string "1"). `all` with
//! no considered keys matches every message; `any` with none matches nothing.
//!
//! Bindings are indexed by header name and value, so routing looks up each message header
//! once instead of testing every binding. An `any` binding is indexed under each of its
//! keys, and a hit is a match. An `all` binding is indexed under one key, its anchor (the
//! one with the shortest list when it was bound, preferring values to presence), and a hit
//! there is checked against its other keys; so a common value such as `format=json` shared
//! by thousands of bindings costs nothing unless it is the only thing they ask for.

use super::fxhash::{FxHashMap, FxHasher};
use super::{Binding, Destination, Matcher};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{AMQPValue, FieldTable};
use std::hash::Hasher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

fn x_match(args: &FieldTable) -> AmqpResult<XMatch> {
    let s = match args.inner().get("x-match") {
        None => return Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        // Not on the wire in tables, but a binding built inside the broker may carry one.
        Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes(),
        Some(other) => {
            return Err(AmqpError::precondition(format!(
                "Invalid x-match field type {:?} (value {other:?}); expected longstr",
                other.get_type()
            )))
        }
    };
    match s {
        b"all" => Ok(XMatch::All),
        b"any" => Ok(XMatch::Any),
        b"all-with-x" => Ok(XMatch::AllWithX),
        b"any-with-x" => Ok(XMatch::AnyWithX),
        _ => Err(AmqpError::precondition(format!(
            "Invalid x-match field value {:?}; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(s)
        ))),
    }
}

/// RabbitMQ's type classes for header comparison.
enum Class<'a> {
    Int(i64),
    Float(f64),
    Other(&'a AMQPValue),
}

fn class(v: &AMQPValue) -> Class<'_> {
    match v {
        AMQPValue::ShortShortInt(x) => Class::Int(*x as i64),
        AMQPValue::ShortShortUInt(x) => Class::Int(*x as i64),
        AMQPValue::ShortInt(x) => Class::Int(*x as i64),
        AMQPValue::ShortUInt(x) => Class::Int(*x as i64),
        AMQPValue::LongInt(x) => Class::Int(*x as i64),
        AMQPValue::LongUInt(x) => Class::Int(*x as i64),
        AMQPValue::LongLongInt(x) => Class::Int(*x),
        AMQPValue::Float(x) => Class::Float(*x as f64),
        AMQPValue::Double(x) => Class::Float(*x),
        other => Class::Other(other),
    }
}

/// Does a message header value equal a (non-void) binding value?
pub fn header_eq(want: &AMQPValue, have: &AMQPValue) -> bool {
    match (class(want), class(have)) {
        (Class::Int(a), Class::Int(b)) => a == b,
        (Class::Float(a), Class::Float(b)) => a == b,
        (Class::Other(a), Class::Other(b)) => a == b,
        _ => false,
    }
}

/// A hash consistent with `header_eq` (equal values hash equally).
fn value_hash(v: &AMQPValue) -> u64 {
    let mut h = FxHasher::default();
    match class(v) {
        Class::Int(i) => {
            h.write_u8(0);
            h.write_u64(i as u64);
        }
        Class::Float(f) => {
            h.write_u8(1);
            h.write_u64(if f == 0.0 { 0 } else { f.to_bits() });
        }
        Class::Other(v) => {
            h.write_u8(2);
            h.write_u8(v.get_type().get_id() as u8);
            match v {
                AMQPValue::LongString(s) => h.write(s.as_bytes()),
                AMQPValue::ShortString(s) => h.write(s.as_str().as_bytes()),
                AMQPValue::Boolean(b) => h.write_u8(*b as u8),
                AMQPValue::Timestamp(t) => h.write_u64(*t),
                AMQPValue::ByteArray(b) => h.write(b.as_slice()),
                AMQPValue::DecimalValue(d) => {
                    h.write_u8(d.scale);
                    h.write_u64(d.value as u64);
                }
                // Arrays and tables: the type alone; equality sorts them out.
                _ => {}
            }
        }
    }
    h.finish()
}

type Id = u32;

struct Compiled {
    binding: Binding,
    any: bool,
    /// Considered (key, value) pairs.
    pairs: Vec<(String, AMQPValue)>,
    /// Which pairs are in the index: all of them for `any`, the anchor for `all`.
    indexed: Vec<usize>,
}

impl Compiled {
    /// Does a message with these headers satisfy every pair?
    fn all_match(&self, headers: &FieldTable) -> bool {
        self.pairs
            .iter()
            .all(|(k, want)| match headers.inner().get(k.as_str()) {
                None => false,
                Some(_) if matches!(want, AMQPValue::Void) => true,
                Some(have) => header_eq(want, have),
            })
    }
}

/// Bindings that want one header, by value.
#[derive(Default)]
struct KeyIndex {
    /// Void-valued: the header's presence is enough.
    presence: Vec<Id>,
    /// Value hash → groups of bindings wanting an equal value.
    by_value: FxHashMap<u64, Vec<(AMQPValue, Vec<Id>)>>,
}

impl KeyIndex {
    fn is_empty(&self) -> bool {
        self.presence.is_empty() && self.by_value.is_empty()
    }
}

#[derive(Default)]
pub struct HeadersMatcher {
    slots: Vec<Option<Compiled>>,
    free: Vec<Id>,
    /// Bindings by destination, to find one on unbind without a scan.
    by_destination: FxHashMap<DestKey, Vec<Id>>,
    index: FxHashMap<String, KeyIndex>,
    /// `all` bindings with no considered key: they match every message.
    always: Vec<Id>,
    count: usize,
}

#[derive(Hash, PartialEq, Eq)]
enum DestKey {
    Queue(usize),
    Exchange(String),
}

fn dest_key(d: &Destination) -> DestKey {
    match d {
        Destination::Queue(q) => DestKey::Queue(std::sync::Arc::as_ptr(q) as usize),
        Destination::Exchange(e) => DestKey::Exchange(e.clone()),
    }
}

fn remove_id(list: &mut Vec<Id>, id: Id) {
    if let Some(p) = list.iter().position(|x| *x == id) {
        list.swap_remove(p);
    }
}

impl HeadersMatcher {
    /// How many bindings a message carrying this pair would reach through the index;
    /// presence is counted as dearer than a value, as more messages carry the header.
    fn anchor_cost(&self, k: &str, v: &AMQPValue) -> usize {
        let Some(ki) = self.index.get(k) else {
            return if matches!(v, AMQPValue::Void) { 1 } else { 0 };
        };
        if matches!(v, AMQPValue::Void) {
            return 1 + 4 * ki.presence.len();
        }
        ki.by_value
            .get(&value_hash(v))
            .and_then(|groups| groups.iter().find(|(g, _)| header_eq(g, v)))
            .map_or(0, |(_, ids)| ids.len())
            + ki.presence.len()
    }

    fn index_pair(&mut self, k: &str, v: &AMQPValue, id: Id) {
        let ki = self.index.entry(k.to_string()).or_default();
        if matches!(v, AMQPValue::Void) {
            ki.presence.push(id);
            return;
        }
        let groups = ki.by_value.entry(value_hash(v)).or_default();
        match groups.iter_mut().find(|(g, _)| header_eq(g, v)) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((v.clone(), vec![id])),
        }
    }

    fn unindex_pair(&mut self, k: &str, v: &AMQPValue, id: Id) {
        let Some(ki) = self.index.get_mut(k) else {
            return;
        };
        if matches!(v, AMQPValue::Void) {
            remove_id(&mut ki.presence, id);
        } else {
            let h = value_hash(v);
            if let Some(groups) = ki.by_value.get_mut(&h) {
                if let Some(g) = groups.iter().position(|(g, _)| header_eq(g, v)) {
                    remove_id(&mut groups[g].1, id);
                    if groups[g].1.is_empty() {
                        groups.swap_remove(g);
                    }
                }
                if groups.is_empty() {
                    ki.by_value.remove(&h);
                }
            }
        }
        if ki.is_empty() {
            self.index.remove(k);
        }
    }

    fn find(&self, b: &Binding) -> Option<Id> {
        self.by_destination
            .get(&dest_key(&b.destination))?
            .iter()
            .copied()
            .find(|id| {
                self.slots[*id as usize]
                    .as_ref()
                    .is_some_and(|c| &c.binding == b)
            })
    }
}

impl Matcher for HeadersMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        let mode = x_match(&b.arguments)?;
        if self.find(&b).is_some() {
            return Ok(false);
        }
        let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
        let pairs: Vec<(String, AMQPValue)> = b
            .arguments
            .inner()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k != "x-match" && (with_x || !k.starts_with("x-"))
            })
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        let any = matches!(mode, XMatch::Any | XMatch::AnyWithX);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as Id
            }
        };
        let indexed: Vec<usize> = if any {
            (0..pairs.len()).collect()
        } else {
            (0..pairs.len())
                .min_by_key(|i| self.anchor_cost(&pairs[*i].0, &pairs[*i].1))
                .into_iter()
                .collect()
        };
        for i in &indexed {
            let (k, v) = &pairs[*i];
            self.index_pair(k, v, id);
        }
        if pairs.is_empty() && !any {
            self.always.push(id);
        }
        self.by_destination
            .entry(dest_key(&b.destination))
            .or_default()
            .push(id);
        self.slots[id as usize] = Some(Compiled {
            binding: b,
            any,
            pairs,
            indexed,
        });
        self.count += 1;
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let Some(id) = self.find(b) else {
            return false;
        };
        let c = self.slots[id as usize].take().expect("found");
        for i in &c.indexed {
            let (k, v) = &c.pairs[*i];
            self.unindex_pair(k, v, id);
        }
        remove_id(&mut self.always, id);
        let dk = dest_key(&c.binding.destination);
        if let Some(ids) = self.by_destination.get_mut(&dk) {
            remove_id(ids, id);
            if ids.is_empty() {
                self.by_destination.remove(&dk);
            }
        }
        self.free.push(id);
        self.count -= 1;
        true
    }

    fn route(&self, _routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let dest = |id: Id| {
            self.slots[id as usize]
                .as_ref()
                .expect("indexed binding exists")
                .binding
                .destination
                .clone()
        };
        out.extend(self.always.iter().map(|id| dest(*id)));
        let Some(headers) = headers else {
            return;
        };
        // An `all` binding is reached once (through its anchor) and checked; an `any`
        // binding may be reached through several keys, so those hits are deduplicated.
        let mut any_hits: Vec<Id> = Vec::new();
        let mut hit = |ids: &[Id], out: &mut Vec<Destination>| {
            for id in ids {
                let c = self.slots[*id as usize].as_ref().expect("indexed");
                if c.any {
                    any_hits.push(*id);
                } else if c.all_match(headers) {
                    out.push(c.binding.destination.clone());
                }
            }
        };
        for (k, have) in headers.inner() {
            let Some(ki) = self.index.get(k.as_str()) else {
                continue;
            };
            hit(&ki.presence, out);
            if let Some(groups) = ki.by_value.get(&value_hash(have)) {
                for (want, ids) in groups {
                    if header_eq(want, have) {
                        hit(ids, out);
                    }
                }
            }
        }
        any_hits.sort_unstable();
        any_hits.dedup();
        out.extend(any_hits.into_iter().map(dest));
    }

    fn bindings(&self) -> Vec<Binding> {
        self.slots
            .iter()
            .flatten()
            .map(|c| c.binding.clone())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.as_bytes().to_vec().into())
    }

    fn b(n: usize, args: FieldTable) -> Binding {
        Binding {
            destination: Destination::Exchange(format!("d{n}")),
            routing_key: String::new(),
            arguments: args,
        }
    }

    fn routed(m: &HeadersMatcher, headers: &[(&str, AMQPValue)]) -> Vec<String> {
        let mut out = Vec::new();
        m.route("", Some(&table(headers)), &mut out);
        let mut v: Vec<String> = out.iter().map(|d| format!("{d:?}")).collect();
        v.sort();
        v
    }

    /// The straightforward per-binding definition the index must agree with.
    fn reference(args: &FieldTable, headers: &FieldTable) -> bool {
        let mode = x_match(args).unwrap();
        let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
        let all = matches!(mode, XMatch::All | XMatch::AllWithX);
        for (k, want) in args.inner() {
            if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
                continue;
            }
            let hit = match (want, headers.inner().get(k)) {
                (AMQPValue::Void, Some(_)) => true,
                (_, Some(have)) => header_eq(want, have),
                (_, None) => false,
            };
            if all != hit {
                return !all;
            }
        }
        all
    }

    #[test]
    fn modes_typed_values_and_presence() {
        let mut m = HeadersMatcher::default();
        let bindings = [
            table(&[("model", s("llama")), ("gpu", AMQPValue::LongInt(1))]),
            table(&[
                ("x-match", s("any")),
                ("model", s("llama")),
                ("size", s("7b")),
            ]),
            table(&[("x-match", s("any")), ("x-tenant", s("a"))]),
            table(&[("x-match", s("any-with-x")), ("x-tenant", s("a"))]),
            table(&[
                ("x-match", s("all-with-x")),
                ("x-tenant", s("a")),
                ("m", AMQPValue::Void),
            ]),
            table(&[("x-match", s("all")), ("x-tenant", s("b"))]),
            table(&[("gpu", s("1"))]),
        ];
        for (i, a) in bindings.iter().enumerate() {
            assert!(m.bind(b(i, a.clone())).unwrap());
        }
        assert!(!m.bind(b(0, bindings[0].clone())).unwrap());
        // d5 has only x- keys under `all`: it matches everything.
        assert_eq!(routed(&m, &[]), ["exchange d5"]);
        // Integer width does not matter; the string "1" is not the integer 1.
        assert_eq!(
            routed(
                &m,
                &[("model", s("llama")), ("gpu", AMQPValue::ShortShortUInt(1))]
            ),
            ["exchange d0", "exchange d1", "exchange d5"]
        );
        assert_eq!(
            routed(&m, &[("gpu", s("1"))]),
            ["exchange d5", "exchange d6"]
        );
        assert_eq!(
            routed(
                &m,
                &[("x-tenant", s("a")), ("m", AMQPValue::Boolean(false))]
            ),
            ["exchange d3", "exchange d4", "exchange d5"]
        );
        assert!(m.unbind(&b(5, bindings[5].clone())));
        assert!(!m.unbind(&b(5, bindings[5].clone())));
        assert!(routed(&m, &[]).is_empty());
        for (i, a) in bindings.iter().enumerate().filter(|(i, _)| *i != 5) {
            assert!(m.unbind(&b(i, a.clone())));
        }
        assert!(m.is_empty() && m.index.is_empty() && m.by_destination.is_empty());
    }

    #[test]
    fn bad_x_match_is_406() {
        let mut m = HeadersMatcher::default();
        for bad in [s("every"), AMQPValue::LongInt(1)] {
            let e = m.bind(b(0, table(&[("x-match", bad)]))).unwrap_err();
            assert_eq!(e.code as u16, 406, "{e:?}");
        }
        assert!(m.is_empty());
    }

    #[test]
    fn index_agrees_with_reference() {
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;
        let value = prop_oneof![
            Just(s("a")),
            Just(s("1")),
            Just(AMQPValue::LongInt(1)),
            Just(AMQPValue::LongLongInt(1)),
            Just(AMQPValue::Double(1.0)),
            Just(AMQPValue::Float(1.0)),
            Just(AMQPValue::Boolean(true)),
            Just(AMQPValue::Void),
        ];
        let key = prop_oneof![Just("k1"), Just("k2"), Just("x-k")];
        let mode = prop_oneof![
            Just(None),
            Just(Some("all")),
            Just(Some("any")),
            Just(Some("all-with-x")),
            Just(Some("any-with-x")),
        ];
        let entries = prop::collection::vec((key.clone(), value.clone()), 0..4);
        let binding = (mode, entries.clone());
        let strategy = (
            prop::collection::vec(binding, 1..12),
            prop::collection::vec(entries, 1..8),
        );
        TestRunner::default()
            .run(&strategy, |(bindings, messages)| {
                let mut m = HeadersMatcher::default();
                let mut args = Vec::new();
                for (i, (mode, entries)) in bindings.iter().enumerate() {
                    let mut t = FieldTable::default();
                    for (k, v) in entries {
                        t.insert((*k).into(), v.clone());
                    }
                    if let Some(mode) = mode {
                        t.insert("x-match".into(), s(mode));
                    }
                    m.bind(b(i, t.clone())).unwrap();
                    args.push(t);
                }
                for msg in &messages {
                    let mut h = FieldTable::default();
                    for (k, v) in msg {
                        h.insert((*k).into(), v.clone());
                    }
                    let mut got = Vec::new();
                    m.route("", Some(&h), &mut got);
                    let mut got: Vec<String> = got.iter().map(|d| format!("{d:?}")).collect();
                    got.sort();
                    let mut want: Vec<String> = args
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| reference(a, &h))
                        .map(|(i, _)| format!("exchange d{i}"))
                        .collect();
                    want.sort();
                    prop_assert_eq!(got, want);
                }
                Ok(())
            })
            .unwrap();
    }
}
