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
//! by thousands of bindings costs nothing unless it is the only thing they ask for. For
//! the common two-key binding the other key's id and value hash sit in the posting itself,
//! so a candidate that does not match is rejected without reading the binding.

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
type KeyId = u32;

struct Compiled {
    binding: Binding,
    any: bool,
    /// Considered pairs: key id, key, value.
    pairs: Vec<(KeyId, String, AMQPValue)>,
    /// Which pairs are in the index: all of them for `any`, the anchor for `all`.
    indexed: Vec<usize>,
}

/// The message's headers that some binding names: key id, value hash, value.
type Present<'m> = [(KeyId, u64, &'m AMQPValue)];

fn find<'p, 'm>(present: &'p Present<'m>, key: KeyId) -> Option<&'p (KeyId, u64, &'m AMQPValue)> {
    present.iter().find(|(k, _, _)| *k == key)
}

impl Compiled {
    /// Does the message satisfy every pair but the anchor (whose hit brought us here)?
    fn all_match(&self, present: &Present<'_>) -> bool {
        let anchor = self.indexed.first().copied();
        self.pairs.iter().enumerate().all(|(i, (key, _, want))| {
            Some(i) == anchor
                || match find(present, *key) {
                    None => false,
                    Some(_) if matches!(want, AMQPValue::Void) => true,
                    Some((_, _, have)) => header_eq(want, have),
                }
        })
    }
}

/// What a hit on a posting still has to check, kept inline so that a candidate that does
/// not match is rejected without touching the binding itself.
#[derive(Clone, Copy)]
enum Check {
    /// `any` binding, or `all` binding with nothing besides its anchor: a hit is a match.
    Nothing,
    /// `all` binding with one more pair: that key present, with a value of this hash
    /// (confirmed on the binding when the hash agrees), or merely present if `void`.
    One { key: KeyId, hash: u64, void: bool },
    /// `all` binding with more pairs: check them all on the binding.
    Full,
}

#[derive(Clone, Copy)]
struct Posting {
    id: Id,
    check: Check,
}

/// One header name used by some binding: its id and the bindings indexed under it.
struct KeyEntry {
    id: KeyId,
    /// How many binding pairs name this key (the entry goes when none does).
    uses: usize,
    /// Void-valued: the header's presence is enough.
    presence: Vec<Posting>,
    /// Value hash → groups of postings wanting an equal value.
    by_value: FxHashMap<u64, Vec<(AMQPValue, Vec<Posting>)>>,
}

#[derive(Default)]
pub struct HeadersMatcher {
    slots: Vec<Option<Compiled>>,
    free: Vec<Id>,
    /// Bindings by destination, to find one on unbind without a scan.
    by_destination: FxHashMap<DestKey, Vec<Id>>,
    keys: FxHashMap<String, KeyEntry>,
    free_keys: Vec<KeyId>,
    next_key: KeyId,
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

fn remove_posting(list: &mut Vec<Posting>, id: Id) {
    if let Some(p) = list.iter().position(|x| x.id == id) {
        list.swap_remove(p);
    }
}

impl HeadersMatcher {
    /// The id of a key, registered (one more use) if new.
    fn use_key(&mut self, k: &str) -> KeyId {
        if let Some(e) = self.keys.get_mut(k) {
            e.uses += 1;
            return e.id;
        }
        let id = self.free_keys.pop().unwrap_or_else(|| {
            self.next_key += 1;
            self.next_key - 1
        });
        let entry = KeyEntry {
            id,
            uses: 1,
            presence: Vec::new(),
            by_value: FxHashMap::default(),
        };
        self.keys.insert(k.to_string(), entry);
        id
    }

    fn release_key(&mut self, k: &str) {
        if let Some(e) = self.keys.get_mut(k) {
            e.uses -= 1;
            if e.uses == 0 {
                self.free_keys.push(e.id);
                self.keys.remove(k);
            }
        }
    }

    /// How many bindings a message carrying this pair would reach through the index;
    /// presence is counted as dearer than a value, as more messages carry the header.
    fn anchor_cost(&self, k: &str, v: &AMQPValue) -> usize {
        let Some(e) = self.keys.get(k) else {
            return usize::from(matches!(v, AMQPValue::Void));
        };
        if matches!(v, AMQPValue::Void) {
            return 1 + 4 * e.presence.len();
        }
        e.by_value
            .get(&value_hash(v))
            .and_then(|groups| groups.iter().find(|(g, _)| header_eq(g, v)))
            .map_or(0, |(_, ids)| ids.len())
            + e.presence.len()
    }

