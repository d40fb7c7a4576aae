//! `warrenmq check --data-dir DIR`: verify every file of a data dir offline, as
//! `pg_checksums --check` or `kafka-dump-log` do, without changing anything in it. Every
//! segment is scanned with the same code recovery uses (records, sync marks, damaged
//! stretches, torn tails), every ack and delivery file parsed, and sled is opened on a copy
//! (so a running broker's lock is no obstacle) and every record of every tree read and,
//! for definitions, decoded. The exit status is non-zero when anything is damaged; torn
//! tails alone (what a crash leaves, never confirmed) are reported but pass.

use super::fs::{FileSystem, RealFs};
use super::recovery::{is_torn, merge_marks, scan_segment};
use super::segments::{ack_path, dlv_path, seg_name, seg_path, segment_ids};
use super::{offsets, Recovered};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Human-readable lines, one per file with something to say, then a summary.
    pub lines: Vec<String>,
    pub segments: usize,
    pub records: u64,
    pub live_records: u64,
    pub torn_bytes: u64,
    /// Damaged stretches in synced data, ack files or definitions.
    pub damaged: usize,
    /// Records known lost (a damaged body under a header that checks).
    pub records_lost: u64,
    pub definitions: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.damaged == 0
    }
}

/// Check the data dir; Err only when it cannot be read at all.
pub fn run(data_dir: &Path) -> Result<Report, String> {
    let mut r = Report::default();
    check_messages(&data_dir.join("messages"), &mut r)?;
    check_sled(&data_dir.join("sled"), &mut r);
    r.lines.push(format!(
        "summary: {} segment(s), {} record(s) ({} live), {} damaged stretch(es), {} record(s) known lost, {} torn byte(s), {} definition(s): {}",
        r.segments,
        r.records,
        r.live_records,
        r.damaged,
        r.records_lost,
        r.torn_bytes,
        r.definitions,
        if r.ok() { "OK" } else { "DAMAGED" }
    ));
    Ok(r)
}

fn check_messages(dir: &Path, r: &mut Report) -> Result<(), String> {
    let fs = RealFs;
    if !dir.exists() {
        r.lines.push(format!("{}: no message log", dir.display()));
        return Ok(());
    }
    let ids = segment_ids(&fs, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut marks: BTreeMap<u32, u64> = BTreeMap::new();
    let mut stretches = Vec::new();
    for id in ids {
        r.segments += 1;
        let mut acked = HashSet::new();
        for (path, is_ack) in [(ack_path(dir, id), true), (dlv_path(dir, id), false)] {
            let Ok(bytes) = fs.read(&path) else { continue };
            let parsed = offsets::parse(&bytes);
            for (off, len) in &parsed.damaged {
                r.damaged += 1;
                r.lines.push(format!(
                    "{}: DAMAGED at offset {off}, {len} byte(s): ack/delivery entries unreadable (those messages would come back)",
                    path.display()
                ));
            }
            if is_ack {
                acked.extend(parsed.offsets);
            }
        }
        let path = seg_path(dir, id);
        let file = fs
            .open(&path, false)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let size = file
            .size()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (mut records, mut live) = (0u64, 0u64);
        let scanned = scan_segment(&*file, size, |off, _, _, _| {
            records += 1;
            if !acked.contains(&(off as u32)) {
                live += 1;
            }
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
        r.records += records;
        r.live_records += live;
        r.lines.push(format!(
            "{}: {:?}, {size} byte(s), {records} record(s), {live} live",
            path.display(),
            scanned.layout
        ));
        merge_marks(&mut marks, scanned.marks);
        stretches.extend(
            scanned
                .stretches
                .into_iter()
                .map(|(off, len, rec)| (id, off, len, rec, acked.contains(&(off as u32)))),
        );
    }
    for (id, off, len, rec, acked) in stretches {
        let name = seg_name(id);
        if is_torn(off, id.get(), &marks) {
            r.torn_bytes += len;
            r.lines.push(format!(
                "{name}: torn tail at offset {off}, {len} byte(s) (after the last sync: never confirmed)"
            ));
            continue;
        }
        r.damaged += 1;
        let what = match rec {
            Some((0, _)) => "a sync mark (no message lost)".to_string(),
            Some(_) if acked => "1 record, acked already (no message lost)".to_string(),
            Some((q, seq)) => {
                r.records_lost += 1;
                format!("1 record lost (queue id {q}, seq {seq})")
            }
            None => "record headers unreadable (how many records: unknown)".to_string(),
        };
        r.lines.push(format!(
            "{name}: DAMAGED at offset {off}, {len} byte(s): {what}"
        ));
    }
    Ok(())
}

/// Copy a directory tree (sled's files) to `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

fn check_sled(dir: &Path, r: &mut Report) {
    if !dir.exists() {
        r.lines
            .push(format!("{}: no definitions store", dir.display()));
        return;
    }
    let copy: PathBuf = std::env::temp_dir().join(format!("warrenmq-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    let damaged = |r: &mut Report, what: String| {
        r.damaged += 1;
        r.lines.push(format!("{}: DAMAGED: {what}", dir.display()));
    };
    if let Err(e) = copy_dir(dir, &copy) {
        damaged(r, format!("cannot be copied for checking: {e}"));
        return;
    }
    match sled::Config::new().path(&copy).open() {
        Err(e) => damaged(r, format!("does not open: {e}")),
        Ok(db) => {
            let mut read = 0u64;
            for name in db.tree_names() {
                let tree = match db.open_tree(&name) {
                    Ok(t) => t,
                    Err(e) => {
                        damaged(r, format!("tree {}: {e}", String::from_utf8_lossy(&name)));
                        continue;
                    }
                };
                let definitions = &name[..] == b"definitions";
                let meta = &name[..] == b"meta";
                for item in tree.iter() {
                    match item {
                        Err(e) => {
                            damaged(r, format!("tree {}: {e}", String::from_utf8_lossy(&name)));
                            break;
                        }
                        Ok((k, v)) => {
                            read += 1;
                            let key = String::from_utf8_lossy(&k).replace('\u{0}', "/");
                            let bad = if definitions {
                                let kind = key.split('/').next().unwrap_or_default().to_string();
                                super::decode_definition(&kind, &v, &mut Recovered::default()).err()
                            } else if meta {
                                serde_json::from_slice::<serde_json::Value>(&v)
                                    .err()
                                    .map(|e| e.to_string())
                            } else {
                                None
                            };
                            if let Some(why) = bad {
                                damaged(r, format!("record {key}: {why}"));
                            } else if definitions || meta {
                                r.definitions += 1;
                            }
                        }
                    }
                }
            }
            r.lines.push(format!(
                "{}: {read} record(s) read, {} definition(s) decoded",
                dir.display(),
                r.definitions
            ));
            let snap_path = super::snapshot::path(dir.parent().unwrap_or(dir));
            match std::fs::read(&snap_path) {
                Err(_) => r.lines.push(format!("{}: none", snap_path.display())),
                Ok(bytes) => match super::snapshot::decode(&bytes) {
                    Err(why) => damaged(r, format!("{}: {why}", snap_path.display())),
                    Ok(snap) => match super::snapshot::compare(&db, &snap) {
                        Ok(None) => r.lines.push(format!(
                            "{}: generation {}, sled agrees",
                            snap_path.display(),
                            snap.generation
                        )),
                        Ok(Some(why)) => damaged(r, format!("{why} (a start restores it)")),
                        Err(e) => damaged(r, format!("cannot be compared: {e}")),
                    },
                },
            }
        }
    }
    let _ = std::fs::remove_dir_all(&copy);
}
