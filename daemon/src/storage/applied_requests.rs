//! Request IDs applied recently, so that a request proposed twice (a retry after its
//! first proposal may have been lost) takes effect once.
//!
//! An ID is `(origin, id)`: the member that proposed the request and its number there.
//! IDs are remembered in two generations, chosen by log index
//! ([`REQUEST_ID_GENERATION`] entries each): an ID is remembered for at least one
//! generation and at most two, and forgetting a generation is one `DELETE` of a whole
//! table. Every member (and one that restarts or installs a snapshot) forgets at the
//! same entry, since only the log index decides.
//!
//! Why the lookups are in memory and the tables are only appended to (measured): the
//! tables used to be keyed by `(origin, id)`. Each member's IDs rise, but the three
//! members' ranges sit side by side in one B-tree, so two of them grew in its middle,
//! where SQLite rebalances a leaf with its siblings: a Ready's state commit under 64
//! clients wrote 9.4 pages on average, 6 to 8 of them this table's. Now each generation
//! is a rowid table (rows appended at its end whatever their ID) and a hash set in
//! memory answers "seen before?". The set is built from the tables when the state is
//! loaded, so it cannot disagree with them; at most 2 × 100,000 IDs, ~6 MB.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};

use super::StorageError;

/// Log entries per generation of remembered request IDs. Retries happen within a
/// request timeout, which is far fewer entries than this at any realistic rate.
pub const REQUEST_ID_GENERATION: u64 = 100_000;

const TABLES: [&str; 2] = ["applied_requests_0", "applied_requests_1"];
const REMEMBER_IN: [&str; 2] = [
    "INSERT INTO main.applied_requests_0 (origin, id) VALUES (?1, ?2)",
    "INSERT INTO main.applied_requests_1 (origin, id) VALUES (?1, ?2)",
];
const FORGET: [&str; 2] = [
    "DELETE FROM main.applied_requests_0",
    "DELETE FROM main.applied_requests_1",
];

fn generation(index: u64) -> usize {
    ((index / REQUEST_ID_GENERATION) % 2) as usize
}

/// The IDs applied in the current and the previous generation, as the state database
/// holds them.
#[derive(Debug, Default)]
pub struct AppliedRequests {
    generations: [HashSet<(u64, u64)>; 2],
}

impl AppliedRequests {
    /// Reads both generations from the state database at `conn`'s read point.
    pub fn load(conn: &Connection) -> Result<Self, StorageError> {
        let mut loaded = AppliedRequests::default();
        for (table, ids) in TABLES.iter().zip(loaded.generations.iter_mut()) {
            let mut stmt = conn.prepare(&format!("SELECT origin, id FROM main.{table}"))?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (origin, id) = row?;
                ids.insert((origin as u64, id as u64));
            }
        }
        Ok(loaded)
    }

    /// Whether this is the first time the request `(origin, id)`, in the entry at
    /// `index`, is applied; records it if so (in `conn`'s transaction, which must commit
    /// or stop the member: the set has it already).
    pub fn first_application(
        &mut self,
        conn: &Connection,
        origin: u64,
        id: u64,
        index: u64,
    ) -> Result<bool, StorageError> {
        let current = generation(index);
        if self
            .generations
            .iter()
            .any(|ids| ids.contains(&(origin, id)))
        {
            return Ok(false);
        }
        self.generations[current].insert((origin, id));
        conn.prepare_cached(REMEMBER_IN[current])?
            .execute(rusqlite::params![origin as i64, id as i64])?;
        Ok(true)
    }

    /// Called for every entry applied (`previous` is the index applied before it):
    /// entering a new generation forgets the one before last.
    pub fn enter_generation(
        &mut self,
        conn: &Connection,
        previous: u64,
        index: u64,
    ) -> Result<(), StorageError> {
        if previous / REQUEST_ID_GENERATION != index / REQUEST_ID_GENERATION {
            let forgotten = generation(index);
            conn.prepare_cached(FORGET[forgotten])?.execute([])?;
            self.generations[forgotten].clear();
        }
        Ok(())
    }
}

/// Brings the tables of layout 5 and before (keyed by `(origin, id)`, WITHOUT ROWID) to
/// rowid tables, keeping their IDs. In one transaction; nothing to do if done already.
pub(super) fn migrate(conn: &Connection) -> Result<(), StorageError> {
    for table in TABLES {
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()?;
        if !sql.is_some_and(|s| s.to_ascii_uppercase().contains("WITHOUT ROWID")) {
            continue;
        }
        tracing::info!("{table}: rows appended instead of keyed (layout version 6)");
        conn.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE main.{table}_new (origin INTEGER NOT NULL, id INTEGER NOT NULL);
             INSERT INTO main.{table}_new (origin, id) SELECT origin, id FROM main.{table};
             DROP TABLE main.{table};
             ALTER TABLE main.{table}_new RENAME TO {table};
             COMMIT;"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids_in(conn: &Connection, table: &str) -> Vec<(i64, i64)> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT origin, id FROM {table} ORDER BY origin, id"
            ))
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn what_was_applied_is_known_again_after_loading_and_forgotten_two_generations_on() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let g = REQUEST_ID_GENERATION;
        let mut applied = AppliedRequests::load(&conn).unwrap();
        // Member IDs are random u64s; those past i64::MAX are stored negative.
        let big = u64::MAX - 3;
        assert!(applied.first_application(&conn, big, 1, 5).unwrap());
        assert!(applied.first_application(&conn, 7, 1, 6).unwrap());
        assert!(!applied.first_application(&conn, big, 1, 7).unwrap());

        let mut reloaded = AppliedRequests::load(&conn).unwrap();
        assert!(!reloaded.first_application(&conn, big, 1, 8).unwrap());
        reloaded.enter_generation(&conn, 8, g).unwrap();
        assert!(
            !reloaded.first_application(&conn, 7, 1, g).unwrap(),
            "remembered through the next generation"
        );
        assert!(reloaded.first_application(&conn, 7, 2, g + 1).unwrap());
        reloaded.enter_generation(&conn, g + 1, 2 * g).unwrap();
        assert_eq!(ids_in(&conn, TABLES[0]), [], "the first generation's table");
        let mut reloaded = AppliedRequests::load(&conn).unwrap();
        assert!(reloaded.first_application(&conn, big, 1, 2 * g).unwrap());
        assert!(!reloaded.first_application(&conn, 7, 2, 2 * g + 1).unwrap());
    }

    #[test]
    fn keyed_tables_of_an_older_layout_become_appended_ones_with_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        conn.execute_batch(
            "DROP TABLE applied_requests_1;
             CREATE TABLE applied_requests_1 (origin INTEGER NOT NULL, id INTEGER NOT NULL,
                 PRIMARY KEY (origin, id)) WITHOUT ROWID;
             INSERT INTO applied_requests_1 VALUES (3, 30), (-2, 20);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'applied_requests_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.to_ascii_uppercase().contains("WITHOUT ROWID"), "{sql}");
        assert_eq!(ids_in(&conn, TABLES[1]), [(-2, 20), (3, 30)]);
        let mut applied = AppliedRequests::load(&conn).unwrap();
        assert!(
            !applied
                .first_application(&conn, (-2i64) as u64, 20, 1)
                .unwrap()
        );
    }
}