    fn index_pair(&mut self, k: &str, v: &AMQPValue, p: Posting) {
        let e = self.keys.get_mut(k).expect("key registered");
        if matches!(v, AMQPValue::Void) {
            e.presence.push(p);
            return;
        }
        let groups = e.by_value.entry(value_hash(v)).or_default();
        match groups.iter_mut().find(|(g, _)| header_eq(g, v)) {
            Some((_, list)) => list.push(p),
            None => groups.push((v.clone(), vec![p])),
        }
    }

    fn unindex_pair(&mut self, k: &str, v: &AMQPValue, id: Id) {
        let Some(e) = self.keys.get_mut(k) else {
            return;
        };
        if matches!(v, AMQPValue::Void) {
            remove_posting(&mut e.presence, id);
            return;
        }
        let h = value_hash(v);
        if let Some(groups) = e.by_value.get_mut(&h) {
            if let Some(g) = groups.iter().position(|(g, _)| header_eq(g, v)) {
                remove_posting(&mut groups[g].1, id);
                if groups[g].1.is_empty() {
                    groups.swap_remove(g);
                }
            }
            if groups.is_empty() {
                e.by_value.remove(&h);
            }
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

    fn slot(&self, id: Id) -> &Compiled {
        self.slots[id as usize]
            .as_ref()
            .expect("indexed binding exists")
    }
}

impl Matcher for HeadersMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        let mode = x_match(&b.arguments)?;
        if self.find(&b).is_some() {
            return Ok(false);
        }
        let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
        let any = matches!(mode, XMatch::Any | XMatch::AnyWithX);
        let considered: Vec<(String, AMQPValue)> = b
            .arguments
            .inner()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k != "x-match" && (with_x || !k.starts_with("x-"))
            })
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        let indexed: Vec<usize> = if any {
            (0..considered.len()).collect()
        } else {
            (0..considered.len())
                .min_by_key(|i| self.anchor_cost(&considered[*i].0, &considered[*i].1))
                .into_iter()
                .collect()
        };
        let pairs: Vec<(KeyId, String, AMQPValue)> = considered
            .into_iter()
            .map(|(k, v)| (self.use_key(&k), k, v))
            .collect();
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as Id
            }
        };
        let check = if any || pairs.len() == 1 {
            Check::Nothing
        } else if pairs.len() == 2 {
            let (key, _, v) = &pairs[1 - indexed[0]];
            Check::One {
                key: *key,
                hash: value_hash(v),
                void: matches!(v, AMQPValue::Void),
            }
        } else {
            Check::Full
        };
        for i in &indexed {
            let (_, k, v) = &pairs[*i];
            self.index_pair(k, v, Posting { id, check });
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
            let (_, k, v) = &c.pairs[*i];
            self.unindex_pair(k, v, id);
        }
        for (_, k, _) in &c.pairs {
            self.release_key(k);
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
        out.extend(
            self.always
                .iter()
                .map(|id| self.slot(*id).binding.destination.clone()),
        );
        let Some(headers) = headers else {
            return;
        };
        // First the message's known headers and the posting lists they hit, then the
        // candidates (an `all` candidate's other pairs may be any of those headers).
        let mut present: Vec<(KeyId, u64, &AMQPValue)> = Vec::new();
        let mut lists: Vec<&[Posting]> = Vec::new();
        for (k, have) in headers.inner() {
            let Some(e) = self.keys.get(k.as_str()) else {
                continue;
            };
            let h = value_hash(have);
            present.push((e.id, h, have));
            if !e.presence.is_empty() {
                lists.push(&e.presence);
            }
            if let Some(groups) = e.by_value.get(&h) {
                for (want, list) in groups {
                    if header_eq(want, have) {
                        lists.push(list);
                    }
                }
            }
        }
        // An `any` binding may be hit through several keys: deduplicated at the end.
        let mut any_hits: Vec<Id> = Vec::new();
        for p in lists.into_iter().flatten() {
            let matched = match p.check {
                Check::Nothing => true,
                Check::One { key, hash, void } => match find(&present, key) {
                    None => false,
                    Some(_) if void => true,
                    Some((_, h, have)) => {
                        *h == hash && {
                            let c = self.slot(p.id);
                            let (_, _, want) = &c.pairs[1 - c.indexed[0]];
                            header_eq(want, have)
                        }
                    }
                },
                Check::Full => self.slot(p.id).all_match(&present),
            };
            if matched {
                let c = self.slot(p.id);
                if c.any {
                    any_hits.push(p.id);
                } else {
                    out.push(c.binding.destination.clone());
                }
            }
        }
        any_hits.sort_unstable();
        any_hits.dedup();
        out.extend(
            any_hits
                .into_iter()
                .map(|id| self.slot(id).binding.destination.clone()),
        );
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
        assert!(m.is_empty() && m.keys.is_empty() && m.by_destination.is_empty());
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
