//! Moves committed pages from the WALs into the database files off the Raft thread, and
//! tells the Raft thread how far the state database is durable.
//!
//! SQLite's automatic checkpoint runs inside whichever commit crosses the threshold,
//! which would stall the Raft loop (and every request behind it) for the length of a
//! checkpoint and its fsync. The writer turns automatic checkpoints off and this thread
//! runs passive checkpoints instead, which never block the writer.
//!
//! The state database is committed without fsync (see `storage`); a completed
//! checkpoint is what makes its commits durable: SQLite fsyncs the WAL before copying
//! it and the database file after. The applied index read just before a complete
//! checkpoint is therefore on disk, and the Raft log may be compacted up to it
//! ([`Checkpointer::durable_applied`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::wal_file::wal_path;
use super::{Meta, StorageError};

/// How often the WALs are checkpointed. Also bounds how much state a machine crash can
/// take back to the log for replay (applying it again takes a fraction of that time).
///
/// Every checkpoint costs the disk a burst: the state WAL holds every commit since the
/// last one (a put rewrites the same few end pages, a whole frame each time), all of
/// it fsynced, then the database files. The Raft log's fsyncs queue behind those
/// bursts, and an acknowledged write waits. Three members, one client: put p99
/// 2.8–4.9 ms with a checkpoint every 500 ms, 2.0–3.3 ms every 2 s, 1.7–2.7 ms every
/// 5 s, 1.8–2.3 ms with none (p50 the same, 1.2–1.6 ms). But a loaded cluster (64
/// clients) did 9–18 % fewer puts/s at 5 s than at 500 ms, and as many or more at
/// 2 s (larger WALs cost every page lookup). Between checkpoints the WALs grow by this
/// interval's commits; [`WAL_RESTART_BYTES`] bounds them once one runs, and the log's
/// compaction wakes the thread early when it waits on a checkpoint.
const INTERVAL: Duration = Duration::from_secs(2);

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    durable_applied: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the state database at `state_db` and its log database.
    /// `applied` is the applied index already durable at start (the state as opened).
    pub fn start(state_db: PathBuf, applied: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let durable_applied = Arc::new(AtomicU64::new(applied));
        let (flag, durable) = (stop.clone(), durable_applied.clone());
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || run(state_db, flag, durable))
            .ok();
        Checkpointer {
            stop,
            durable_applied,
            thread,
        }
    }

    /// The highest applied index known to be on stable storage in the state database.
    pub fn durable_applied(&self) -> u64 {
        self.durable_applied.load(Ordering::Acquire)
    }

    /// Wakes the thread for a checkpoint now (when the log waits to be compacted).
    pub fn nudge(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

fn open(state_db: &std::path::Path) -> Result<rusqlite::Connection, StorageError> {
    let mut conn = rusqlite::Connection::open(state_db)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS log",
        rusqlite::params![super::log_db_path(state_db).to_string_lossy()],
    )?;
    // A restarting checkpoint holds the writer while it waits for running reads to
    // finish: it gives up after this long (and tries again next round) rather than
    // stall the Raft thread, and every write, for as long as a long read lasts.
    super::wait_for_locks(&mut conn, Duration::from_millis(100))?;
    Ok(conn)
}

/// Runs one checkpoint of `schema` (whose WAL is the file `wal`); true when every frame
/// of its WAL was copied (and so synced).
///
/// Passive checkpoints never block the writer, but under a steady write load they
/// never catch up with it either, and SQLite starts a WAL over only after a checkpoint
/// that did: the WAL would grow without bound (gigabytes after a million writes), and
/// a restart would read all of it. So once the WAL passes [`WAL_RESTART_BYTES`], a
/// restarting checkpoint follows the passive one: the writer then starts the WAL over
/// from its beginning. It holds the writer (the Raft thread, and so every request)
/// while it copies and syncs the frames written since and waits for running reads to
/// finish. Under load (three members, 64 clients) a trace found the Raft thread
/// waiting on it 10–44 ms at a time: this thread's fsyncs took 10–50 ms each on the
/// disk the members' log fsyncs kept busy, and syncing the WAL ahead of the restart
/// did not shorten it (tried). That stall comes once per 64 MiB of WAL, and is the
/// largest known one left in a loaded member's put latency. Not TRUNCATE: a WAL file
/// cut to zero grows again block by block, and every fsync of a growing file also
/// commits the file system's journal (measured: half the put throughput).
fn checkpoint(
    conn: &rusqlite::Connection,
    schema: &str,
    wal: &std::path::Path,
) -> Result<bool, StorageError> {
    let run = |mode: &str| -> Result<bool, StorageError> {
        let (busy, log, copied): (i64, i64, i64) = conn.query_row(
            &format!("PRAGMA {schema}.wal_checkpoint({mode})"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(busy == 0 && log == copied)
    };
    let complete = run("PASSIVE")?;
    let wal_bytes = std::fs::metadata(wal).map_or(0, |m| m.len());
    if wal_bytes > WAL_RESTART_BYTES {
        return run("RESTART");
    }
    Ok(complete)
}

/// WAL size past which a checkpoint restarts the WAL (see [`checkpoint`]).
const WAL_RESTART_BYTES: u64 = super::wal_file::WAL_BYTES;

fn run(state_db: PathBuf, stop: Arc<AtomicBool>, durable: Arc<AtomicU64>) {
    let conn = match open(&state_db) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the databases for checkpoints; the WALs will grow");
            return;
        }
    };
    let (state_wal, log_wal) = (
        wal_path(&state_db),
        wal_path(&super::log_db_path(&state_db)),
    );
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(INTERVAL);
        let round = || -> Result<(), StorageError> {
            checkpoint(&conn, "log", &log_wal)?;
            // Read before the checkpoint: every commit up to this applied index is in
            // the WAL frames the checkpoint then copies.
            let applied = Meta::AppliedIndex.get_u64(&conn)?.unwrap_or(0);
            if checkpoint(&conn, "main", &state_wal)? {
                durable.fetch_max(applied, Ordering::AcqRel);
            }
            Ok(())
        };
        if let Err(e) = round() {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
