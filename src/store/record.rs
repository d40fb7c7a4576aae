//! The on-disk format of a segment, and the scan that reads one back past damage.
//!
//! A segment starts with a file header, written twice so one damaged copy does not make the
//! file unreadable: `[magic "WMQSEG\0\x03"][salt u32 LE][crc32 u32 LE]` × 2. Then records:
//!
//! ```text
//! [magic u32 LE][len u32 LE][queue id u64 BE][seq u64 BE][header crc u32 LE][body crc u32 LE][body: len bytes]
//! ```
//!
//! Both CRCs are CRC-32 seeded with the segment's random salt. The header CRC lets a scan
//! that met damage find the next record again (look for the magic, check the header), and
//! the salt keeps a message body that happens to contain a copy of a record from being taken
//! for one. A record whose header checks but whose body does not is exactly one lost
//! record of a known queue; damage to a header costs the bytes up to the next good record.
//!
//! Queue id 0 is the log's own: seq 1 is a sync mark, a list of `[segment u32 LE][synced
//! length u64 LE]` saying how far each segment was known fdatasync'd when the mark was
//! written. Recovery uses the highest mark of each segment to tell a torn tail (bytes
//! after the last sync: a crash, never confirmed) from damage to synced data.
//!
//! Segments written before this format (no file header; records `[len][crc][queue][seq]
//! [message]`) are still read; damage in them ends that segment's scan, as it always did.

use super::fs::StoreFile;

pub const FILE_MAGIC: [u8; 8] = *b"WMQSEG\0\x03";
/// Size of the doubled file header.
pub const FILE_HEADER: usize = 32;
pub const REC_MAGIC: [u8; 4] = *b"WMQr";
pub const REC_HEADER: usize = 32;
/// No record may claim more than this (max message size plus properties, with margin).
pub const MAX_RECORD: u32 = 1 << 30;
/// The queue id of the log's own records.
pub const CONTROL_QUEUE: u64 = 0;
/// The seq of a sync mark.
pub const SYNC_MARK: u64 = 1;
/// Legacy record header: length and CRC, then 16 bytes of ids.
const LEGACY_HEADER: usize = 8;
const LEGACY_IDS: usize = 16;

fn salted(salt: u32, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// The file header of a new segment.
pub fn file_header(salt: u32) -> [u8; FILE_HEADER] {
    let mut one = [0u8; 16];
    one[..8].copy_from_slice(&FILE_MAGIC);
    one[8..12].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&one[..12]);
    one[12..].copy_from_slice(&crc.to_le_bytes());
    let mut out = [0u8; FILE_HEADER];
    out[..16].copy_from_slice(&one);
    out[16..].copy_from_slice(&one);
    out
}

/// One copy of the file header checks.
pub fn header_copy_ok(c: &[u8]) -> bool {
    c.len() == 16
        && c[..8] == FILE_MAGIC
        && crc32fast::hash(&c[..12]) == u32::from_le_bytes([c[12], c[13], c[14], c[15]])
}

/// How a segment file is laid out, read from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// This format, with the salt of its records.
    Framed { salt: u32 },
    /// The format before file headers.
    Legacy,
    /// Neither copy of the header checks and the file is not legacy either; the salts the
    /// two copies carry are tried in turn.
    DamagedHeader { salts: [u32; 2] },
}

pub fn layout(head: &[u8]) -> Layout {
    let copy = |i: usize| head.get(i * 16..i * 16 + 16);
    let mut salts = [0u32; 2];
    let mut magic_seen = false;
    for (i, slot) in salts.iter_mut().enumerate() {
        let Some(c) = copy(i) else { continue };
        let salt = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
        *slot = salt;
        let crc = u32::from_le_bytes([c[12], c[13], c[14], c[15]]);
        if c[..8] == FILE_MAGIC {
            magic_seen = true;
            if crc32fast::hash(&c[..12]) == crc {
                return Layout::Framed { salt };
            }
        }
    }
    // A legacy file starts with a record length below MAX_RECORD, which the magic's
    // first four bytes as a length are not; an empty file has no layout to speak of.
    let legacy_len = head
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if magic_seen || legacy_len.is_some_and(|l| l > MAX_RECORD) {
        Layout::DamagedHeader { salts }
    } else {
        Layout::Legacy
    }
}

