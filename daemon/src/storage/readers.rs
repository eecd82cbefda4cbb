//! A pool of read-only connections for client reads.
//!
//! SQLite connections are not `Sync`; rather than serialise every read behind one
//! connection, readers check a connection out for the duration of one read transaction.
//! The pool is bounded by the number of connections ever opened at once, which in turn
//! is bounded by the blocking threads doing reads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{Meta, SharedKeyIndex, StateTxn, StorageError};

/// Most idle connections kept for reuse; more may be open during bursts.
const MAX_IDLE: usize = 16;

#[derive(Clone)]
pub struct ReaderPool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    keys: SharedKeyIndex,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub fn new(path: PathBuf, keys: SharedKeyIndex) -> Self {
        ReaderPool {
            inner: Arc::new(Inner {
                path,
                keys,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The state database the pool reads.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    /// Checks out a connection (opening one if none is idle).
    pub fn get(&self) -> Result<ReadGuard, StorageError> {
        let idle = self.inner.idle.lock().expect("reader pool poisoned").pop();
        let conn = match idle {
            Some(c) => c,
            None => super::open_reader(&self.inner.path)?,
        };
        Ok(ReadGuard {
            pool: self.inner.clone(),
            conn: Some(conn),
        })
    }
}

/// A checked-out connection; goes back to the pool when dropped.
pub struct ReadGuard {
    pool: Arc<Inner>,
    conn: Option<Connection>,
}

impl ReadGuard {
    /// Runs `f` inside one read transaction, so that everything it reads comes from the
    /// same committed state, with the key index as of that state.
    pub fn read<T>(
        &mut self,
        f: impl FnOnce(&StateTxn<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let conn = self.conn.as_mut().expect("connection present until drop");
        let tx = conn.transaction()?;
        // The first read takes the transaction's snapshot; its revision bounds what
        // this read may see in the index.
        let (pin, revision) = self
            .pool
            .keys
            .pin(|| Ok(Meta::Revision.get_i64(&tx)?.unwrap_or(1)))?;
        let out = f(&StateTxn::reader(&tx, &pin, revision))?;
        drop(pin);
        tx.finish()?;
        Ok(out)
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.pool.idle.lock().expect("reader pool poisoned");
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}
