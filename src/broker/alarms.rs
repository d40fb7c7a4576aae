//! Resource alarms as RabbitMQ raises them: a memory alarm while the broker's resident
//! memory is above `memory_high_watermark`, and a disk alarm while the data dir's file
//! system has less free space than `disk_free_limit`. One sampler task measures both about
//! once a second (a read of /proc/self/statm and one statvfs, both cheap); connections that
//! publish while any alarm is set are blocked until every alarm has cleared.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often memory use and free disk space are measured.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A resource that can raise an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    Disk,
}

impl Resource {
    /// The name RabbitMQ uses in health check bodies and alarm lists.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
        }
    }
}

/// Which alarms are in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmState {
    pub fn any(&self) -> bool {
        self.memory || self.disk
    }

    /// The resources in alarm, memory first.
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        if self.memory {
            out.push(Resource::Memory);
        }
        if self.disk {
            out.push(Resource::Disk);
        }
        out
    }

    /// The `connection.blocked` reason, worded as RabbitMQ words it.
    pub fn reason(&self) -> String {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & low on disk".to_string(),
            (true, false) => "low on memory".to_string(),
            (false, true) => "low on disk".to_string(),
            (false, false) => String::new(),
        }
    }
}

/// The alarm state of one broker, its limits and the last measurements.
pub struct Alarms {
    data_dir: PathBuf,
    mem_limit: AtomicU64,
    disk_limit: AtomicU64,
    mem_used: AtomicU64,
    disk_free: AtomicU64,
    state: watch::Sender<AlarmState>,
}

impl Alarms {
    /// Limits from the configuration; relative ones are resolved against total memory now.
    pub fn new(config: &Config) -> Self {
        let total = total_memory();
        Alarms {
            data_dir: config.data_dir.clone(),
            mem_limit: AtomicU64::new(config.memory_high_watermark.bytes(total)),
            disk_limit: AtomicU64::new(config.disk_free_limit.bytes(total)),
            mem_used: AtomicU64::new(0),
            disk_free: AtomicU64::new(u64::MAX),
            state: watch::channel(AlarmState::default()).0,
        }
    }

    pub fn state(&self) -> AlarmState {
        *self.state.borrow()
    }

    /// Follow alarm changes (connections wait on this to unblock).
    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    /// Raise or clear one alarm. The sampler calls this; transitions are logged.
    pub fn set(&self, resource: Resource, on: bool) {
        let changed = self.state.send_if_modified(|s| {
            let flag = match resource {
                Resource::Memory => &mut s.memory,
                Resource::Disk => &mut s.disk,
            };
            let changed = *flag != on;
            *flag = on;
            changed
        });
        if !changed {
            return;
        }
        let (used, limit) = match resource {
            Resource::Memory => (self.memory_used(), self.memory_limit()),
            Resource::Disk => (self.disk_free(), self.disk_free_limit()),
        };
        if on {
            tracing::warn!(
                resource = resource.name(),
                measured = used,
                limit,
                "resource alarm set; publishing connections are blocked"
            );
        } else {
            tracing::info!(
                resource = resource.name(),
                measured = used,
                limit,
                "resource alarm cleared"
            );
        }
    }

    /// The memory high watermark in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.mem_limit.load(Ordering::Relaxed)
    }

    /// The disk free limit in bytes.
    pub fn disk_free_limit(&self) -> u64 {
        self.disk_limit.load(Ordering::Relaxed)
    }

    /// Resident memory at the last sample.
    pub fn memory_used(&self) -> u64 {
        self.mem_used.load(Ordering::Relaxed)
    }

    /// Free disk space at the last sample.
    pub fn disk_free(&self) -> u64 {
        self.disk_free.load(Ordering::Relaxed)
    }

    /// Change the memory watermark at run time (as `rabbitmqctl set_vm_memory_high_watermark`)
    /// and re-evaluate at once.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.mem_limit.store(bytes, Ordering::Relaxed);
        self.sample();
    }

    /// Change the disk free limit at run time (as `rabbitmqctl set_disk_free_limit`) and
    /// re-evaluate at once.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_limit.store(bytes, Ordering::Relaxed);
        self.sample();
    }

    /// Measure memory and disk and raise or clear the alarms accordingly.
    pub fn sample(&self) {
        let used = rss_bytes();
        self.mem_used.store(used, Ordering::Relaxed);
        self.set(Resource::Memory, used > self.memory_limit());
        // A failed statvfs reads as "unknown": it must not raise an alarm by itself.
        let free = disk_free(&self.data_dir).unwrap_or(u64::MAX);
        self.disk_free.store(free, Ordering::Relaxed);
        self.set(Resource::Disk, free < self.disk_free_limit());
    }
}

/// Sample until shutdown.
pub async fn run_sampler(alarms: Arc<Alarms>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => alarms.sample(),
            _ = shutdown.changed() => break,
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    page.max(0) as u64
}

/// Resident set size from /proc/self/statm (0 where that is not available).
pub fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// Physical memory, or the cgroup (v2) memory limit when that is lower: in a container the
/// limit is what the kernel enforces.
pub fn total_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let physical = pages.max(0) as u64 * page_size();
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match cgroup {
        Some(c) if c > 0 && (physical == 0 || c < physical) => c,
        _ => physical,
    }
}

/// Bytes available to this process on the file system holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct; `c` is a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_drive_the_alarms() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let alarms = Alarms::new(&config);
        let mut rx = alarms.subscribe();
        alarms.set_memory_limit(1);
        assert!(alarms.state().memory);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(rx.borrow_and_update().reason(), "low on memory");
        alarms.set_disk_free_limit(u64::MAX);
        assert_eq!(alarms.state().reason(), "low on memory & low on disk");
        alarms.set_memory_limit(u64::MAX);
        alarms.set_disk_free_limit(0);
        assert!(!alarms.state().any());
    }
}
