//! Direct exchange: exact routing-key match through a hash index.

use super::{Binding, Destination, Matcher};
use crate::error::AmqpResult;
use crate::protocol::FieldTable;
use std::collections::HashMap;

#[derive(Default)]
pub struct DirectMatcher {
    by_key: HashMap<String, Vec<Binding>>,
}

impl Matcher for DirectMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        let list = self.by_key.entry(b.routing_key.clone()).or_default();
        if list.contains(&b) {
            return Ok(false);
        }
        list.push(b);
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let Some(list) = self.by_key.get_mut(&b.routing_key) else {
            return false;
        };
        let before = list.len();
        list.retain(|x| x != b);
        let removed = list.len() != before;
        if list.is_empty() {
            self.by_key.remove(&b.routing_key);
        }
        removed
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if let Some(list) = self.by_key.get(routing_key) {
            out.extend(list.iter().map(|b| b.destination.clone()));
        }
    }

    fn bindings(&self) -> Vec<Binding> {
        self.by_key.values().flatten().cloned().collect()
    }

    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
