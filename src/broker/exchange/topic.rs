//! Topic exchange: `.`-separated words, `*` one word, `#` zero or more words.
//!
//! Patterns are pre-split into words at bind time; matching walks words with backtracking
//! over `#`. (A compiled trie over all bindings replaces the per-binding walk when routing
//! with very many bindings matters.)

use super::{Binding, Destination, Matcher};
use crate::error::AmqpResult;
use crate::protocol::FieldTable;

#[derive(Default)]
pub struct TopicMatcher {
    bindings: Vec<(Vec<String>, Binding)>,
}

/// Words of a key or pattern; the empty string has no words (as in RabbitMQ), while
/// empty words between dots count.
pub fn words(s: &str) -> impl Iterator<Item = &str> {
    let empty = s.is_empty();
    s.split('.').filter(move |_| !empty)
}

/// Does `key` (split into words) match `pattern` (split into words)?
pub fn topic_matches(pattern: &[String], key: &[&str]) -> bool {
    // Iterative glob match with one backtrack point per `#`, as for `*` in file globs.
    let (mut p, mut k) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() && pattern[p] == "#" {
            star = Some((p, k));
            p += 1;
            continue;
        }
        if k < key.len() && p < pattern.len() && (pattern[p] == "*" || pattern[p] == key[k]) {
            p += 1;
            k += 1;
            continue;
        }
        if p == pattern.len() && k == key.len() {
            return true;
        }
        match star {
            Some((sp, sk)) if sk < key.len() => {
                star = Some((sp, sk + 1));
                p = sp + 1;
                k = sk + 1;
            }
            _ => return false,
        }
    }
}

impl Matcher for TopicMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        if self.bindings.iter().any(|(_, x)| x == &b) {
            return Ok(false);
        }
        let pattern = words(&b.routing_key).map(str::to_string).collect();
        self.bindings.push((pattern, b));
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|(_, x)| x != b);
        before != self.bindings.len()
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let key: Vec<&str> = words(routing_key).collect();
        for (pattern, b) in &self.bindings {
            if topic_matches(pattern, &key) {
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

#[cfg(test)]
mod tests {
    use super::{topic_matches, words};

    fn m(p: &str, k: &str) -> bool {
        let p: Vec<String> = words(p).map(str::to_string).collect();
        let k: Vec<&str> = words(k).collect();
        topic_matches(&p, &k)
    }

    #[test]
    fn words_stars_and_hashes() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#.c", "a.b.c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.x.y.c"));
        assert!(!m("a.#.c", "a.x.y.d"));
        assert!(m("*.#", "a"));
        assert!(!m("*", ""));
        assert!(m("#.#", "a.b"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a.*.b", "a..b"));
    }
}