/// Append a record to `buf`; `write` appends the body.
pub fn put_record(
    buf: &mut Vec<u8>,
    salt: u32,
    queue_id: u64,
    seq: u64,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&REC_MAGIC);
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&queue_id.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&[0u8; 8]);
    write(buf);
    let len = (buf.len() - start - REC_HEADER) as u32;
    buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let hcrc = salted(salt, &[&buf[start..start + 24]]);
    let bcrc = salted(salt, &[&buf[start + REC_HEADER..]]);
    buf[start + 24..start + 28].copy_from_slice(&hcrc.to_le_bytes());
    buf[start + 28..start + 32].copy_from_slice(&bcrc.to_le_bytes());
}

/// A record header that checks.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub len: u32,
    pub queue_id: u64,
    pub seq: u64,
    bcrc: u32,
}

pub fn parse_header(h: &[u8], salt: u32) -> Option<Header> {
    let h = h.get(..REC_HEADER)?;
    if h[..4] != REC_MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if salted(salt, &[&h[..24]]) != word(24) {
        return None;
    }
    let len = word(4);
    if len > MAX_RECORD {
        return None;
    }
    Some(Header {
        len,
        queue_id: u64::from_be_bytes(h[8..16].try_into().ok()?),
        seq: u64::from_be_bytes(h[16..24].try_into().ok()?),
        bcrc: word(28),
    })
}

pub fn body_ok(h: &Header, body: &[u8], salt: u32) -> bool {
    salted(salt, &[body]) == h.bcrc
}

/// The body of a record in an in-memory buffer (the log's unwritten appends).
pub fn body_in(buf: &[u8], at: usize) -> Option<&[u8]> {
    let h = buf.get(at..at + REC_HEADER)?;
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    buf.get(at + REC_HEADER..at + REC_HEADER + len)
}

/// Read one record back from a file, checking both CRCs.
pub fn read_at(file: &dyn StoreFile, off: u64, salt: u32) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; REC_HEADER];
    file.read_exact_at(&mut h, off)?;
    let header =
        parse_header(&h, salt).ok_or_else(|| std::io::Error::other("damaged record header"))?;
    let mut body = vec![0u8; header.len as usize];
    file.read_exact_at(&mut body, off + REC_HEADER as u64)?;
    if !body_ok(&header, &body, salt) {
        return Err(std::io::Error::other("record checksum mismatch"));
    }
    Ok(body)
}

/// Read a legacy record back.
pub fn read_legacy_at(file: &dyn StoreFile, off: u64) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; LEGACY_HEADER];
    file.read_exact_at(&mut h, off)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if !(LEGACY_IDS as u32..=MAX_RECORD).contains(&len) {
        return Err(std::io::Error::other("bad record length"));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, off + LEGACY_HEADER as u64)?;
    if crc32fast::hash(&payload) != crc {
        return Err(std::io::Error::other("record checksum mismatch"));
    }
    payload.drain(..LEGACY_IDS);
    Ok(payload)
}

/// What a scan finds, in file order.
#[derive(Debug)]
pub enum Found<'a> {
    Record {
        off: u64,
        queue_id: u64,
        seq: u64,
        body: &'a [u8],
    },
    /// Bytes that are not good records. `record` is the queue id and seq when the header
    /// checked (exactly that one record is lost).
    Damaged {
        off: u64,
        len: u64,
        record: Option<(u64, u64)>,
    },
}

/// Reads a file through a window of a few MB at a time (segments are far larger than
/// what recovery should hold in memory).
struct Window<'f> {
    file: &'f dyn StoreFile,
    size: u64,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 1 << 20;

impl<'f> Window<'f> {
    fn new(file: &'f dyn StoreFile, size: u64) -> Self {
        Window {
            file,
            size,
            start: 0,
            buf: Vec::new(),
        }
    }

