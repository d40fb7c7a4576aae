//! Writing frames into an outbound buffer.
//!
//! Control methods go through the amq-protocol generator. The frames sent once per message
//! (deliver, get-ok, return, confirm acks, content header and body) are encoded by hand,
//! straight into the connection's buffer, reusing the publisher's encoded properties.

use super::{BasicProperties, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, Bytes, BytesMut};

/// Encode any method with the codec's generator.
pub fn method(buf: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let res = gen_frame(&frame)(WriteContext::from(Vec::with_capacity(64)));
    match res {
        Ok(ctx) => buf.extend_from_slice(&ctx.into_inner().0),
        Err(e) => tracing::error!(error = %e, "could not encode a method frame"),
    }
}

/// Encode basic properties as they appear in a content header (flags then fields).
pub fn properties(props: &BasicProperties) -> Bytes {
    match amq_protocol::protocol::basic::gen_properties(props)(WriteContext::from(Vec::new())) {
        Ok(ctx) => Bytes::from(ctx.into_inner().0),
        Err(e) => {
            tracing::error!(error = %e, "could not encode message properties");
            Bytes::from_static(&[0, 0])
        }
    }
}

pub fn heartbeat(buf: &mut BytesMut) {
    buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

fn put_short(buf: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    buf.put_u8(n as u8);
    buf.extend_from_slice(&b[..n]);
}

/// Start a method frame; returns the offset of the size field to patch.
fn begin_method(buf: &mut BytesMut, channel: u16, class_id: u16, method_id: u16) -> usize {
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    buf.put_u16(class_id);
    buf.put_u16(method_id);
    at
}

fn end_frame(buf: &mut BytesMut, size_at: usize) {
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// What a content-carrying method needs to say about the message.
pub struct ContentRef<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub raw_properties: &'a [u8],
    pub body: &'a Bytes,
}

/// basic.deliver + header + body frames.
pub fn deliver(
    buf: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    content: &ContentRef<'_>,
) {
    let at = begin_method(buf, channel, 60, 60);
    put_short(buf, consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    put_short(buf, content.exchange);
    put_short(buf, content.routing_key);
    end_frame(buf, at);
    content_frames(buf, channel, frame_max, content);
}

/// basic.get-ok + header + body frames.
pub fn get_ok(
    buf: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    delivery_tag: u64,
    redelivered: bool,
    message_count: u32,
    content: &ContentRef<'_>,
) {
    let at = begin_method(buf, channel, 60, 71);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    put_short(buf, content.exchange);
    put_short(buf, content.routing_key);
    buf.put_u32(message_count);
    end_frame(buf, at);
    content_frames(buf, channel, frame_max, content);
}

/// basic.return + header + body frames.
pub fn basic_return(
    buf: &mut BytesMut,
    channel: u16,
    frame_max: u32,
    reply_code: u16,
    reply_text: &str,
    content: &ContentRef<'_>,
) {
    let at = begin_method(buf, channel, 60, 50);
    buf.put_u16(reply_code);
    put_short(buf, reply_text);
    put_short(buf, content.exchange);
    put_short(buf, content.routing_key);
    end_frame(buf, at);
    content_frames(buf, channel, frame_max, content);
}

/// Publisher-confirm basic.ack.
pub fn confirm_ack(buf: &mut BytesMut, channel: u16, tag: u64, multiple: bool) {
    let at = begin_method(buf, channel, 60, 80);
    buf.put_u64(tag);
    buf.put_u8(multiple as u8);
    end_frame(buf, at);
}

/// Publisher-confirm basic.nack.
pub fn confirm_nack(buf: &mut BytesMut, channel: u16, tag: u64, multiple: bool) {
    let at = begin_method(buf, channel, 60, 120);
    buf.put_u64(tag);
    buf.put_u8(multiple as u8);
    end_frame(buf, at);
}

fn content_frames(buf: &mut BytesMut, channel: u16, frame_max: u32, content: &ContentRef<'_>) {
    let body = content.body;
    buf.reserve(16 + content.raw_properties.len() + body.len() + 8);
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32((12 + content.raw_properties.len()) as u32);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body.len() as u64);
    buf.extend_from_slice(content.raw_properties);
    buf.put_u8(FRAME_END);
    let chunk = if frame_max == 0 {
        usize::MAX
    } else {
        (frame_max as usize)
            .saturating_sub(super::FRAME_OVERHEAD)
            .max(1)
    };
    for piece in body.chunks(chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(piece.len() as u32);
        buf.extend_from_slice(piece);
        buf.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{read_frame, InFrame, ReadLimits};
    use super::*;

    #[test]
    fn hand_encoded_deliver_parses_back() {
        let props = BasicProperties::default().with_priority(3);
        let raw = properties(&props);
        let body = Bytes::from(vec![7u8; 10_000]);
        let mut buf = BytesMut::new();
        let content = ContentRef {
            exchange: "ex",
            routing_key: "rk",
            raw_properties: &raw,
            body: &body,
        };
        deliver(&mut buf, 5, 4096, "ctag", 42, true, &content);
        let limits = ReadLimits {
            frame_max: 4096,
            max_table_depth: 8,
        };
        // deliver is server-only, so the client-side check refuses it: parse it by hand.
        let mut frames = 0;
        let mut total = 0;
        while !buf.is_empty() {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            if buf[0] == FRAME_METHOD {
                let (_, m) = amq_protocol::protocol::parse_class(&buf[7..7 + size]).unwrap();
                match m {
                    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(d)) => {
                        assert_eq!(d.delivery_tag, 42);
                        assert!(d.redelivered);
                        assert_eq!(d.consumer_tag.as_str(), "ctag");
                    }
                    other => panic!("{other:?}"),
                }
                bytes::Buf::advance(&mut buf, 8 + size);
            } else {
                match read_frame(&mut buf, limits).unwrap().unwrap() {
                    InFrame::Header {
                        properties,
                        body_size,
                        ..
                    } => {
                        assert_eq!(body_size, 10_000);
                        assert_eq!(properties.priority(), &Some(3));
                    }
                    InFrame::Body { payload, .. } => total += payload.len(),
                    other => panic!("{other:?}"),
                }
            }
            frames += 1;
        }
        assert_eq!(total, 10_000);
        assert_eq!(frames, 2 + 3);
    }
}
