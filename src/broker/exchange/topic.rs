//! Topic exchange: `.`-separated words, `*` one word, `#` zero or more words.
//!
//! Binding patterns are compiled into one trie over words, with a literal edge per word and
//! one `*` and one `#` edge per node. Routing walks the trie once for the key, so its cost
//! depends on the key and on how many patterns match, not on how many bindings exist.
//! Bind and unbind walk one pattern's path: O(pattern length).
//!
//! Runs of wildcards are stored in a canonical order (`#.*` and `*.#` both become `*.#`,
//! `#.#` becomes `#`): the matched keys are the same, and no two `#` edges follow each
//! other, which keeps the walk linear in the key for every `#` node. Each binding keeps its
//! routing key as declared, so `bindings()` and unbind see the original pattern.

use super::fxhash::FxHashMap;
use super::{Binding, Destination, Matcher};
use crate::error::AmqpResult;
use crate::protocol::FieldTable;

/// Words of a key or pattern; the empty string has no words (as in RabbitMQ), while
/// empty words between dots count (`a..b` has three words, the middle one empty).
pub fn words(s: &str) -> impl Iterator<Item = &str> {
    let empty = s.is_empty();
    s.split('.').filter(move |_| !empty)
}

/// Reference matcher: does `key` (split into words) match `pattern` (split into words)?
/// The trie must agree with it on every input (see the property test below).
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

/// One edge out of a trie node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Edge<'a> {
    Word(&'a str),
    Star,
    Hash,
}

/// A pattern's edges in canonical order: within each run of wildcards, the `*`s first,
/// then a single `#` if the run had any.
fn canonical(pattern: &str) -> Vec<Edge<'_>> {
    let mut out = Vec::new();
    let (mut stars, mut hash) = (0usize, false);
    let flush = |out: &mut Vec<Edge<'_>>, stars: &mut usize, hash: &mut bool| {
        out.extend(std::iter::repeat_n(Edge::Star, *stars));
        if *hash {
            out.push(Edge::Hash);
        }
        (*stars, *hash) = (0, false);
    };
    for w in words(pattern) {
        match w {
            "*" => stars += 1,
            "#" => hash = true,
            w => {
                flush(&mut out, &mut stars, &mut hash);
                out.push(Edge::Word(w));
            }
        }
    }
    flush(&mut out, &mut stars, &mut hash);
    out
}

type NodeId = u32;
type WordId = u32;
const ROOT: NodeId = 0;

#[derive(Default)]
struct Node {
    /// How many literal-word edges leave this node (they live in `TopicMatcher::edges`).
    words: u32,
    star: Option<NodeId>,
    hash: Option<NodeId>,
    /// Bindings whose pattern ends here (several patterns can share a node, e.g. `#.#` and
    /// `#`; each binding keeps its own routing key).
    bindings: Vec<Binding>,
}

impl Node {
    fn is_unused(&self) -> bool {
        self.bindings.is_empty() && self.words == 0 && self.star.is_none() && self.hash.is_none()
    }
}

/// Per-thread buffers reused by every walk, so routing a key allocates nothing.
#[derive(Default)]
struct Scratch {
    key: Vec<Option<WordId>>,
    stack: Vec<(NodeId, usize)>,
    hash_done: Vec<(NodeId, usize)>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn edge_key(node: NodeId, word: WordId) -> u64 {
    ((node as u64) << 32) | word as u64
}

/// The compiled trie. Nodes live in an arena; removed nodes go on a free list. Words are
/// interned, so a key's words are looked up once per route, and walking an edge is an
/// integer-keyed lookup in one table instead of a string comparison per node.
pub struct TopicMatcher {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    /// Literal edges of every node, keyed by (node, word).
    edges: FxHashMap<u64, NodeId>,
    /// Every word used by some pattern: its id and how many edges use it.
    vocab: FxHashMap<Box<str>, (WordId, u32)>,
    free_words: Vec<WordId>,
    next_word: WordId,
    count: usize,
}

impl Default for TopicMatcher {
    fn default() -> Self {
        TopicMatcher {
            nodes: vec![Node::default()],
            free: Vec::new(),
            edges: FxHashMap::default(),
            vocab: FxHashMap::default(),
            free_words: Vec::new(),
            next_word: 0,
            count: 0,
        }
    }
}

impl TopicMatcher {
    fn alloc(&mut self) -> NodeId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    fn child(&self, id: NodeId, e: Edge<'_>) -> Option<NodeId> {
        let node = &self.nodes[id as usize];
        match e {
            Edge::Word(w) => {
                let (wid, _) = self.vocab.get(w)?;
                self.edges.get(&edge_key(id, *wid)).copied()
            }
            Edge::Star => node.star,
            Edge::Hash => node.hash,
        }
    }

