//! Reading past events from `kv_history`.

use rusqlite::{Connection, OptionalExtension, params_from_iter, types::Value};

use crate::error::RequestError;
use crate::mvcc::KeyRange;
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Events of revisions `from..=to` on keys in `range`, in revision order, reading at
/// most about `limit` rows but never part of a revision. Returns the events and the
/// first revision not yet read (`to + 1` when done).
pub fn events(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<(Vec<Event>, i64), RequestError> {
    if from > to {
        return Ok((Vec::new(), from));
    }
    let (cond, keys) = range.sql();
    let mut args = vec![Value::Integer(from), Value::Integer(to)];
    args.extend(keys.iter().map(|k| Value::Blob(k.to_vec())));
    let mut rows = query(
        conn,
        &format!(
            "SELECT key, mod_rev, create_rev, version, value, lease, tombstone FROM kv_history
             WHERE mod_rev >= ?1 AND mod_rev <= ?2 AND {cond}
             ORDER BY mod_rev, sub_rev LIMIT {}",
            limit + 1
        ),
        &args,
    )?;
    if rows.len() <= limit {
        return Ok((rows, to + 1));
    }
    // Cut before the last revision read, which may be incomplete.
    let cut = revision_of(&rows[limit]);
    rows.retain(|e| revision_of(e) < cut);
    if !rows.is_empty() {
        return Ok((rows, cut));
    }
    // One revision larger than the limit: it goes whole.
    args[0] = Value::Integer(cut);
    args[1] = Value::Integer(cut);
    let rows = query(
        conn,
        &format!(
            "SELECT key, mod_rev, create_rev, version, value, lease, tombstone FROM kv_history
             WHERE mod_rev >= ?1 AND mod_rev <= ?2 AND {cond} ORDER BY sub_rev"
        ),
        &args,
    )?;
    Ok((rows, cut + 1))
}

fn query(conn: &Connection, sql: &str, args: &[Value]) -> Result<Vec<Event>, RequestError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
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
        out.push(Event {
            r#type: if tombstone {
                EventType::Delete as i32
            } else {
                EventType::Put as i32
            },
            kv: Some(kv),
            prev_kv: None,
        });
    }
    Ok(out)
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
