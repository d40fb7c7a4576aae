//! Reading frames: the 7-byte header is checked against the negotiated frame_max before the
//! payload is buffered; method and content-header payloads are bounds-checked, then parsed
//! by the amq-protocol codec; bodies are cut out of the read buffer as `Bytes` without a copy.

use super::table::{check_field_table, header_table_offset, method_table_offset};
use super::{
    AMQPClass, BasicProperties, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD,
};
use crate::error::{AmqpError, ReplyCode};
use bytes::{Buf, Bytes, BytesMut};

/// One frame read from a client.
#[derive(Debug)]
pub enum InFrame {
    Method {
        channel: u16,
        class_id: u16,
        method_id: u16,
        method: Box<AMQPClass>,
    },
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Box<BasicProperties>,
        /// The encoded property flags and list, reused verbatim when delivering.
        raw_properties: Bytes,
    },
    Body {
        channel: u16,
        payload: Bytes,
    },
    Heartbeat,
}

/// A frame that could not be read: always a connection error.
#[derive(Debug)]
pub struct FrameError {
    pub error: AmqpError,
    pub channel: u16,
}

fn frame_err(code: ReplyCode, text: impl Into<String>, channel: u16) -> FrameError {
    FrameError {
        error: AmqpError::new(code, text),
        channel,
    }
}

/// Is (class, method) one a client may send to a broker?
fn client_method(class_id: u16, method_id: u16) -> Known {
    let client = match class_id {
        10 => matches!(method_id, 11 | 21 | 31 | 40 | 50 | 51 | 60 | 61 | 70 | 71),
        20 => matches!(method_id, 10 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10),
        40 => matches!(method_id, 10 | 20 | 30 | 40),
        50 => matches!(method_id, 10 | 20 | 30 | 40 | 50),
        60 => matches!(
            method_id,
            10 | 20 | 30 | 40 | 70 | 80 | 90 | 100 | 110 | 120
        ),
        85 => matches!(method_id, 10),
        90 => matches!(method_id, 10 | 20 | 30),
        _ => return Known::Unknown,
    };
    let exists = match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    };
    match (exists, client) {
        (_, true) => Known::Client,
        (true, false) => Known::ServerOnly,
        (false, false) => Known::Unknown,
    }
}

enum Known {
    Client,
    ServerOnly,
    Unknown,
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Negotiated frame_max; 0 = no limit. A frame whose payload is at most this is read:
    /// the 8 bytes of header and end octet are slack, as in RabbitMQ.
    pub frame_max: u32,
    /// Deepest nesting of tables and arrays accepted.
    pub max_table_depth: usize,
}

/// How much buffer room is made ahead of a read while a frame is incomplete.
pub const READ_CHUNK: usize = 64 * 1024;

/// Try to take one frame from the front of `buf`. `Ok(None)` means "read more".
pub fn read_frame(buf: &mut BytesMut, limits: ReadLimits) -> Result<Option<InFrame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    // The 8 bytes of frame overhead are slack, as RabbitMQ allows them: several clients
    // (amqpstorm among them) count frame_max as the payload limit. A payload above
    // frame_max is refused before any of it is buffered.
    if limits.frame_max != 0 && size > limits.frame_max as usize {
        return Err(frame_err(
            ReplyCode::FrameError,
            format!(
                "frame size {} exceeds negotiated frame_max {}",
                size + FRAME_OVERHEAD,
                limits.frame_max
            ),
            channel,
        ));
    }
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(frame_err(
            ReplyCode::FrameError,
            format!("unknown frame type {frame_type}"),
            channel,
        ));
    }
    if buf.len() < 7 + size + 1 {
        // Room for the next read only, not for the declared size: a peer that announces a
        // big frame and stalls costs what it sent, not what it promised.
        buf.reserve((7 + size + 1 - buf.len()).min(READ_CHUNK));
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(frame_err(
            ReplyCode::FrameError,
            "frame end octet missing",
            channel,
        ));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    match frame_type {
        FRAME_METHOD => parse_method(channel, &payload, limits).map(Some),
        FRAME_HEADER => parse_header(channel, payload, limits).map(Some),
        FRAME_BODY => Ok(Some(InFrame::Body { channel, payload })),
        _ => {
            if channel != 0 {
                return Err(frame_err(
                    ReplyCode::FrameError,
                    "heartbeat frame on a non-zero channel",
                    channel,
                ));
            }
            Ok(Some(InFrame::Heartbeat))
        }
    }
}