    /// Add the edge `id --e--> c`.
    fn link(&mut self, id: NodeId, e: Edge<'_>, c: NodeId) {
        match e {
            Edge::Word(w) => {
                let wid = match self.vocab.get_mut(w) {
                    Some((wid, uses)) => {
                        *uses += 1;
                        *wid
                    }
                    None => {
                        let wid = self.free_words.pop().unwrap_or_else(|| {
                            self.next_word += 1;
                            self.next_word - 1
                        });
                        self.vocab.insert(w.into(), (wid, 1));
                        wid
                    }
                };
                self.edges.insert(edge_key(id, wid), c);
                self.nodes[id as usize].words += 1;
            }
            Edge::Star => self.nodes[id as usize].star = Some(c),
            Edge::Hash => self.nodes[id as usize].hash = Some(c),
        }
    }

    /// Remove the edge `id --e-->`.
    fn unlink(&mut self, id: NodeId, e: Edge<'_>) {
        match e {
            Edge::Word(w) => {
                let Some((wid, uses)) = self.vocab.get_mut(w) else {
                    return;
                };
                let wid = *wid;
                *uses -= 1;
                if *uses == 0 {
                    self.vocab.remove(w);
                    self.free_words.push(wid);
                }
                self.edges.remove(&edge_key(id, wid));
                self.nodes[id as usize].words -= 1;
            }
            Edge::Star => self.nodes[id as usize].star = None,
            Edge::Hash => self.nodes[id as usize].hash = None,
        }
    }

    /// Destinations of every binding whose pattern matches `key` (word ids; None for a word
    /// no pattern uses).
    fn walk(&self, key: &[Option<WordId>], scratch: &mut Scratch, out: &mut Vec<Destination>) {
        // (node, index of the next key word). Every (node, index) pair is reached at most
        // once: a node has one parent, and for `#` nodes `hash_done` records the suffix of
        // key positions already handled.
        let Scratch {
            stack, hash_done, ..
        } = scratch;
        stack.clear();
        hash_done.clear();
        stack.push((ROOT, 0));
        while let Some((id, i)) = stack.pop() {
            let node = &self.nodes[id as usize];
            if i == key.len() {
                out.extend(node.bindings.iter().map(|b| b.destination.clone()));
            } else {
                self.step(id, node, key[i], i + 1, stack);
            }
            if let Some(h) = node.hash {
                // `#` takes key words i..j for every j ≥ i; positions ≥ `from` were
                // already taken from an earlier arrival at this `#` node.
                let from = match hash_done.iter_mut().find(|(n, _)| *n == h) {
                    Some((_, done)) if *done <= i => continue,
                    Some((_, done)) => std::mem::replace(done, i),
                    None => {
                        hash_done.push((h, i));
                        key.len() + 1
                    }
                };
                let hnode = &self.nodes[h as usize];
                for j in i..from.min(key.len() + 1) {
                    if j == key.len() {
                        out.extend(hnode.bindings.iter().map(|b| b.destination.clone()));
                    } else {
                        // No `#` follows a `#` in a canonical pattern.
                        self.step(h, hnode, key[j], j + 1, stack);
                    }
                }
            }
        }
    }

