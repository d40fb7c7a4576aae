//! Power-cut simulation of the message log. A file system in memory records every write,
//! fdatasync and directory sync; "cutting power" keeps what was synced and leaves the rest
//! of each file dropped, cut short, zeroed or garbled in 512- or 4096-byte pieces, makes
//! files created since their directory's last sync vanish or not, and brings files removed
//! since then back or not. A random workload of appends, acks, deliveries and group-commit
//! rounds runs until a random cut; recovery must then hold every confirmed message that was
//! not acked, nothing that was never published, nothing twice, and report no damage (a
//! power cut only tears unsynced tails).
//!
//! `WARRENMQ_POWERCUT_CASES=N` runs N cases instead of the default (each case has two cuts).

use super::fs::{FileSystem, StoreFile};
use super::segments::{Loc, MessageLog};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Default)]
struct SimState {
    files: HashMap<PathBuf, SimFile>,
    /// Created since their directory was last synced.
    fresh: HashSet<PathBuf>,
    /// Removed since their directory was last synced.
    removed: HashMap<PathBuf, SimFile>,
}

#[derive(Clone, Default)]
pub struct SimFs(Arc<parking_lot::Mutex<SimState>>);

struct SimHandle {
    fs: SimFs,
    path: PathBuf,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
}

impl StoreFile for SimHandle {
    fn write_all_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        let mut st = self.fs.0.lock();
        let f = st.files.get_mut(&self.path).ok_or_else(gone)?;
        let end = off as usize + buf.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[off as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let st = self.fs.0.lock();
        let f = st.files.get(&self.path).ok_or_else(gone)?;
        let src = f
            .data
            .get(off as usize..off as usize + buf.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> std::io::Result<u64> {
        let st = self.fs.0.lock();
        Ok(st.files.get(&self.path).ok_or_else(gone)?.data.len() as u64)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut st = self.fs.0.lock();
        let f = st.files.get_mut(&self.path).ok_or_else(gone)?;
        f.synced = f.data.len();
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn StoreFile>> {
        let mut st = self.0.lock();
        if !st.files.contains_key(path) {
            if !create {
                return Err(gone());
            }
            st.files.insert(path.to_path_buf(), SimFile::default());
            st.fresh.insert(path.to_path_buf());
        }
        Ok(Arc::new(SimHandle {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let st = self.0.lock();
        Ok(st.files.get(path).ok_or_else(gone)?.data.clone())
    }

    fn append(&self, path: &Path, header: &[u8], bytes: &[u8]) -> std::io::Result<()> {
        let mut st = self.0.lock();
        if !st.files.contains_key(path) {
            st.fresh.insert(path.to_path_buf());
        }
        let f = st.files.entry(path.to_path_buf()).or_default();
        if f.data.is_empty() {
            f.data.extend_from_slice(header);
        }
        f.data.extend_from_slice(bytes);
        Ok(())
    }

    fn write_durably(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut st = self.0.lock();
        st.fresh.remove(path);
        st.files.insert(
            path.to_path_buf(),
            SimFile {
                data: bytes.to_vec(),
                synced: bytes.len(),
            },
        );
        Ok(())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let mut st = self.0.lock();
        let f = st.files.remove(path).ok_or_else(gone)?;
        if !st.fresh.remove(path) {
            st.removed.insert(path.to_path_buf(), f);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let st = self.0.lock();
        Ok(st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn create_dir_all(&self, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut st = self.0.lock();
        st.fresh.retain(|p| p.parent() != Some(dir));
        st.removed.retain(|p, _| p.parent() != Some(dir));
        Ok(())
    }
}

/// What is left of a file's unsynced part after the power went.
fn mangle(f: &SimFile, rng: &mut StdRng) -> Vec<u8> {
    let mut out = f.data[..f.synced].to_vec();
    if f.data.len() == f.synced {
        return out;
    }
    let piece = if rng.random_bool(0.5) { 512 } else { 4096 };
    let end = if rng.random_bool(0.3) {
        f.data.len()
    } else {
        rng.random_range(f.synced..=f.data.len())
    };
    let mut at = f.synced;
    while at < end {
        let next = ((at / piece + 1) * piece).min(end);
        match rng.random_range(0..10) {
            0..=5 => out.extend_from_slice(&f.data[at..next]),
            6..=7 => out.resize(out.len() + (next - at), 0),
            _ => out.extend((at..next).map(|_| rng.random::<u8>())),
        }
        at = next;
    }
    out
}

impl SimFs {
    /// The disk as it is after a power cut now.
    fn cut(&self, rng: &mut StdRng) -> SimFs {
        let st = self.0.lock();
        let mut after = SimState::default();
        for (path, f) in &st.files {
            if st.fresh.contains(path) && rng.random_bool(0.5) {
                continue;
            }
            let data = mangle(f, rng);
            let synced = data.len();
            after.files.insert(path.clone(), SimFile { data, synced });
        }
        for (path, f) in &st.removed {
            if rng.random_bool(0.5) {
                let data = mangle(f, rng);
                let synced = data.len();
                after.files.insert(path.clone(), SimFile { data, synced });
            }
        }
        SimFs(Arc::new(parking_lot::Mutex::new(after)))
    }
}

/// The body a message (queue, seq) carries, so recovery can check what it read.
fn body(queue: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len + 16);
    b.extend_from_slice(&queue.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend((0..len).map(|i| (seq as usize * 31 + i) as u8));
    b
}

#[derive(Default)]
struct Model {
    published: HashSet<(u64, u64)>,
    /// Confirmed and not acked: must come back.
    owed: HashSet<(u64, u64)>,
    live: Vec<(Loc, u64, u64)>,
    next_seq: u64,
}

/// Recover from `fs` and check it against the model; the recovered log and its records.
fn recover_and_check(fs: &SimFs, seed: u64, seg_bytes: u64, m: &mut Model) -> MessageLog {
    let dir = Path::new("/sim/messages");
    let log = MessageLog::open_in(Arc::new(fs.clone()), dir, seg_bytes).expect("open");
    let mut seen = HashSet::new();
    let mut live = Vec::new();
    log.recover(|loc, q, seq, _, raw| {
        assert!(
            m.published.contains(&(q, seq)),
            "seed {seed}: ({q}, {seq}) was never published"
        );
        assert!(
            seen.insert((q, seq)),
            "seed {seed}: ({q}, {seq}) came back twice"
        );
        assert_eq!(
            &raw[..16],
            &body(q, seq, 0)[..16],
            "seed {seed}: wrong body"
        );
        assert_eq!(
            raw,
            &body(q, seq, raw.len() - 16)[..],
            "seed {seed}: body damaged"
        );
        live.push((loc, q, seq));
        true
    })
    .expect("recover");
    for owed in &m.owed {
        assert!(
            seen.contains(owed),
            "seed {seed}: confirmed message {owed:?} lost"
        );
    }
    let summary = log.health.summary();
    assert!(
        summary.open.is_empty(),
        "seed {seed}: a power cut was reported as damage: {:?}",
        summary.open
    );
    // What came back is live again (and owed: it is on disk, synced by the next round).
    m.live = live;
    log
}

/// Run random work on `log` until the cut; the state of the disk then.
fn work(log: &MessageLog, fs: &SimFs, rng: &mut StdRng, m: &mut Model) -> SimFs {
    let ops = rng.random_range(1..150);
    let mut pending: Vec<(u64, u64)> = Vec::new();
    for _ in 0..ops {
        match rng.random_range(0..100) {
            0..=49 => {
                for _ in 0..rng.random_range(1..5) {
                    let q = rng.random_range(1..4u64);
                    let seq = m.next_seq;
                    m.next_seq += 1;
                    let len = rng.random_range(0..700);
                    let mut st = log.state.lock();
                    let loc = log
                        .append(&mut st, q, seq, |b| b.extend(body(q, seq, len)))
                        .expect("append");
                    drop(st);
                    m.published.insert((q, seq));
                    m.live.push((loc, q, seq));
                    pending.push((q, seq));
                }
            }
            50..=64 if !m.live.is_empty() => {
                let i = rng.random_range(0..m.live.len());
                let (loc, q, seq) = m.live.swap_remove(i);
                log.state.lock().remove(loc);
                m.owed.remove(&(q, seq));
            }
            65..=72 if !m.live.is_empty() => {
                let i = rng.random_range(0..m.live.len());
                log.state.lock().delivered(m.live[i].0);
            }
            73..=75 => {
                // The cut comes in the middle of a round: written, not yet synced.
                let mut st = log.state.lock();
                let _ = log.begin_round(&mut st).expect("begin");
                break;
            }
            _ => {
                let round = {
                    let mut st = log.state.lock();
                    log.begin_round(&mut st).expect("begin")
                };
                log.finish_round_or_requeue(round).expect("finish");
                let live: HashSet<(u64, u64)> = m.live.iter().map(|l| (l.1, l.2)).collect();
                m.owed
                    .extend(pending.drain(..).filter(|p| live.contains(p)));
            }
        }
    }
    fs.cut(rng)
}

fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let seg_bytes = if rng.random_bool(0.5) { 2048 } else { 16384 };
    let mut m = Model::default();
    let mut fs = SimFs::default();
    let mut log = recover_and_check(&fs, seed, seg_bytes, &mut m);
    for _ in 0..2 {
        // Records recovered are owed from now on only once a round has synced them
        // again; they are on disk already, so they stay owed as they were.
        let cut = work(&log, &fs, &mut rng, &mut m);
        drop(log);
        fs = cut;
        log = recover_and_check(&fs, seed, seg_bytes, &mut m);
    }
}

#[test]
fn power_cuts_lose_no_confirmed_message_and_invent_none() {
    let cases: u64 = std::env::var("WARRENMQ_POWERCUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let base: u64 = std::env::var("WARRENMQ_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    for i in 0..cases {
        run_case(base.wrapping_add(i));
    }
}

impl SimFs {
    /// A copy of the disk as it is (everything on it counts as synced).
    fn snapshot(&self) -> SimFs {
        let st = self.0.lock();
        let files = st
            .files
            .iter()
            .map(|(p, f)| {
                let data = f.data.clone();
                let synced = data.len();
                (p.clone(), SimFile { data, synced })
            })
            .collect();
        SimFs(Arc::new(parking_lot::Mutex::new(SimState {
            files,
            ..Default::default()
        })))
    }

    /// Flip one random bit of one random byte of the log's files; which file it hit.
    fn flip(&self, rng: &mut StdRng) -> String {
        let mut st = self.0.lock();
        let total: usize = st.files.values().map(|f| f.data.len()).sum();
        let mut at = rng.random_range(0..total);
        for (path, f) in st.files.iter_mut() {
            if at < f.data.len() {
                f.data[at] ^= 1 << rng.random_range(0..8);
                return format!("{}@{at}", path.display());
            }
            at -= f.data.len();
        }
        unreachable!("offset within the files")
    }
}

/// Bit rot: a log stopped cleanly (every byte synced and marked), then one random bit
/// flipped anywhere in its files. Recovery must serve every other message intact, lose at
/// most the one record the flip hit, and report that loss (never a silent one).
#[test]
fn a_flipped_bit_costs_at_most_one_record_and_is_never_silent() {
    let dir = Path::new("/sim/messages");
    let fs = SimFs::default();
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut live: HashSet<(u64, u64)> = HashSet::new();
    {
        let log = MessageLog::open_in(Arc::new(fs.clone()), dir, 8192).expect("open");
        log.recover(|_, _, _, _, _| true).expect("empty");
        let mut locs = Vec::new();
        for seq in 0..300u64 {
            let q = 1 + seq % 3;
            let len = rng.random_range(0..400);
            let mut st = log.state.lock();
            let loc = log
                .append(&mut st, q, seq, |b| b.extend(body(q, seq, len)))
                .expect("append");
            drop(st);
            locs.push((loc, q, seq));
            live.insert((q, seq));
            if seq % 40 == 39 {
                let round = log.begin_round(&mut log.state.lock()).expect("begin");
                log.finish_round_or_requeue(round).expect("finish");
            }
        }
        for (loc, q, seq) in locs.iter().step_by(7) {
            log.state.lock().remove(*loc);
            live.remove(&(*q, *seq));
        }
        log.state.lock().delivered(locs[1].0);
        for _ in 0..3 {
            let round = log.begin_round(&mut log.state.lock()).expect("begin");
            log.finish_round_or_requeue(round).expect("finish");
            log.seal();
        }
    }
    for trial in 0..300 {
        let disk = fs.snapshot();
        let hit = disk.flip(&mut rng);
        let log = MessageLog::open_in(Arc::new(disk), dir, 8192).expect("open");
        let mut seen = HashSet::new();
        log.recover(|_, q, seq, _, raw| {
            assert!(seq < 300, "trial {trial} ({hit}): invented ({q}, {seq})");
            assert_eq!(
                raw,
                &body(q, seq, raw.len() - 16)[..],
                "trial {trial} ({hit})"
            );
            assert!(seen.insert((q, seq)), "trial {trial} ({hit}): twice");
            true
        })
        .expect("recover");
        let lost = live.difference(&seen).count();
        let h = log.health.summary();
        assert!(lost <= 1, "trial {trial} ({hit}): {lost} lost");
        if lost == 1 {
            assert!(
                !h.open.is_empty()
                    && h.damaged_records
                        + h.open.iter().filter(|d| d.queue_id.is_none()).count() as u64
                        >= 1,
                "trial {trial} ({hit}): a lost record went unreported: {h:?}"
            );
        }
        // Damage in a segment is reported even when it costs nothing (a header copy, a mark).
        if hit.ends_with(".seg") || hit.contains(".seg@") {
            assert!(
                !h.open.is_empty() || h.torn_bytes > 0,
                "trial {trial} ({hit}): flip not reported: {h:?}"
            );
        }
    }
}
