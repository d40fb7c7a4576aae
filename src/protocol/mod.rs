//! The wire: frame reading with limits checked before buffering, frame encoding (the hot
//! frames hand-encoded), field-table bounds checks and the protocol constants.

pub mod codec;
pub mod encode;
pub mod table;

pub use amq_protocol::protocol::{AMQPClass, BasicProperties};
pub use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

/// `AMQP 0-9-1` protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Frame header (type, channel, size) plus the end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (spec: frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Cut a string to at most 255 bytes on a char boundary, so it fits a shortstr.
pub fn truncate_short(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_string();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A shortstr built from any text without the codec's panic on long input.
pub fn short(s: &str) -> ShortString {
    ShortString::from(truncate_short(s))
}
