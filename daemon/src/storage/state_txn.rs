//! One transaction on the state database, with the key index that goes with it.
//!
//! The key space is split between SQLite (the rows of every stored revision) and memory
//! (which revisions each key has, [`super::key_index`]); code that reads or writes keys
//! needs both, and needs them to agree. A `StateTxn` is that pair: the connection
//! inside its transaction (it dereferences to it, for everything else the state
//! database holds) and the index as this transaction may see it — all of it for the
//! writer, up to its snapshot's revision for a reader.

use std::ops::Deref;
use std::sync::RwLockReadGuard;

use rusqlite::Connection;

use super::key_index::{KeyIndex, ReadPin, WriterIndex};

pub struct StateTxn<'a> {
    conn: &'a Connection,
    view: View<'a>,
}

enum View<'a> {
    Writer(&'a WriterIndex),
    Reader { pin: &'a ReadPin, revision: i64 },
}

impl<'a> StateTxn<'a> {
    /// The Raft thread's batch transaction: sees every revision it recorded.
    pub fn writer(conn: &'a Connection, index: &'a WriterIndex) -> Self {
        StateTxn {
            conn,
            view: View::Writer(index),
        }
    }

    /// A read transaction whose snapshot's current revision is `revision`.
    pub(super) fn reader(conn: &'a Connection, pin: &'a ReadPin, revision: i64) -> Self {
        StateTxn {
            conn,
            view: View::Reader { pin, revision },
        }
    }

    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        match &self.view {
            View::Writer(w) => w.read(),
            View::Reader { pin, .. } => pin.index(),
        }
    }

    /// The writer's index; `None` in a read transaction.
    pub fn writer_index(&self) -> Option<&'a WriterIndex> {
        match self.view {
            View::Writer(w) => Some(w),
            View::Reader { .. } => None,
        }
    }

    /// The newest revision this transaction may see in the index: a reader's
    /// snapshot's, everything for the writer (which records only what it writes).
    pub fn visible_through(&self) -> i64 {
        match self.view {
            View::Writer(_) => i64::MAX,
            View::Reader { revision, .. } => revision,
        }
    }
}

impl Deref for StateTxn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}
