//! Moves committed pages from the WAL into the database file off the Raft thread.
//!
//! SQLite's automatic checkpoint runs inside whichever commit crosses the threshold,
//! which would stall the Raft loop (and every request behind it) for the length of a
//! checkpoint and its fsync. The writer turns automatic checkpoints off and this thread
//! runs passive checkpoints instead, which never block the writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(500);

pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(db_path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || run(db_path, flag))
            .ok();
        Checkpointer { stop, thread }
    }
}

fn run(db_path: PathBuf, stop: Arc<AtomicBool>) {
    let conn = match rusqlite::Connection::open(&db_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open state database for checkpoints; the WAL will grow");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(1));
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(INTERVAL);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
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
