//! A checked copy of the definitions beside sled, so that damage to sled is found and
//! repaired rather than silently costing queues (and, with them, their stored messages).
//!
//! sled checks its pages, but when one fails it recovers to the state before the damage
//! without a word: a flipped bit in its file was seen to drop 11 to all 30 of 30 durable
//! queues here. So every change to the definitions or the broker metadata (users, vhosts,
//! permissions, policies) bumps a generation, written into sled with the change; at most
//! once a second (and at a clean stop) a task writes `definitions.snapshot`: the generation
//! and every record, under a CRC, after a sled flush that made that generation durable.
//!
//! At start: sled behind the snapshot (its generation lower, or missing), or at the same
//! generation with other content, means sled lost data; sled failing to open means the
//! same. Either way sled is restored from the snapshot (a sled that does not open is moved
//! aside first, to `sled.damaged-<time>`), and the damage is reported as any other
//! (damage.rs). Changes of the last second before a crash can be missing from the
//! snapshot; delayed messages (the `delayed` tree) are not in it.

use super::damage::{Damage, DamageKind, Health};
use super::fs::{FileSystem, RealFs};
use super::StoreError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"WMQDEFS1";
/// sled root-tree key of the generation.
pub(super) const GENERATION_KEY: &str = "definitions_generation";
/// The trees the snapshot covers.
const TREES: [&str; 2] = ["definitions", "meta"];

#[derive(Serialize, Deserialize, Default, PartialEq, Eq, Debug)]
pub(super) struct Snapshot {
    pub generation: u64,
    pub format_version: Option<String>,
    /// Per tree: (key, value) pairs, both UTF-8 (keys join names with NUL, values are JSON).
    pub trees: Vec<(String, Vec<(String, String)>)>,
}

pub(super) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("definitions.snapshot")
}

pub(super) fn generation_of(db: &sled::Db) -> u64 {
    db.get(GENERATION_KEY)
        .ok()
        .flatten()
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

/// Everything the snapshot covers, as it is in `db` now.
pub(super) fn take(db: &sled::Db) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot {
        generation: generation_of(db),
        format_version: db
            .get("format_version")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        trees: Vec::new(),
    };
    for name in TREES {
        let mut rows = Vec::new();
        for item in db.open_tree(name)?.iter() {
            let (k, v) = item?;
            rows.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        snap.trees.push((name.to_string(), rows));
    }
    Ok(snap)
}

pub(super) fn encode(snap: &Snapshot) -> Vec<u8> {
    let json = serde_json::to_vec(snap).unwrap_or_default();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// The snapshot in `bytes`; Err says why it cannot be used.
pub(super) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < 12 || bytes[..8] != MAGIC {
        return Err("not a definitions snapshot".into());
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if crc32fast::hash(&bytes[12..]) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(&bytes[12..]).map_err(|e| e.to_string())
}

/// Read the snapshot of a data dir, if there is a usable one (a damaged one is reported).
pub(super) fn load(data_dir: &Path, health: &Health) -> Option<Snapshot> {
    let p = path(data_dir);
    let bytes = RealFs.read(&p).ok()?;
    match decode(&bytes) {
        Ok(s) => Some(s),
        Err(why) => {
            health.damaged(Damage {
                kind: DamageKind::Definition,
                file: format!("{}: {why}", p.display()),
                offset: 0,
                len: bytes.len() as u64,
                records: 0,
                queue_id: None,
                quarantine: None,
            });
            None
        }
    }
}

/// Put the snapshot's content into `db`, replacing what the covered trees hold.
pub(super) fn restore(db: &sled::Db, snap: &Snapshot) -> Result<(), StoreError> {
    for (name, rows) in &snap.trees {
        let tree = db.open_tree(name)?;
        tree.clear()?;
        for (k, v) in rows {
            tree.insert(k.as_bytes(), v.as_bytes())?;
        }
    }
    if let Some(v) = &snap.format_version {
        db.insert("format_version", v.as_bytes())?;
    }
    db.insert(GENERATION_KEY, &snap.generation.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

/// Open sled, checked against the snapshot and repaired from it when it lost data.
pub(super) fn open_checked(
    data_dir: &Path,
    cache_bytes: u64,
    health: &Health,
) -> Result<sled::Db, StoreError> {
    let sled_dir = data_dir.join("sled");
    let open = || {
        sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(cache_bytes)
            .open()
    };
    let snap = load(data_dir, health);
    let report = |why: String, restored: usize| {
        health.damaged(Damage {
            kind: DamageKind::Definition,
            file: format!(
                "{}: {why}; {restored} record(s) restored from definitions.snapshot",
                sled_dir.display()
            ),
            offset: 0,
            len: 0,
            records: 0,
            queue_id: None,
            quarantine: None,
        })
    };
    let db = match open() {
        Ok(db) => db,
        Err(e) => {
            let Some(snap) = &snap else {
                return Err(StoreError::Open {
                    path: data_dir.display().to_string(),
                    source: e,
                });
            };
            if matches!(e, sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock"))
            {
                return Err(StoreError::Open {
                    path: data_dir.display().to_string(),
                    source: e,
                });
            }
            let aside = data_dir.join(format!(
                "sled.damaged-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ));
            std::fs::rename(&sled_dir, &aside).map_err(|io| StoreError::Open {
                path: sled_dir.display().to_string(),
                source: sled::Error::Io(io),
            })?;
            let db = open().map_err(|source| StoreError::Open {
                path: data_dir.display().to_string(),
                source,
            })?;
            restore(&db, snap)?;
            report(
                format!("did not open ({e}); moved to {}", aside.display()),
                rows(snap),
            );
            return Ok(db);
        }
    };
    if let Some(snap) = &snap {
        if let Some(why) = compare(&db, snap)? {
            restore(&db, snap)?;
            report(why, rows(snap));
        }
    }
    Ok(db)
}

/// Why `db` has lost data the snapshot holds, if it has: its generation is older, or the
/// same with other content. (A newer sled has changes the snapshot does not: fine.)
pub(super) fn compare(db: &sled::Db, snap: &Snapshot) -> Result<Option<String>, StoreError> {
    let have = generation_of(db);
    Ok(if have < snap.generation {
        Some(format!(
            "holds generation {have}, older than the snapshot's {}: changes were lost",
            snap.generation
        ))
    } else if have == snap.generation && take(db)? != *snap {
        Some(format!(
            "differs from the snapshot of the same generation {have}: records were lost or changed"
        ))
    } else {
        None
    })
}

fn rows(snap: &Snapshot) -> usize {
    snap.trees.iter().map(|(_, r)| r.len()).sum()
}
