//! Reading past events from `kv_history`.

use rusqlite::{Connection, OptionalExtension, params_from_iter, types::Value};

use crate::error::RequestError;
use crate::mvcc::KeyRange;
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Events of revisions `from..=to` on keys in `range`, in revision order: whole
/// revisions, until about `byte_budget` bytes of keys and values are read. Returns the
/// events and the first revision not yet read (`to + 1` when done).
pub fn events(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
    byte_budget: usize,
) -> Result<(Vec<Event>, i64), RequestError> {
    if from > to {
        return Ok((Vec::new(), from));
    }
    let (cond, keys) = range.sql();
    let mut args = vec![Value::Integer(from), Value::Integer(to)];
    args.extend(keys.iter().map(|k| Value::Blob(k.to_vec())));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, mod_rev, create_rev, version, value, lease, tombstone FROM kv_history
         WHERE mod_rev >= ?1 AND mod_rev <= ?2 AND {cond}
         ORDER BY mod_rev, sub_rev"
    ))?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    let mut out: Vec<Event> = Vec::new();
    let mut bytes = 0;
    // Rows stream from SQLite in revision order; stop between two revisions.
    while let Some(r) = rows.next()? {
        let event = event_of_row(r)?;
        let revision = revision_of(&event);
        if bytes >= byte_budget && out.last().is_some_and(|l| revision_of(l) != revision) {
            return Ok((out, revision));
        }
        bytes += event
            .kv
            .as_ref()
            .map_or(0, |kv| kv.key.len() + kv.value.len());
        out.push(event);
    }
    Ok((out, to + 1))
}

fn event_of_row(r: &rusqlite::Row<'_>) -> Result<Event, RequestError> {
    let tombstone: bool = r.get(6)?;
    let kv = if tombstone {
        KeyValue {
            key: r.get(0)?,
            mod_revision: r.get(1)?,
            ..Default::default()
        }
    } else {
        KeyValue {
            key: r.get(0)?,
            mod_revision: r.get(1)?,
            create_revision: r.get(2)?,
            version: r.get(3)?,
            value: r.get(4)?,
            lease: r.get(5)?,
        }
    };
    Ok(Event {
        r#type: if tombstone {
            EventType::Delete as i32
        } else {
            EventType::Put as i32
        },
        kv: Some(kv),
        prev_kv: None,
    })
}

pub fn revision_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// The version of `key` an event at `revision` replaced, if the key existed then.
pub fn previous(
    conn: &Connection,
    key: &[u8],
    revision: i64,
) -> Result<Option<KeyValue>, RequestError> {
    let row = conn
        .prepare_cached(
            "SELECT mod_rev, create_rev, version, value, lease, tombstone FROM kv_history
             WHERE key = ?1 AND mod_rev < ?2 ORDER BY mod_rev DESC LIMIT 1",
        )?
        .query_row(rusqlite::params![key, revision], |r| {
            let tombstone: bool = r.get(5)?;
            Ok((!tombstone).then(|| -> rusqlite::Result<KeyValue> {
                Ok(KeyValue {
                    key: key.to_vec(),
                    mod_revision: r.get(0)?,
                    create_revision: r.get(1)?,
                    version: r.get(2)?,
                    value: r.get(3)?,
                    lease: r.get(4)?,
                })
            }))
        })
        .optional()?;
    match row {
        Some(Some(kv)) => Ok(Some(kv?)),
        _ => Ok(None),
    }
}