    /// Push the literal and `*` children of `id` for one key word.
    #[inline]
    fn step(
        &self,
        id: NodeId,
        node: &Node,
        word: Option<WordId>,
        next: usize,
        stack: &mut Vec<(NodeId, usize)>,
    ) {
        if let (Some(w), true) = (word, node.words > 0) {
            if let Some(c) = self.edges.get(&edge_key(id, w)) {
                stack.push((*c, next));
            }
        }
        if let Some(c) = node.star {
            stack.push((c, next));
        }
    }
}

impl Matcher for TopicMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        let mut id = ROOT;
        for e in canonical(&b.routing_key) {
            id = match self.child(id, e) {
                Some(c) => c,
                None => {
                    let c = self.alloc();
                    self.link(id, e, c);
                    c
                }
            };
        }
        let list = &mut self.nodes[id as usize].bindings;
        if list.contains(&b) {
            return Ok(false);
        }
        list.push(b);
        self.count += 1;
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let edges = canonical(&b.routing_key);
        let mut path = Vec::with_capacity(edges.len() + 1);
        let mut id = ROOT;
        path.push(id);
        for e in &edges {
            match self.child(id, *e) {
                Some(c) => id = c,
                None => return false,
            }
            path.push(id);
        }
        let list = &mut self.nodes[id as usize].bindings;
        let Some(pos) = list.iter().position(|x| x == b) else {
            return false;
        };
        list.swap_remove(pos);
        self.count -= 1;
        // Prune nodes left with nothing below them, bottom up.
        for (depth, e) in edges.iter().enumerate().rev() {
            let child = path[depth + 1];
            if !self.nodes[child as usize].is_unused() {
                break;
            }
            self.unlink(path[depth], *e);
            self.nodes[child as usize] = Node::default();
            self.free.push(child);
        }
        true
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if self.count == 0 {
            return;
        }
        SCRATCH.with(|cell| {
            // Re-entry cannot happen (routing never nests inside a walk); fall back to a
            // fresh buffer rather than panic if it ever did.
            let mut fresh = Scratch::default();
            let mut guard = cell.try_borrow_mut();
            let scratch = match guard.as_deref_mut() {
                Ok(s) => s,
                Err(_) => &mut fresh,
            };
            let mut key = std::mem::take(&mut scratch.key);
            key.clear();
            key.extend(words(routing_key).map(|w| self.vocab.get(w).map(|(id, _)| *id)));
            self.walk(&key, scratch, out);
            scratch.key = key;
        })
    }

    fn bindings(&self) -> Vec<Binding> {
        self.nodes
            .iter()
            .flat_map(|n| n.bindings.iter().cloned())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn queue_dest(n: usize) -> Destination {
        Destination::Exchange(format!("d{n}"))
    }

    fn binding(pattern: &str, n: usize) -> Binding {
        Binding {
            destination: queue_dest(n),
            routing_key: pattern.to_string(),
            arguments: FieldTable::default(),
        }
    }

    fn routed(t: &TopicMatcher, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.route(key, None, &mut out);
        let mut names: Vec<String> = out
            .into_iter()
            .map(|d| match d {
                Destination::Exchange(n) => n,
                Destination::Queue(_) => unreachable!(),
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn canonical_orders_wildcard_runs() {
        use Edge::*;
        assert_eq!(canonical("#.*"), vec![Star, Hash]);
        assert_eq!(
            canonical("#.#.a.*.#.*"),
            vec![Hash, Word("a"), Star, Star, Hash]
        );
        assert_eq!(canonical(""), vec![]);
        assert_eq!(canonical("a..b"), vec![Word("a"), Word(""), Word("b")]);
    }

    #[test]
    fn trie_routes_like_rabbitmq_edge_cases() {
        let mut t = TopicMatcher::default();
        for (i, p) in ["", "#", "*", "a..b", "a.*.b", "#.#", "a.#", ".", "*.*"]
            .iter()
            .enumerate()
        {
            assert!(t.bind(binding(p, i)).unwrap());
        }
        // "" matches only "" (and the `#` patterns); "." is two empty words.
        assert_eq!(routed(&t, ""), ["d0", "d1", "d5"]);
        assert_eq!(routed(&t, "a"), ["d1", "d2", "d5", "d6"]);
        assert_eq!(routed(&t, "a..b"), ["d1", "d3", "d4", "d5", "d6"]);
        assert_eq!(routed(&t, "."), ["d1", "d5", "d7", "d8"]);
    }

    #[test]
    fn equivalent_patterns_share_a_node_but_stay_distinct_bindings() {
        let mut t = TopicMatcher::default();
        assert!(t.bind(binding("#.*", 1)).unwrap());
        assert!(t.bind(binding("*.#", 1)).unwrap());
        assert!(!t.bind(binding("*.#", 1)).unwrap());
        assert_eq!(routed(&t, "x.y"), ["d1", "d1"]);
        assert!(t.unbind(&binding("#.*", 1)));
        assert!(!t.unbind(&binding("#.*", 1)));
        assert_eq!(routed(&t, "x"), ["d1"]);
        let keys: Vec<String> = t.bindings().into_iter().map(|b| b.routing_key).collect();
        assert_eq!(keys, ["*.#"]);
    }

    #[test]
    fn unbind_prunes_the_trie() {
        let mut t = TopicMatcher::default();
        t.bind(binding("a.b.c", 1)).unwrap();
        t.bind(binding("a.#.c", 2)).unwrap();
        t.bind(binding("a.b", 3)).unwrap();
        assert!(t.unbind(&binding("a.b.c", 1)));
        assert!(t.unbind(&binding("a.#.c", 2)));
        assert!(!t.unbind(&binding("a.x", 3)));
        assert_eq!(routed(&t, "a.b"), ["d3"]);
        assert!(t.unbind(&binding("a.b", 3)));
        assert!(t.is_empty());
        assert!(t.nodes[0].is_unused());
        assert!(t.edges.is_empty() && t.vocab.is_empty());
        // Everything but the root is on the free list, and gets reused.
        assert_eq!(t.free.len(), t.nodes.len() - 1);
        let before = t.nodes.len();
        t.bind(binding("x.y", 4)).unwrap();
        assert_eq!(t.nodes.len(), before);
        assert_eq!(routed(&t, "x.y"), ["d4"]);
    }

    #[test]
    fn many_hashes_stay_cheap() {
        let mut t = TopicMatcher::default();
        t.bind(binding("#.a.#.a.#.a.#.b", 1)).unwrap();
        let key = vec!["a"; 200].join(".");
        assert!(routed(&t, &key).is_empty());
        assert_eq!(routed(&t, &format!("{key}.b")), ["d1"]);
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("ab".to_string()),
        ]
    }

    fn pattern_word() -> impl Strategy<Value = String> {
        prop_oneof![word(), Just("*".to_string()), Just("#".to_string())]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The trie routes exactly as the reference matcher, binding by binding.
        #[test]
        fn trie_agrees_with_reference(
            patterns in prop::collection::vec(prop::collection::vec(pattern_word(), 0..6), 1..24),
            keys in prop::collection::vec(prop::collection::vec(word(), 0..7), 1..16),
            remove in prop::collection::vec(any::<bool>(), 24),
        ) {
            let mut t = TopicMatcher::default();
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            for (i, p) in patterns.iter().enumerate() {
                t.bind(binding(p, i)).unwrap();
            }
            // Unbind some, so pruning is exercised too.
            for (i, p) in patterns.iter().enumerate() {
                if remove[i] {
                    prop_assert!(t.unbind(&binding(p, i)));
                }
            }
            for k in &keys {
                let key = k.join(".");
                let kw: Vec<&str> = words(&key).collect();
                let mut want: Vec<String> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| {
                        let pw: Vec<String> = words(p).map(str::to_string).collect();
                        !remove[*i] && topic_matches(&pw, &kw)
                    })
                    .map(|(i, _)| format!("d{i}"))
                    .collect();
                want.sort();
                prop_assert_eq!(routed(&t, &key), want, "key {:?}", key);
            }
        }
    }
}
