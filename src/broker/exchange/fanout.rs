//! Fanout exchange: every binding, whatever the key.

use super::{Binding, Destination, Matcher};
use crate::error::AmqpResult;
use crate::protocol::FieldTable;

#[derive(Default)]
pub struct FanoutMatcher {
    bindings: Vec<Binding>,
}

impl Matcher for FanoutMatcher {
    fn bind(&mut self, b: Binding) -> AmqpResult<bool> {
        if self.bindings.contains(&b) {
            return Ok(false);
        }
        self.bindings.push(b);
        Ok(true)
    }

    fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|x| x != b);
        before != self.bindings.len()
    }

    fn route(&self, _routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        out.extend(self.bindings.iter().map(|b| b.destination.clone()));
    }

    fn bindings(&self) -> Vec<Binding> {
        self.bindings.clone()
    }

    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}
