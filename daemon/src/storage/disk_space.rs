//! Free space on the file system of the data directory, and the reserve the Raft thread
//! keeps there.
//!
//! Why: SQLite answers a full disk with `SQLITE_FULL` in the middle of a `Ready`'s
//! transaction. The transaction rolls back, but by then Raft and the state machine
//! have moved on in memory, so the only safe answer at that point is to stop the
//! member. Instead the Raft thread looks before it writes: while less than
//! [`RESERVE_BYTES`] are free it refuses new proposals (etcd's "database space
//! exceeded") and persists nothing, which for Raft is a member that is slow to answer,
//! not a faulty one; its serializable reads still work. Once [`RESUME_BYTES`] are free
//! again it carries on where it stopped.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Below this much free space the member stops writing. Room for what one `Ready` and
/// one WAL checkpoint write in the meantime, with a wide margin.
pub const RESERVE_BYTES: u64 = 16 << 20;
/// Writing starts again once this much is free (twice the reserve, so a disk at the
/// edge does not flap between the two).
pub const RESUME_BYTES: u64 = 2 * RESERVE_BYTES;
/// How often the free space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn available(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path, `st` a buffer statvfs(3) fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st` in.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether the data directory is short of space, measured at most every
/// [`CHECK_EVERY`] (one `statvfs` call: no I/O).
pub struct SpaceGuard {
    dir: PathBuf,
    short: bool,
    checked: Option<Instant>,
}

impl SpaceGuard {
    /// Watches the file system that holds `dir`.
    pub fn new(dir: PathBuf) -> SpaceGuard {
        SpaceGuard {
            dir,
            short: false,
            checked: None,
        }
    }

    /// Whether the member must not write now. A file system that cannot be measured
    /// counts as having room: SQLite will tell if it has not.
    pub fn short(&mut self, now: Instant) -> bool {
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < CHECK_EVERY)
        {
            return self.short;
        }
        self.checked = Some(now);
        let Ok(free) = available(&self.dir) else {
            return self.short;
        };
        if !self.short && free < RESERVE_BYTES {
            self.short = true;
            tracing::error!(
                dir = %self.dir.display(),
                free,
                reserve = RESERVE_BYTES,
                "the data directory's disk is nearly full: refusing writes (database space \
                 exceeded) and pausing Raft persistence until space returns"
            );
        } else if self.short && free >= RESUME_BYTES {
            self.short = false;
            tracing::info!(dir = %self.dir.display(), free, "disk space returned: writing again");
        }
        self.short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_directory_has_some_space_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available(dir.path()).unwrap() > 0);
        let err = available(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn sqlite_full_is_a_full_disk_and_other_failures_are_not() {
        use crate::storage::StorageError;
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let full = StorageError::from(failure(rusqlite::ffi::SQLITE_FULL));
        assert!(matches!(full, StorageError::DiskFull(_)), "{full:?}");
        assert!(full.to_string().starts_with("the disk is full: "), "{full}");
        let corrupt = StorageError::from(failure(rusqlite::ffi::SQLITE_CORRUPT));
        assert!(matches!(corrupt, StorageError::Sqlite(_)), "{corrupt:?}");
    }

    #[test]
    fn an_unmeasurable_directory_counts_as_having_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = SpaceGuard::new(dir.path().join("missing"));
        assert!(!guard.short(Instant::now()));
    }
}