fn parse_method(channel: u16, payload: &[u8], limits: ReadLimits) -> Result<InFrame, FrameError> {
    if payload.len() < 4 {
        return Err(frame_err(
            ReplyCode::FrameError,
            "method frame too short",
            channel,
        ));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    let with_ids = |code, text: String| FrameError {
        error: AmqpError::new(code, text).at(class_id, method_id),
        channel,
    };
    match client_method(class_id, method_id) {
        Known::Client => {}
        Known::ServerOnly => {
            return Err(with_ids(
                ReplyCode::NotImplemented,
                format!("method {class_id}.{method_id} is not sent by clients"),
            ))
        }
        Known::Unknown => {
            return Err(with_ids(
                ReplyCode::CommandInvalid,
                format!("unknown method {class_id}.{method_id}"),
            ))
        }
    }
    if let Some(offset) = method_table_offset(payload, class_id, method_id) {
        if let Err(e) = check_field_table(&payload[offset..], limits.max_table_depth) {
            return Err(with_ids(ReplyCode::SyntaxError, e.to_string()));
        }
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok((&[], method)) => Ok(InFrame::Method {
            channel,
            class_id,
            method_id,
            method: Box::new(method),
        }),
        _ => Err(with_ids(
            ReplyCode::SyntaxError,
            format!("malformed method frame {class_id}.{method_id}"),
        )),
    }
}

fn parse_header(channel: u16, payload: Bytes, limits: ReadLimits) -> Result<InFrame, FrameError> {
    if payload.len() < 14 {
        return Err(frame_err(
            ReplyCode::FrameError,
            "content header too short",
            channel,
        ));
    }
    if let Some(offset) = header_table_offset(&payload) {
        if offset > payload.len() {
            return Err(frame_err(
                ReplyCode::SyntaxError,
                "content header truncated",
                channel,
            ));
        }
        if let Err(e) = check_field_table(&payload[offset..], limits.max_table_depth) {
            return Err(frame_err(ReplyCode::SyntaxError, e, channel));
        }
    }
    match amq_protocol::frame::parsing::parse_content_header(&payload[..]) {
        Ok((&[], header)) => Ok(InFrame::Header {
            channel,
            class_id: header.class_id,
            body_size: header.body_size,
            properties: Box::new(header.properties),
            raw_properties: payload.slice(12..),
        }),
        _ => Err(frame_err(
            ReplyCode::SyntaxError,
            "malformed content header",
            channel,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        frame_max: 4096,
        max_table_depth: 16,
    };

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]);
        let err = read_frame(&mut buf, LIMITS).unwrap_err();
        assert_eq!(err.error.code, ReplyCode::FrameError);
    }

    #[test]
    fn partial_frame_asks_for_more() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0, 4, b'a'][..]);
        assert!(read_frame(&mut buf, LIMITS).unwrap().is_none());
        buf.extend_from_slice(&[b'b', b'c', b'd', FRAME_END]);
        match read_frame(&mut buf, LIMITS).unwrap() {
            Some(InFrame::Body {
                channel: 1,
                payload,
            }) => assert_eq!(&payload[..], b"abcd"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn announced_size_is_not_preallocated() {
        // A 64 MB body frame announced with no frame_max limit, then a few bytes.
        let unlimited = ReadLimits {
            frame_max: 0,
            ..LIMITS
        };
        let mut buf = BytesMut::from(&[3u8, 0, 1, 4, 0, 0, 0, 1, 2, 3][..]);
        assert!(read_frame(&mut buf, unlimited).unwrap().is_none());
        assert!(buf.capacity() <= 2 * READ_CHUNK, "{}", buf.capacity());
    }

    #[test]
    fn unknown_method_is_command_invalid() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, FRAME_END][..]);
        let err = read_frame(&mut buf, LIMITS).unwrap_err();
        assert_eq!(err.error.code, ReplyCode::CommandInvalid);
    }
}
