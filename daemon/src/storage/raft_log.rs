//! The Raft log, hard state and conf state behind raft-rs's [`Storage`] trait.
//!
//! Raft reads through the trait (`&self`, from the Raft thread only); writes go through
//! a [`LogBatch`], one per `Ready`, which is also the transaction the state machine
//! applies committed entries in. The bounds of the log are cached in memory so that the
//! hot queries (`first_index`, `last_index`, the term at the edges) cost no SQL, and
//! so are the most recent entries: Raft reads an entry back soon after appending it
//! (to apply it once committed, to send it to a follower that was a little behind),
//! and serving those from memory spares a query and a protobuf decode per entry.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use rusqlite::{Connection, Transaction, params};

use super::{Meta, StorageError};

/// How durable the commit of a [`LogBatch`] must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync of the log database before `commit` returns. Required whenever the batch
    /// holds log entries or hard state: Raft may only act on them (vote, acknowledge)
    /// once they are stable. The state database is not fsynced (see the module docs of
    /// `storage`): what it loses in a machine crash is applied again from the log.
    Sync,
    /// As `Sync`, on a connection to the log database alone, for a `Ready`'s new
    /// entries and hard state: their fsynced commit then neither takes the state's
    /// locks nor waits while the checkpointer restarts the state's WAL. Must not touch
    /// the state (its tables are not there).
    LogSync,
    /// fsync of both databases: for the rare batches whose state cannot be rebuilt from
    /// the log — the member's IDs at bootstrap, a snapshot installed from the leader.
    SyncAll,
    /// No fsync of its own. Used for batches that only apply already-durable entries:
    /// if the machine crashes before a later `Sync` commit flushes it, the entries are
    /// simply applied again from the log on restart. WAL commits reach disk in order,
    /// so a lost batch never leaves a later one behind.
    Deferred,
}

impl Durability {
    /// The state database's `synchronous` setting for this durability.
    fn state_sync(self) -> &'static str {
        match self {
            Durability::SyncAll => "FULL",
            Durability::Sync | Durability::LogSync | Durability::Deferred => "NORMAL",
        }
    }

    /// The log database's `synchronous` setting for this durability.
    fn log_sync(self) -> &'static str {
        match self {
            Durability::Sync | Durability::LogSync | Durability::SyncAll => "FULL",
            Durability::Deferred => "NORMAL",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    /// Index and term of the entry just before the first one kept in the table.
    truncated_index: u64,
    truncated_term: u64,
    /// Index and term of the last entry (equal to the truncated ones when empty).
    last_index: u64,
    last_term: u64,
}

