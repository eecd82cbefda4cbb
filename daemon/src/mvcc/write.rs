//! Puts and deletes: the changes that create revisions.

use rusqlite::{Connection, OptionalExtension, params, params_from_iter, types::Value};

use super::{KeyRange, Revisions};
use crate::error::RequestError;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// The changes of one client request (a put, a delete or a whole txn). They all share
/// one main revision — `current + 1` — which exists only if something changed.
pub struct WriteTxn<'c> {
    conn: &'c Connection,
    base: Revisions,
    /// Changes made so far; the next change's sub-revision.
    changes: i64,
    /// The changes as watch events, when someone watches (see [`WriteTxn::collecting`]).
    events: Vec<Event>,
    collect: bool,
}

impl<'c> WriteTxn<'c> {
    pub fn new(conn: &'c Connection, base: Revisions) -> Self {
        WriteTxn {
            conn,
            base,
            changes: 0,
            events: Vec::new(),
            collect: true,
        }
    }

    /// Whether to record watch events. Recording copies every key and value, so the
    /// state machine turns it off while nobody watches.
    pub fn collecting(mut self, collect: bool) -> Self {
        self.collect = collect;
        self
    }

    /// The watch events of the changes so far, in sub-revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The revisions as a read inside this request sees them: its own changes included.
    pub fn view(&self) -> Revisions {
        Revisions {
            current: self.revision(),
            compacted: self.base.compacted,
        }
    }

    /// The store's revision once this request is done.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.base.current + 1
        } else {
            self.base.current
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.revision(),
            ..Default::default()
        })
    }

    fn live(&self, key: &[u8]) -> Result<Option<KeyValue>, RequestError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT create_rev, mod_rev, version, value, lease FROM kv_live WHERE key = ?1",
        )?;
        Ok(stmt
            .query_row(params![key], |r| {
                Ok(KeyValue {
                    key: key.to_vec(),
                    create_revision: r.get(0)?,
                    mod_revision: r.get(1)?,
                    version: r.get(2)?,
                    value: r.get(3)?,
                    lease: r.get(4)?,
                })
            })
            .optional()?)
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, RequestError> {
        let prev = self.live(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(RequestError::KeyNotFound);
        }
        let value: &[u8] = match (&prev, req.ignore_value) {
            (Some(p), true) => &p.value,
            _ => &req.value,
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        if lease != 0 && !crate::lease::exists(self.conn, lease)? {
            return Err(RequestError::LeaseNotFound);
        }
        let rev = self.base.current + 1;
        let sub = self.changes;
        let (create_rev, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO kv_live (key, create_rev, mod_rev, version, value, lease)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET create_rev = excluded.create_rev,
                   mod_rev = excluded.mod_rev, version = excluded.version,
                   value = excluded.value, lease = excluded.lease",
            )?
            .execute(params![req.key, create_rev, rev, version, value, lease])?;
        self.conn
            .prepare_cached(
                "INSERT INTO kv_history
                   (key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
            )?
            .execute(params![
                req.key, rev, sub, create_rev, version, value, lease
            ])?;
        self.changes += 1;
        if self.collect {
            self.events.push(Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: req.key.clone(),
                    create_revision: create_rev,
                    mod_revision: rev,
                    version,
                    value: value.to_vec(),
                    lease,
                }),
                prev_kv: None,
            });
        }
        Ok(PutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, RequestError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let deleted = self.delete_keys(&range, req.prev_kv)?;
        Ok(DeleteRangeResponse {
            header: self.header(),
            deleted: deleted.0,
            prev_kvs: deleted.1,
        })
    }

    /// Deletes every live key in `range`, writing a tombstone for each. Returns the
    /// number deleted and, if asked, their last versions.
    pub fn delete_keys(
        &mut self,
        range: &KeyRange,
        want_prev: bool,
    ) -> Result<(i64, Vec<KeyValue>), RequestError> {
        let (cond, keys) = range.sql();
        let params: Vec<Value> = keys.iter().map(|k| Value::Blob(k.to_vec())).collect();
        let mut victims = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT key, create_rev, mod_rev, version, value, lease FROM kv_live
                 WHERE {cond} ORDER BY key"
            ))?;
            let mut rows = stmt.query(params_from_iter(params.iter()))?;
            while let Some(r) = rows.next()? {
                victims.push(KeyValue {
                    key: r.get(0)?,
                    create_revision: r.get(1)?,
                    mod_revision: r.get(2)?,
                    version: r.get(3)?,
                    value: if want_prev { r.get(4)? } else { Vec::new() },
                    lease: r.get(5)?,
                });
            }
        }
        let rev = self.base.current + 1;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM kv_live WHERE key = ?1")?;
        let mut tombstone = self.conn.prepare_cached(
            "INSERT INTO kv_history
               (key, mod_rev, sub_rev, create_rev, version, value, lease, tombstone)
             VALUES (?1, ?2, ?3, 0, 0, x'', 0, 1)",
        )?;
        for kv in &victims {
            delete.execute(params![kv.key])?;
            tombstone.execute(params![kv.key, rev, self.changes])?;
            self.changes += 1;
            if self.collect {
                self.events.push(Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: kv.key.clone(),
                        mod_revision: rev,
                        ..Default::default()
                    }),
                    prev_kv: None,
                });
            }
        }
        let n = victims.len() as i64;
        Ok((n, if want_prev { victims } else { Vec::new() }))
    }
}
