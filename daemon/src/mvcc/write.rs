//! Puts and deletes: the changes that create revisions.

use std::ops::ControlFlow;

use super::{KeyRange, Revisions};
use crate::error::RequestError;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader,
};
use crate::proto::mvccpb::{Event, KeyValue};
use crate::storage::StateTxn;
use crate::storage::key_index::Undo;
use crate::storage::keyspace::{self, At, RevisionRow, Scan};

/// The changes of one client request (a put, a delete or a whole txn). They all share
/// one main revision — `current + 1` — which exists only if something changed.
///
/// A request that fails after writing (a txn) is taken back with
/// [`WriteTxn::roll_back`], which undoes its changes to the key index while the caller
/// rolls back their rows.
pub struct WriteTxn<'c> {
    txn: &'c StateTxn<'c>,
    base: Revisions,
    /// How to take this request's changes back out of the key index.
    undo: Vec<Undo>,
    /// Changes made so far; the next change's sub-revision.
    changes: i64,
    /// The changes as watch events, when someone watches (see [`WriteTxn::collecting`]).
    events: Vec<Event>,
    collect: bool,
}

impl<'c> WriteTxn<'c> {
    pub fn new(txn: &'c StateTxn<'c>, base: Revisions) -> Self {
        WriteTxn {
            txn,
            base,
            undo: Vec::new(),
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

    pub fn txn(&self) -> &'c StateTxn<'c> {
        self.txn
    }

    /// Takes this request's changes back out of the key index; the caller rolls back
    /// their rows (the request's savepoint).
    pub fn roll_back(mut self) {
        if let Some(writer) = self.txn.writer_index() {
            let mut index = writer.write();
            for undo in self.undo.drain(..).rev() {
                index.undo(undo);
            }
        }
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

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, RequestError> {
        let prev = keyspace::live(self.txn, &req.key, req.prev_kv || req.ignore_value)?;
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
        if lease != 0 && !crate::lease::exists(self.txn, lease)? {
            return Err(RequestError::LeaseNotFound);
        }
        let main = self.base.current + 1;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (main, 1),
        };
        let row = RevisionRow {
            key: req.key.clone(),
            main,
            sub: self.changes,
            create_revision,
            version,
            value: value.to_vec(),
            lease,
            tombstone: false,
        };
        self.record(row)?;
        Ok(PutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// Stores one change and counts it; keeps its event if events are collected.
    fn record(&mut self, row: RevisionRow) -> Result<(), RequestError> {
        self.undo.push(keyspace::write(self.txn, &row)?);
        self.changes += 1;
        if self.collect {
            self.events.push(row.into_event());
        }
        Ok(())
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
        let mut victims = Vec::new();
        let scan = Scan {
            at: At::Current,
            descending: false,
            values: want_prev,
        };
        keyspace::scan(self.txn, range, scan, |kv| {
            victims.push(kv);
            ControlFlow::Continue(())
        })?;
        let main = self.base.current + 1;
        for kv in &victims {
            self.record(RevisionRow {
                key: kv.key.clone(),
                main,
                sub: self.changes,
                tombstone: true,
                ..Default::default()
            })?;
        }
        let n = victims.len() as i64;
        Ok((n, if want_prev { victims } else { Vec::new() }))
    }
}