/// Opens the log database on its own (see `RaftLog::log_only`); every commit on it is
/// fsynced, as batches holding entries must be.
fn open_log_only(state_db: &std::path::Path) -> Result<Connection, StorageError> {
    let mut conn = Connection::open(super::log_db_path(state_db))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The connection that restarts a WAL cuts it back to this (see open_writer).
    conn.pragma_update(None, "journal_size_limit", super::wal_file::WAL_BYTES)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    super::wait_for_locks(&mut conn, std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// SQLite-backed Raft storage.
pub struct RaftLog {
    conn: Connection,
    bounds: Cell<Bounds>,
    raft_state: RefCell<RaftState>,
    /// The durability the connection's `synchronous` pragmas are set for.
    synchronous: Cell<Durability>,
    /// Makes snapshot files off this thread; None for an in-memory database.
    snapshots: Option<super::snapshot::SnapshotMaker>,
    /// The last appended entries, contiguous and ending at the log's last index (or
    /// empty). At most [`RECENT_ENTRIES`], so its memory is bounded.
    recent: RefCell<RecentEntries>,
    /// A second connection to the log database alone, for the batches that persist
    /// entries (`Durability::LogSync`), and for every batch while another connection
    /// holds the state database's write lock (a defragmentation). The writing
    /// connection's `BEGIN IMMEDIATE` locks both databases: the fsynced commit of new
    /// entries would take the state's locks for nothing, and wait while the
    /// checkpointer restarts the state's WAL. None for an in-memory database.
    log_only: Option<Connection>,
    /// Whether batches go to `log_only` (see [`RaftLog::set_state_locked`]).
    state_locked: Cell<bool>,
}

/// How many of the latest entries [`RaftLog`] keeps in memory, and at most how many
/// bytes of them. A few thousand covers what is in flight between append and apply
/// under heavy load; the byte bound keeps a burst of large writes from holding
/// gigabytes.
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 64 << 20;

/// The tail of the log kept in memory, with its size.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl RecentEntries {
    fn size(e: &Entry) -> usize {
        e.data.len() + e.context.len() + 32
    }

    fn push_back(&mut self, e: Entry) {
        self.bytes += Self::size(&e);
        self.entries.push_back(e);
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= Self::size(&e);
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= Self::size(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl std::ops::Deref for RecentEntries {
    type Target = VecDeque<Entry>;
    fn deref(&self) -> &VecDeque<Entry> {
        &self.entries
    }
}

impl RaftLog {
    /// Loads the log state from the writing connection of a state database.
    pub fn open(conn: Connection) -> Result<Self, StorageError> {
        let hard_state = match Meta::HardState.get_blob(&conn)? {
            Some(b) => HardState::parse_from_bytes(&b)
                .map_err(|e| StorageError::Corrupt(format!("hard state: {e}")))?,
            None => HardState::default(),
        };
        let conf_state = match Meta::ConfState.get_blob(&conn)? {
            Some(b) => ConfState::parse_from_bytes(&b)
                .map_err(|e| StorageError::Corrupt(format!("conf state: {e}")))?,
            None => ConfState::default(),
        };
        let truncated_index = Meta::TruncatedIndex.get_u64(&conn)?.unwrap_or(0);
        let truncated_term = Meta::TruncatedTerm.get_u64(&conn)?.unwrap_or(0);
        let last: Option<(i64, i64)> = conn
            .query_row(
                "SELECT idx, term FROM raft_log ORDER BY idx DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let (last_index, last_term) = match last {
            Some((i, t)) => (i as u64, t as u64),
            None => (truncated_index, truncated_term),
        };
        // One Ready commits the state database before the log database, so a crash
        // between the two can leave the state applied past the commit index the log
        // recorded. Those entries were committed (only committed entries are applied)
        // and are in the log (only persisted entries are), so the commit index may
        // safely catch up; raft-rs refuses an applied index beyond it.
        let applied = Meta::AppliedIndex.get_u64(&conn)?.unwrap_or(0);
        let mut hard_state = hard_state;
        if applied > hard_state.commit && applied <= last_index {
            hard_state.commit = applied;
        }
        let snapshots = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(|p| super::snapshot::SnapshotMaker::new(p.into()));
        let log_only = match conn.path().filter(|p| !p.is_empty()) {
            Some(p) => Some(open_log_only(std::path::Path::new(p))?),
            None => None,
        };
        Ok(RaftLog {
            conn,
            bounds: Cell::new(Bounds {
                truncated_index,
                truncated_term,
                last_index,
                last_term,
            }),
            raft_state: RefCell::new(RaftState {
                hard_state,
                conf_state,
            }),
            synchronous: Cell::new(Durability::Sync),
            snapshots,
            recent: RefCell::default(),
            log_only,
            state_locked: Cell::new(false),
        })
    }

    /// While `locked`, batches run on a connection to the log database alone, so that
    /// Raft keeps persisting entries while another connection rewrites the state
    /// database. Such batches must not touch the state (apply nothing): its tables
    /// are not there. Without a log-only connection (in memory) this does nothing.
    pub fn set_state_locked(&self, locked: bool) {
        self.state_locked.set(locked && self.log_only.is_some());
    }

    /// Entries `low..high` from memory, if all of them are there.
    fn recent_entries(&self, low: u64, high: u64, max_size: u64) -> Option<Vec<Entry>> {
        let recent = self.recent.borrow();
        let first = recent.front()?.index;
        let last = recent.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for e in recent.range((low - first) as usize..(high - first) as usize) {
            // Same size rule as the SQL path (raft::util::limit_size).
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// The writing connection, for reads outside a batch (start-up, status).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn hard_state(&self) -> HardState {
        self.raft_state.borrow().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.raft_state.borrow().conf_state.clone()
    }

    /// Starts a transaction of a `Ready`: its new entries, or what it applies.
    pub fn batch(&self, durability: Durability) -> Result<LogBatch<'_>, StorageError> {
        let log_only = match &self.log_only {
            Some(c) if self.state_locked.get() || durability == Durability::LogSync => Some(c),
            _ => None,
        };
        let was = self.synchronous.get();
        if was != durability && log_only.is_none() {
            // A Ready switches between Sync and Deferred twice: only the schema whose
            // setting changes is set, by a statement parsed once.
            for (schema, from, to) in [
                ("main", was.state_sync(), durability.state_sync()),
                ("log", was.log_sync(), durability.log_sync()),
            ] {
                if from != to {
                    self.conn
                        .prepare_cached(&format!("PRAGMA {schema}.synchronous = {to}"))?
                        .execute([])?;
                }
            }
            self.synchronous.set(durability);
        }
        // IMMEDIATE: take the write lock at the start, waiting (busy timeout) while the
        // checkpointer holds it for a restarting checkpoint. A deferred transaction
        // that has read first cannot wait for the lock when it comes to write, and
        // fails with "database is locked".
        let conn = log_only.unwrap_or(&self.conn);
        let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        Ok(LogBatch {
            log: self,
            tx,
            bounds: self.bounds.get(),
            hard_state: None,
            conf_state: None,
            appended: Vec::new(),
            reshaped: false,
        })
    }

    fn entry_term(&self, idx: u64) -> Result<u64, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT term FROM raft_log WHERE idx = ?1")?;
        let term: i64 = stmt.query_row(params![idx as i64], |r| r.get(0))?;
        Ok(term as u64)
    }
}

/// One transaction against the state database: log appends, hard/conf state, and
/// whatever the state machine writes through [`LogBatch::conn`]. The in-memory view of
/// the log changes only when [`LogBatch::commit`] succeeds.
pub struct LogBatch<'a> {
    log: &'a RaftLog,
    tx: Transaction<'a>,
    bounds: Bounds,
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    /// Entries appended in this batch, for the in-memory tail once committed.
    appended: Vec<Entry>,
    /// Whether the log was compacted or reset, which the tail must follow.
    reshaped: bool,
}

impl LogBatch<'_> {
    /// The transaction, for the state machine's writes.
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    /// Appends entries, first discarding any conflicting suffix (entries at or after the
    /// first new index), as Raft requires when a new leader overwrites an old tail.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.bounds.truncated_index {
            return Err(StorageError::Corrupt(format!(
                "append at index {} overwrites the compacted log (truncated at {})",
                first.index, self.bounds.truncated_index
            )));
        }
        if first.index > self.bounds.last_index + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at index {} leaves a gap after last index {}",
                first.index, self.bounds.last_index
            )));
        }
        if first.index <= self.bounds.last_index {
            self.tx
                .prepare_cached("DELETE FROM raft_log WHERE idx >= ?1")?
                .execute(params![first.index as i64])?;
        }
        let mut insert = self
            .tx
            .prepare_cached("INSERT INTO raft_log (idx, term, entry) VALUES (?1, ?2, ?3)")?;
        let mut buf = Vec::new();
        for e in entries {
            buf.clear();
            e.write_to_vec(&mut buf)
                .map_err(|err| StorageError::Corrupt(format!("encode entry: {err}")))?;
            insert.execute(params![e.index as i64, e.term as i64, &buf])?;
        }
        // A second append in one batch overwrites from its first index too.
        self.appended.retain(|e| e.index < first.index);
        self.appended.extend_from_slice(entries);
        let last = entries.last().expect("entries is not empty");
        self.bounds.last_index = last.index;
        self.bounds.last_term = last.term;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("encode hard state: {e}")))?;
        Meta::HardState.set_blob(&self.tx, &bytes)?;
        self.hard_state = Some(hs.clone());
        Ok(())
    }

    /// The first index still in the log, as this batch leaves it so far.
    pub fn first_index(&self) -> u64 {
        self.bounds.truncated_index + 1
    }

    pub fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        let bytes = cs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("encode conf state: {e}")))?;
        Meta::ConfState.set_blob(&self.tx, &bytes)?;
        self.conf_state = Some(cs.clone());
        Ok(())
    }

    /// Discards log entries before `compact_index`, keeping the term of the entry just
    /// before it so that Raft can still match its predecessor.
    pub fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        if compact_index <= self.bounds.truncated_index + 1 {
            return Ok(());
        }
        if compact_index > self.bounds.last_index + 1 {
            return Err(StorageError::Corrupt(format!(
                "compaction to {compact_index} beyond last index {}",
                self.bounds.last_index
            )));
        }
        let new_truncated = compact_index - 1;
        let term = if new_truncated == self.bounds.last_index {
            self.bounds.last_term
        } else {
            let mut stmt = self
                .tx
                .prepare_cached("SELECT term FROM raft_log WHERE idx = ?1")?;
            let t: i64 = stmt.query_row(params![new_truncated as i64], |r| r.get(0))?;
            t as u64
        };
        self.tx
            .prepare_cached("DELETE FROM raft_log WHERE idx < ?1")?
            .execute(params![compact_index as i64])?;
        Meta::TruncatedIndex.set_u64(&self.tx, new_truncated)?;
        Meta::TruncatedTerm.set_u64(&self.tx, term)?;
        self.reshaped = true;
        self.bounds.truncated_index = new_truncated;
        self.bounds.truncated_term = term;
        Ok(())
    }

    /// Replaces the whole log by the point a snapshot stands for: everything up to and
    /// including `index` is now represented by the state, not by entries.
    pub fn reset_to_snapshot(
        &mut self,
        index: u64,
        term: u64,
        cs: &ConfState,
    ) -> Result<(), StorageError> {
        self.tx.execute("DELETE FROM raft_log", [])?;
        self.appended.clear();
        self.reshaped = true;
        Meta::TruncatedIndex.set_u64(&self.tx, index)?;
        Meta::TruncatedTerm.set_u64(&self.tx, term)?;
        self.bounds = Bounds {
            truncated_index: index,
            truncated_term: term,
            last_index: index,
            last_term: term,
        };
        let mut hs = self
            .hard_state
            .clone()
            .unwrap_or_else(|| self.log.hard_state());
        hs.term = hs.term.max(term);
        hs.commit = hs.commit.max(index);
        self.set_hard_state(&hs)?;
        self.set_conf_state(cs)
    }

    /// Commits the transaction and, only then, makes its changes visible to Raft.
    pub fn commit(self) -> Result<(), StorageError> {
        let LogBatch {
            log,
            tx,
            bounds,
            hard_state,
            conf_state,
            appended,
            reshaped,
        } = self;
        tx.commit()?;
        log.bounds.set(bounds);
        let mut recent = log.recent.borrow_mut();
        if let Some(first) = appended.first() {
            while recent.back().is_some_and(|e| e.index >= first.index) {
                recent.pop_back();
            }
            if recent.back().is_some_and(|e| e.index + 1 != first.index) {
                recent.clear();
            }
            for e in appended {
                recent.push_back(e);
            }
        }
        if reshaped {
            // Keep only what the table still holds.
            while recent
                .front()
                .is_some_and(|e| e.index <= bounds.truncated_index)
            {
                recent.pop_front();
            }
            if recent.back().is_some_and(|e| e.index != bounds.last_index) {
                recent.clear();
            }
        }
        while recent.len() > RECENT_ENTRIES || recent.bytes > RECENT_BYTES {
            recent.pop_front();
        }
        drop(recent);
        let mut rs = log.raft_state.borrow_mut();
        if let Some(hs) = hard_state {
            rs.hard_state = hs;
        }
        if let Some(cs) = conf_state {
            rs.conf_state = cs;
        }
        Ok(())
    }
}

