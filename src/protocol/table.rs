//! Bounds check of field tables before they reach the (recursive) codec parser.
//!
//! The codec parses nested tables and arrays recursively; a peer could nest them thousands
//! deep inside one frame and exhaust the stack. This walker is iterative: it checks the
//! encoding, the nesting depth and the type tags of every table a frame can carry, so the
//! recursive parser only ever sees input whose depth is bounded.

/// Where the one field table of a client method starts in its payload (after class and
/// method ids), for the methods that carry one. Never past the end of `payload`.
pub fn method_table_offset(payload: &[u8], class_id: u16, method_id: u16) -> Option<usize> {
    // Number of shortstrs to skip after the leading reserved short, and whether a bit
    // octet follows them.
    let (skip_reserved, shortstrs, bits) = match (class_id, method_id) {
        // connection.start-ok: client-properties first.
        (10, 11) => return (payload.len() >= 4).then_some(4),
        (40, 10) => (true, 2, true),            // exchange.declare
        (40, 30) | (40, 40) => (true, 3, true), // exchange.bind / unbind
        (50, 10) => (true, 1, true),            // queue.declare
        (50, 20) => (true, 3, true),            // queue.bind
        (50, 50) => (true, 3, false),           // queue.unbind
        (60, 20) => (true, 2, true),            // basic.consume
        _ => return None,
    };
    let mut pos = 4 + if skip_reserved { 2 } else { 0 };
    for _ in 0..shortstrs {
        let len = *payload.get(pos)? as usize;
        pos += 1 + len;
    }
    if bits {
        pos += 1;
    }
    (pos <= payload.len()).then_some(pos)
}

/// Where the `headers` table of a content header starts, if the header has one.
/// `payload` is the whole header frame payload (class, weight, body size, flags, ...).
pub fn header_table_offset(payload: &[u8]) -> Option<usize> {
    let flags = u16::from_be_bytes([*payload.get(12)?, *payload.get(13)?]);
    let mut pos = 14;
    let mut f = flags;
    // Continuation flags (bit 0) would add more flag words; skip them.
    while f & 1 == 1 {
        f = u16::from_be_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
        pos += 2;
    }
    if flags & (1 << 13) == 0 {
        return None;
    }
    if flags & (1 << 15) != 0 {
        pos += 1 + *payload.get(pos)? as usize;
    }
    if flags & (1 << 14) != 0 {
        pos += 1 + *payload.get(pos)? as usize;
    }
    Some(pos)
}

fn read_u32(buf: &[u8], pos: usize) -> Result<u32, &'static str> {
    buf.get(pos..pos + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("field table truncated")
}

/// Walk the field table starting at `buf[0]` without recursion. Fails on a truncated or
/// malformed encoding, an unknown type tag, or nesting deeper than `max_depth`.
pub fn check_field_table(buf: &[u8], max_depth: usize) -> Result<(), &'static str> {
    let len = read_u32(buf, 0)? as usize;
    let mut pos: usize = 4;
    let end = pos.checked_add(len).ok_or("field table too long")?;
    if end > buf.len() {
        return Err("field table longer than its frame");
    }
    // (is_table, end offset) for every open table or array.
    let mut stack: Vec<(bool, usize)> = vec![(true, end)];
    while let Some(&(is_table, end)) = stack.last() {
        if pos == end {
            stack.pop();
            continue;
        }
        if pos > end {
            return Err("field table entry overruns its container");
        }
        if is_table {
            let klen = *buf.get(pos).ok_or("field table truncated")? as usize;
            pos += 1 + klen;
        }
        let tag = *buf.get(pos).ok_or("field table truncated")?;
        pos += 1;
        let fixed = match tag {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' | b'U' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => 4 + read_u32(buf, pos)? as usize,
            b'A' | b'F' => {
                if stack.len() >= max_depth {
                    return Err("field table nested too deeply");
                }
                let inner = read_u32(buf, pos)? as usize;
                pos += 4;
                let inner_end = pos + inner;
                if inner_end > end {
                    return Err("nested field table overruns its container");
                }
                stack.push((tag == b'F', inner_end));
                continue;
            }
            _ => return Err("unknown field type tag"),
        };
        pos += fixed;
    }
    if pos != end {
        return Err("field table length mismatch");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(depth: usize) -> Vec<u8> {
        // A table {"a": [[[...]]]} nested `depth` arrays deep.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut v = vec![b'A'];
            v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            v.extend_from_slice(&inner);
            inner = v;
        }
        let mut entry = vec![1, b'a'];
        entry.extend_from_slice(&inner);
        let mut t = (entry.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&entry);
        t
    }

    #[test]
    fn accepts_shallow_and_refuses_deep_nesting() {
        assert!(check_field_table(&nested_arrays(3), 16).is_ok());
        assert_eq!(
            check_field_table(&nested_arrays(10_000), 16),
            Err("field table nested too deeply")
        );
    }

    #[test]
    fn table_offset_never_passes_the_payload_end() {
        // Found by the `table` fuzz target: start-ok's fixed offset on a 3-byte payload.
        assert_eq!(method_table_offset(&[0, 10, 0], 10, 11), None);
        assert_eq!(method_table_offset(&[0, 10, 0, 11], 10, 11), Some(4));
    }

    #[test]
    fn refuses_truncated_and_unknown_tags() {
        assert!(check_field_table(&[0, 0, 0, 9, 1, b'a'], 8).is_err());
        assert!(check_field_table(&[0, 0, 0, 3, 1, b'a', b'Z'], 8).is_err());
        assert!(check_field_table(&[0, 0, 0, 4, 1, b'a', b't', 1], 8).is_ok());
    }
}