    fn get(&mut self, off: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        if off + len as u64 > self.size {
            return Ok(None);
        }
        let have = off >= self.start && off + len as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = len.max(WINDOW).min((self.size - off) as usize);
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }

    /// The next offset at or after `from` where the record magic appears.
    fn next_magic(&mut self, from: u64) -> std::io::Result<Option<u64>> {
        let mut p = from;
        while p + REC_MAGIC.len() as u64 <= self.size {
            let n = ((self.size - p) as usize).min(WINDOW);
            let Some(chunk) = self.get(p, n)? else { break };
            if let Some(i) = chunk.windows(REC_MAGIC.len()).position(|w| w == REC_MAGIC) {
                return Ok(Some(p + i as u64));
            }
            if n <= REC_MAGIC.len() {
                break;
            }
            p += (n - (REC_MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }
}

/// Scan a framed segment from after its header to `size`, passing records and damaged
/// stretches to `each` in file order. Damage never ends the scan: it resumes at the next
/// record whose header checks.
pub fn scan(
    file: &dyn StoreFile,
    size: u64,
    salt: u32,
    mut each: impl FnMut(Found<'_>),
) -> std::io::Result<()> {
    let mut w = Window::new(file, size);
    let mut off = FILE_HEADER as u64;
    let mut bad_from: Option<u64> = None;
    while off + REC_HEADER as u64 <= size {
        let header = match w.get(off, REC_HEADER)? {
            Some(h) => parse_header(h, salt),
            None => None,
        };
        match header {
            Some(h) if off + (REC_HEADER as u64) + h.len as u64 <= size => {
                if let Some(b) = bad_from.take() {
                    each(Found::Damaged {
                        off: b,
                        len: off - b,
                        record: None,
                    });
                }
                let total = REC_HEADER + h.len as usize;
                let Some(rec) = w.get(off, total)? else { break };
                let body = &rec[REC_HEADER..];
                if body_ok(&h, body, salt) {
                    each(Found::Record {
                        off,
                        queue_id: h.queue_id,
                        seq: h.seq,
                        body,
                    });
                } else {
                    each(Found::Damaged {
                        off,
                        len: total as u64,
                        record: Some((h.queue_id, h.seq)),
                    });
                }
                off += total as u64;
            }
            _ => {
                bad_from.get_or_insert(off);
                match w.next_magic(off + 1)? {
                    Some(next) => off = next,
                    None => {
                        off = size;
                        break;
                    }
                }
            }
        }
    }
    let end = bad_from.unwrap_or(off);
    if end < size {
        each(Found::Damaged {
            off: end,
            len: size - end,
            record: None,
        });
    }
    Ok(())
}

/// Scan a legacy segment: records until the first that does not check; the rest of the
/// file is one damaged stretch (the format has nothing to resynchronise on).
pub fn scan_legacy(
    file: &dyn StoreFile,
    size: u64,
    mut each: impl FnMut(Found<'_>),
) -> std::io::Result<()> {
    let mut w = Window::new(file, size);
    let mut off = 0u64;
    while off + LEGACY_HEADER as u64 <= size {
        let Some(h) = w.get(off, LEGACY_HEADER)? else {
            break;
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if !(LEGACY_IDS as u32..=MAX_RECORD).contains(&len) {
            break;
        }
        let total = LEGACY_HEADER + len as usize;
        let Some(rec) = w.get(off, total)? else { break };
        let payload = &rec[LEGACY_HEADER..];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let queue_id = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
        let seq = u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default());
        each(Found::Record {
            off,
            queue_id,
            seq,
            body: &payload[LEGACY_IDS..],
        });
        off += total as u64;
    }
    if off < size {
        each(Found::Damaged {
            off,
            len: size - off,
            record: None,
        });
    }
    Ok(())
}

/// The body of a sync mark: every (segment, synced length) pair.
pub fn encode_marks(marks: &[(u32, u64)], buf: &mut Vec<u8>) {
    for (seg, len) in marks {
        buf.extend_from_slice(&seg.to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
    }
}

pub fn decode_marks(body: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    body.chunks_exact(12).map(|c| {
        (
            u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            u64::from_le_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::{FileSystem, RealFs};

    fn segment(records: &[(u64, u64, Vec<u8>)], salt: u32) -> Vec<u8> {
        let mut buf = file_header(salt).to_vec();
        for (q, s, body) in records {
            put_record(&mut buf, salt, *q, *s, |b| b.extend_from_slice(body));
        }
        buf
    }

    /// Records (queue, seq) and damaged stretches (offset, length, header known).
    type Scanned = (Vec<(u64, u64)>, Vec<(u64, u64, bool)>);

    fn scan_bytes(bytes: &[u8], salt: u32) -> Scanned {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        std::fs::write(&path, bytes).expect("write");
        let f = RealFs.open(&path, false).expect("open");
        let (mut recs, mut bad) = (Vec::new(), Vec::new());
        scan(&*f, bytes.len() as u64, salt, |found| match found {
            Found::Record { queue_id, seq, .. } => recs.push((queue_id, seq)),
            Found::Damaged { off, len, record } => bad.push((off, len, record.is_some())),
        })
        .expect("scan");
        (recs, bad)
    }

    #[test]
    fn the_file_header_survives_one_damaged_copy() {
        let mut h = file_header(77);
        assert_eq!(layout(&h), Layout::Framed { salt: 77 });
        h[3] ^= 1;
        assert_eq!(layout(&h), Layout::Framed { salt: 77 });
        h[20] ^= 1;
        assert!(matches!(layout(&h), Layout::DamagedHeader { .. }));
        let mut legacy = Vec::new();
        legacy.extend_from_slice(&40u32.to_le_bytes());
        legacy.extend_from_slice(&[0u8; 40]);
        assert_eq!(layout(&legacy), Layout::Legacy);
    }

    #[test]
    fn a_damaged_body_costs_that_record_and_a_damaged_header_resynchronises() {
        let recs: Vec<(u64, u64, Vec<u8>)> = (0..10).map(|i| (5, i, vec![i as u8; 300])).collect();
        let clean = segment(&recs, 9);
        assert_eq!(scan_bytes(&clean, 9).0.len(), 10);
        let rec_len = REC_HEADER + 300;
        // Body of record 3.
        let mut body_hit = clean.clone();
        body_hit[FILE_HEADER + 3 * rec_len + REC_HEADER + 10] ^= 0x40;
        let (got, bad) = scan_bytes(&body_hit, 9);
        assert_eq!(got.len(), 9);
        assert_eq!(
            bad,
            vec![((FILE_HEADER + 3 * rec_len) as u64, rec_len as u64, true)]
        );
        // Header (length field) of record 6.
        let mut head_hit = clean.clone();
        head_hit[FILE_HEADER + 6 * rec_len + 5] ^= 0x01;
        let (got, bad) = scan_bytes(&head_hit, 9);
        assert_eq!(
            got,
            (0..10)
                .filter(|i| *i != 6)
                .map(|i| (5, i))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            bad,
            vec![((FILE_HEADER + 6 * rec_len) as u64, rec_len as u64, false)]
        );
        // A torn tail: the last record cut short.
        let torn = &clean[..clean.len() - 100];
        let (got, bad) = scan_bytes(torn, 9);
        assert_eq!(got.len(), 9);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn a_record_copied_into_a_body_is_not_taken_for_one() {
        // A publisher that puts a whole record (with another salt) into a body, then the
        // header of the record holding it is damaged: the scan must not find the copy.
        let mut inner = Vec::new();
        put_record(&mut inner, 1234, 5, 99, |b| b.extend_from_slice(b"forged"));
        let recs = vec![(5, 0, vec![1; 50]), (5, 1, inner), (5, 2, vec![2; 50])];
        let mut bytes = segment(&recs, 4321);
        let second = FILE_HEADER + REC_HEADER + 50;
        bytes[second + 9] ^= 0xff;
        let (got, _) = scan_bytes(&bytes, 4321);
        assert_eq!(got, vec![(5, 0), (5, 2)]);
    }
}
