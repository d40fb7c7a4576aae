//! Ack and delivery files: the offsets of a segment's records that left for good (`.ack`)
//! or went out unacked (`.dlv`, one entry per delivery). They are appended each flusher
//! round and not synced on their own: losing the last of them in a crash brings messages
//! back (redelivered), never loses one.
//!
//! Format: `[magic "WMQOFF\0\x03"]`, then batches `[magic "WMQb"][count u32 LE][crc32 u32
//! LE of count and offsets][offset u32 LE × count]`. A damaged batch is skipped (its
//! offsets are lost: those messages come back) and the read goes on at the next batch
//! that checks. Files without the header are the older format: bare offsets.

pub const FILE_MAGIC: [u8; 8] = *b"WMQOFF\0\x03";
const BATCH_MAGIC: [u8; 4] = *b"WMQb";
const BATCH_HEADER: usize = 12;

/// A batch of offsets as appended to a framed file.
pub fn encode_batch(offsets: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BATCH_HEADER + 4 * offsets.len());
    b.extend_from_slice(&BATCH_MAGIC);
    b.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    for o in offsets {
        b.extend_from_slice(&o.to_le_bytes());
    }
    let crc = batch_crc(&b[4..8], &b[BATCH_HEADER..]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Offsets in the older format: bare u32s.
pub fn encode_legacy(offsets: &[u32]) -> Vec<u8> {
    offsets.iter().flat_map(|o| o.to_le_bytes()).collect()
}

fn batch_crc(count: &[u8], offsets: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(count);
    h.update(offsets);
    h.finalize()
}

/// What a file held: its offsets in order, and the damaged stretches (offset, length).
#[derive(Debug, Default)]
pub struct Offsets {
    pub offsets: Vec<u32>,
    pub damaged: Vec<(u64, u64)>,
    /// Written in this format (false: the older bare offsets).
    pub framed: bool,
}

impl Offsets {
    /// The file rewritten without its damage, in the format it had.
    pub fn rewritten(&self) -> Vec<u8> {
        if self.framed {
            let mut b = FILE_MAGIC.to_vec();
            b.extend(encode_batch(&self.offsets));
            b
        } else {
            encode_legacy(&self.offsets)
        }
    }
}

pub fn parse(bytes: &[u8]) -> Offsets {
    let mut out = Offsets::default();
    if !bytes.starts_with(&FILE_MAGIC) {
        // An older file, or one whose header was damaged: a damaged header with framed
        // batches after it still parses as batches.
        let framed_after = bytes
            .windows(BATCH_MAGIC.len())
            .position(|w| w == BATCH_MAGIC)
            .is_some_and(|at| at <= FILE_MAGIC.len());
        if !framed_after {
            out.offsets = bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let rest = bytes.len() % 4;
            if rest != 0 {
                out.damaged.push(((bytes.len() - rest) as u64, rest as u64));
            }
            return out;
        }
        out.damaged.push((0, FILE_MAGIC.len() as u64));
    }
    out.framed = true;
    let mut at = FILE_MAGIC.len();
    let mut bad_from: Option<usize> = None;
    while at + BATCH_HEADER <= bytes.len() {
        let h = &bytes[at..at + BATCH_HEADER];
        let count = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let end = count
            .checked_mul(4)
            .and_then(|n| n.checked_add(at + BATCH_HEADER));
        let good = h[..4] == BATCH_MAGIC
            && end.is_some_and(|e| {
                e <= bytes.len() && batch_crc(&h[4..8], &bytes[at + BATCH_HEADER..e]) == crc
            });
        match (good, end) {
            (true, Some(e)) => {
                if let Some(b) = bad_from.take() {
                    out.damaged.push((b as u64, (at - b) as u64));
                }
                out.offsets.extend(
                    bytes[at + BATCH_HEADER..e]
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                at = e;
            }
            _ => {
                bad_from.get_or_insert(at);
                match bytes[at + 1..]
                    .windows(BATCH_MAGIC.len())
                    .position(|w| w == BATCH_MAGIC)
                {
                    Some(i) => at += 1 + i,
                    None => at = bytes.len(),
                }
            }
        }
    }
    let end = bad_from.unwrap_or(at);
    if end < bytes.len() {
        out.damaged.push((end as u64, (bytes.len() - end) as u64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_read_back_and_a_damaged_one_costs_only_itself() {
        let mut file = FILE_MAGIC.to_vec();
        file.extend(encode_batch(&[1, 2, 3]));
        let second = file.len();
        file.extend(encode_batch(&[40, 50]));
        file.extend(encode_batch(&[600]));
        assert_eq!(parse(&file).offsets, vec![1, 2, 3, 40, 50, 600]);
        assert!(parse(&file).damaged.is_empty());
        let mut hit = file.clone();
        hit[second + BATCH_HEADER + 1] ^= 0x10;
        let got = parse(&hit);
        assert_eq!(got.offsets, vec![1, 2, 3, 600]);
        assert_eq!(got.damaged, vec![(second as u64, 20)]);
        // A torn last batch.
        let got = parse(&file[..file.len() - 2]);
        assert_eq!(got.offsets, vec![1, 2, 3, 40, 50]);
        assert_eq!(got.damaged.len(), 1);
        // The older format.
        assert_eq!(parse(&encode_legacy(&[7, 8])).offsets, vec![7, 8]);
    }
}
