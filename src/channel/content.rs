//! Content assembly: a basic.publish is followed by one content header and then body frames
//! until the size the header announced is reached. The state machine is kept apart from the
//! channel (generic over what the publish carries) so it can be exercised and fuzzed
//! without a broker; the channel uses exactly this code.

use crate::error::{AmqpError, AmqpResult};
use crate::protocol::BasicProperties;
use bytes::{Bytes, BytesMut};

/// Where a channel is in receiving one message's content.
#[derive(Debug, Default)]
enum State<P> {
    #[default]
    Idle,
    AwaitingHeader(P),
    AwaitingBody {
        publish: P,
        properties: Box<BasicProperties>,
        raw_properties: Bytes,
        expected: u64,
        body: BytesMut,
    },
}

/// A complete message: the publish it belongs to, its properties and body.
#[derive(Debug)]
pub struct Assembled<P> {
    pub publish: P,
    pub properties: BasicProperties,
    /// The encoded property flags and list, reused verbatim when delivering.
    pub raw_properties: Bytes,
    pub body: Bytes,
}

/// Method → header → body frames, for one channel. `P` is what the publish method said.
#[derive(Debug, Default)]
pub struct ContentAssembler<P> {
    state: State<P>,
}

impl<P> ContentAssembler<P> {
    pub fn new() -> Self {
        ContentAssembler { state: State::Idle }
    }

    /// No message is half received.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Forget a half-received message (the channel closed on an error).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// A method other than content arrived on `channel`: only allowed between messages.
    pub fn check_method(&self, channel: u16, class_id: u16, method_id: u16) -> AmqpResult<()> {
        if self.is_idle() {
            return Ok(());
        }
        Err(AmqpError::unexpected_frame(format!(
            "expected content header or body on channel {channel}, got method {class_id}.{method_id}"
        )))
    }

    /// basic.publish was accepted: its content comes next. The caller has checked
    /// `check_method` first, so nothing is half received.
    pub fn start(&mut self, publish: P) {
        self.state = State::AwaitingHeader(publish);
    }

    /// A content header. A message without body is complete at once.
    pub fn on_header(
        &mut self,
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Box<BasicProperties>,
        raw_properties: Bytes,
        max_size: u64,
    ) -> AmqpResult<Option<Assembled<P>>> {
        let State::AwaitingHeader(publish) = std::mem::take(&mut self.state) else {
            return Err(AmqpError::unexpected_frame(format!(
                "content header on channel {channel} without a basic.publish"
            )));
        };
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "content header of class {class_id}, expected 60"
            ))
            .at(60, 40));
        }
        if body_size > max_size {
            return Err(AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {max_size}"
            ))
            .at(60, 40));
        }
        if body_size == 0 {
            return Ok(Some(Assembled {
                publish,
                properties: *properties,
                raw_properties,
                body: Bytes::new(),
            }));
        }
        self.state = State::AwaitingBody {
            publish,
            properties,
            raw_properties,
            expected: body_size,
            body: BytesMut::new(),
        };
        Ok(None)
    }

    /// A body frame; the message is complete once the announced size is reached.
    pub fn on_body(&mut self, channel: u16, payload: Bytes) -> AmqpResult<Option<Assembled<P>>> {
        let State::AwaitingBody { expected, body, .. } = &mut self.state else {
            return Err(AmqpError::unexpected_frame(format!(
                "content body on channel {channel} without a content header"
            )));
        };
        let have = body.len() as u64 + payload.len() as u64;
        if have > *expected {
            return Err(AmqpError::unexpected_frame(format!(
                "content body of {have} bytes exceeds the header's {expected}"
            ))
            .at(60, 40));
        }
        let complete = have == *expected;
        // A body that arrives in one frame is used as-is, without copying.
        let single = complete && body.is_empty();
        if !single {
            if body.is_empty() {
                // Reserve what the header announced, but no more than the frames so far
                // could justify growing to: the size is bounded by max_message_size, yet a
                // peer should not make us allocate it all with one small frame.
                body.reserve((*expected).min(payload.len() as u64 * 16) as usize);
            }
            body.extend_from_slice(&payload);
        }
        if !complete {
            return Ok(None);
        }
        let State::AwaitingBody {
            publish,
            properties,
            raw_properties,
            body,
            ..
        } = std::mem::take(&mut self.state)
        else {
            return Err(AmqpError::internal("content state changed"));
        };
        let body = if single { payload } else { body.freeze() };
        Ok(Some(Assembled {
            publish,
            properties: *properties,
            raw_properties,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(a: &mut ContentAssembler<u8>, size: u64) -> AmqpResult<Option<Assembled<u8>>> {
        a.on_header(1, 60, size, Box::default(), Bytes::new(), 1 << 20)
    }

    #[test]
    fn assembles_split_bodies_and_refuses_overruns() {
        let mut a = ContentAssembler::new();
        a.start(7u8);
        assert!(a.check_method(1, 60, 40).is_err());
        assert!(header(&mut a, 5).unwrap().is_none());
        assert!(a.on_body(1, Bytes::from_static(b"ab")).unwrap().is_none());
        let m = a.on_body(1, Bytes::from_static(b"cde")).unwrap().unwrap();
        assert_eq!((m.publish, &m.body[..]), (7, &b"abcde"[..]));
        assert!(a.is_idle());

        a.start(8);
        assert!(header(&mut a, 2).unwrap().is_none());
        assert!(a.on_body(1, Bytes::from_static(b"abc")).is_err());
    }

    #[test]
    fn out_of_order_content_is_refused() {
        let mut a: ContentAssembler<u8> = ContentAssembler::new();
        assert!(a.on_body(1, Bytes::from_static(b"x")).is_err());
        assert!(header(&mut a, 1).is_err());
        a.start(1);
        let m = header(&mut a, 0).unwrap().unwrap();
        assert!(m.body.is_empty());
    }
}
