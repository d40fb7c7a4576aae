//! The frame reader on arbitrary input: it must never panic, must always end in a frame,
//! "need more" or an error, and must read the same when the bytes arrive in two pieces.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warrenmq::protocol::codec::{read_frame, ReadLimits};

/// Every frame, then how reading stopped (None = needs more bytes).
fn read_all(chunks: &[&[u8]], limits: ReadLimits) -> (Vec<String>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match read_frame(&mut buf, limits) {
                Ok(Some(f)) => frames.push(format!("{f:?}")),
                Ok(None) => break,
                Err(e) => return (frames, Some(format!("{:?}", e.error))),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    // Two control bytes pick the limits and a split point; the rest is the stream.
    let [a, b, rest @ ..] = data else {
        return;
    };
    let limits = ReadLimits {
        frame_max: if a & 1 == 0 {
            0
        } else {
            4096 + u32::from(*a) * 64
        },
        max_table_depth: usize::from(b % 8) + 1,
    };
    let cut = usize::from(*b) * rest.len() / 256;
    let whole = read_all(&[rest], limits);
    let split = read_all(&[&rest[..cut], &rest[cut..]], limits);
    assert_eq!(whole, split, "split at {cut} reads differently");
});