fn storage_err(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.raft_state.borrow().clone())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let bounds = self.bounds.get();
        if low <= bounds.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > bounds.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if let Some(entries) = self.recent_entries(low, high, max_size) {
            return Ok(entries);
        }
        let read = || -> Result<Vec<Entry>, StorageError> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )?;
            let mut rows = stmt.query(params![low as i64, high as i64])?;
            let mut out = Vec::with_capacity((high - low).min(1024) as usize);
            let mut size = 0u64;
            while let Some(row) = rows.next()? {
                let bytes = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                // Same rule as raft::util::limit_size: always at least one entry, then
                // only while the total stays within the limit.
                size += bytes.len() as u64;
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(
                    Entry::parse_from_bytes(bytes)
                        .map_err(|e| StorageError::Corrupt(format!("log entry: {e}")))?,
                );
            }
            if out.is_empty() && low < high {
                return Err(StorageError::Corrupt(format!(
                    "log entries {low}..{high} missing"
                )));
            }
            Ok(out)
        };
        read().map_err(storage_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let bounds = self.bounds.get();
        if idx == bounds.truncated_index {
            return Ok(bounds.truncated_term);
        }
        if idx < bounds.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > bounds.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if idx == bounds.last_index {
            return Ok(bounds.last_term);
        }
        {
            let recent = self.recent.borrow();
            if let Some(first) = recent.front().map(|e| e.index)
                && idx >= first
                && let Some(e) = recent.get((idx - first) as usize)
            {
                return Ok(e.term);
            }
        }
        self.entry_term(idx).map_err(storage_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.get().truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.get().last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot *is* the state database as applied so far: a copy of it in a
        // file, whose path travels in the snapshot's data for the transport to stream.
        // It must reach at least the start of the log, or the receiver could not go on
        // from it with entries.
        let min_index = request_index.max(self.bounds.get().truncated_index);
        let Some(file) = self.snapshots.as_ref().and_then(|s| s.get(min_index)) else {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let mut snap = Snapshot {
            data: file.path.to_string_lossy().into_owned().into_bytes().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = file.index;
        meta.term = file.term;
        meta.set_conf_state(file.conf_state);
        Ok(snap)
    }
}
