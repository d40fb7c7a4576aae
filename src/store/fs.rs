//! The thin file layer the message log writes through. The broker uses the real file system;
//! the power-cut tests (powercut.rs) put one in its place that records every write and sync
//! and can then "lose power": whatever a file had not synced is dropped, cut short or
//! garbled, as a disk cache losing its contents would leave it.
//!
//! The log needs little from a file system: positional reads and writes, appends, fdatasync,
//! listing, removal, and a directory sync so that created and removed files stay so.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open file of the log.
pub trait StoreFile: Send + Sync {
    fn write_all_at(&self, buf: &[u8], off: u64) -> std::io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> std::io::Result<u64>;
    fn sync_data(&self) -> std::io::Result<()>;
}

/// The operations the log uses on paths.
pub trait FileSystem: Send + Sync {
    /// Open for reading and writing; `create` makes it if missing.
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn StoreFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Append `bytes`, creating the file (starting with `header`) if it is missing or empty.
    fn append(&self, path: &Path, header: &[u8], bytes: &[u8]) -> std::io::Result<()>;
    /// Replace a file's content durably (write a temporary, sync, rename, sync the dir).
    fn write_durably(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// File names in a directory.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// Make the directory's entries (created and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// The operating system's file system.
pub struct RealFs;

struct RealFile(std::fs::File);

impl StoreFile for RealFile {
    fn write_all_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, off)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

impl FileSystem for RealFs {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn StoreFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn append(&self, path: &Path, header: &[u8], bytes: &[u8]) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if f.metadata()?.len() == 0 && !header.is_empty() {
            let mut all = Vec::with_capacity(header.len() + bytes.len());
            all.extend_from_slice(header);
            all.extend_from_slice(bytes);
            return f.write_all(&all);
        }
        f.write_all(bytes)
    }

    fn write_durably(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(dir) => self.sync_dir(dir),
            None => Ok(()),
        }
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(n) = entry?.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}
