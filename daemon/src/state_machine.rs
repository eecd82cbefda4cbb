//! Applying committed Raft entries to the state database.
//!
//! Everything a committed entry does happens in the caller's batch transaction, inside a
//! savepoint per request, so a request that fails (a txn reading a compacted revision,
//! a put naming a missing lease) leaves nothing behind while the entries around it
//! still apply. The applied index is written in the same transaction as the effects it
//! covers: after a crash, exactly the entries past it are applied again.

use prost::Message as _;
use raft::prelude::{ConfChangeType, ConfChangeV2, Entry, EntryType};
use rusqlite::Connection;

use crate::error::RequestError;
use crate::lease;
use crate::membership::{self, Member};
use crate::mvcc::{self, Revisions, WriteTxn};
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, LeaseRevokeRequest, TxnRequest, alarm_request, request_op,
};
use crate::proto::etcdserverpb::{CompactionResponse, ResponseHeader};
use crate::proto::mvccpb::Event;
use crate::proto::qetcdpb::{LeaseExpire, MemberRecord, RaftRequest, raft_request::Request};
use crate::storage::applied_requests::AppliedRequests;
use crate::storage::{Meta, SharedKeyIndex, StateTxn, StorageError};

/// The result of applying one client request.
#[derive(Debug)]
pub enum Applied {
    Put(crate::proto::etcdserverpb::PutResponse),
    DeleteRange(crate::proto::etcdserverpb::DeleteRangeResponse),
    Txn(crate::proto::etcdserverpb::TxnResponse),
    Compaction(CompactionResponse),
    Published,
    MemberUpdated,
    LeaseGrant(crate::proto::etcdserverpb::LeaseGrantResponse),
    LeaseRevoke(crate::proto::etcdserverpb::LeaseRevokeResponse),
    LeaseRenew(crate::proto::etcdserverpb::LeaseKeepAliveResponse),
    /// The alarms an alarm request raised or cleared (etcd's AlarmResponse.alarms).
    Alarm(Vec<AlarmMember>),
    /// An auth store change; an authentication carries its token.
    Auth {
        revision: i64,
        token: Option<String>,
    },
}

pub type ApplyResult = Result<Applied, RequestError>;

/// A request that was applied and whose proposer is this member.
pub struct Completion {
    pub id: u64,
    pub result: ApplyResult,
}

/// What the Raft node must act on after applying a conf change.
pub struct ConfChangeEntry {
    pub index: u64,
    pub change: ConfChangeV2,
}

/// Whether a request may add to the store: what etcd refuses while NOSPACE is raised.
pub fn may_grow_store(request: &Request) -> bool {
    match request {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(t) => txn_has_put(t),
        _ => false,
    }
}

fn txn_has_put(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_has_put(t),
            _ => false,
        })
}

/// etcd's name of an alarm type (`NOSPACE`, `CORRUPT`).
pub fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::None) => "NONE",
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        Err(_) => "UNKNOWN",
    }
}

pub struct StateMachine {
    member_id: u64,
    revisions: Revisions,
    applied_index: u64,
    /// The term of the entry at `applied_index` (a snapshot of the state names it).
    applied_term: u64,
    /// What the database holds of the two above, to skip rewriting unchanged values.
    persisted: (u64, Revisions),
    /// Watch events of the current batch (see `collect_events`).
    events: Vec<Event>,
    collect_events: bool,
    /// Lease deadlines, restarted by the lease entries applied here.
    lessor: std::sync::Arc<crate::lease::Lessor>,
    /// The Raft term of the entry being applied (lease expiry is bound to it).
    entry_term: u64,
    /// Peer URLs changed by an ordinary entry (see `take_membership_touched`).
    membership_touched: bool,
    /// The raised alarms (as in the database), which decide what requests are refused.
    alarms: Vec<AlarmMember>,
    /// The alarms changed since the last `take_alarms_changed`.
    alarms_changed: bool,
    /// Users and roles: changed by auth entries, consulted for every write.
    auth: std::sync::Arc<crate::auth::AuthStore>,
    /// The log index of the entry being applied (simple tokens are named after it).
    entry_index: u64,
    /// Which revisions each key has (shared with the readers).
    keys: SharedKeyIndex,
    /// Request IDs applied recently: a request proposed twice applies once.
    applied_requests: AppliedRequests,
}

/// Who proposed a request, as the log entry says.
struct Caller<'a> {
    username: &'a str,
    revision: u64,
}

impl StateMachine {
    pub fn load(conn: &Connection, member_id: u64) -> Result<Self, StorageError> {
        Self::with_lessor(
            conn,
            member_id,
            Default::default(),
            Default::default(),
            SharedKeyIndex::load(conn)?,
        )
    }

    /// Loads the state machine and fills `lessor` with the leases in the database and
    /// `auth` with its users and roles. `keys` must be the index of this database.
    pub fn with_lessor(
        conn: &Connection,
        member_id: u64,
        lessor: std::sync::Arc<crate::lease::Lessor>,
        auth: std::sync::Arc<crate::auth::AuthStore>,
        keys: SharedKeyIndex,
    ) -> Result<Self, StorageError> {
        lessor
            .restore(conn)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        auth.reload(conn)?;
        let revisions = Revisions::load(conn).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let applied_index = Meta::AppliedIndex.get_u64(conn)?.unwrap_or(0);
        let applied_term = Meta::AppliedTerm.get_u64(conn)?.unwrap_or(0);
        let alarms = crate::storage::alarms::list(conn)?;
        let applied_requests = AppliedRequests::load(conn)?;
        Ok(StateMachine {
            member_id,
            revisions,
            applied_index,
            applied_term,
            persisted: (applied_index, revisions),
            events: Vec::new(),
            collect_events: false,
            lessor,
            entry_term: 0,
            membership_touched: false,
            alarms,
            alarms_changed: true,
            auth,
            entry_index: 0,
            keys,
            applied_requests,
        })
    }

    /// The key index this state machine records into.
    pub fn keys(&self) -> &SharedKeyIndex {
        &self.keys
    }

    /// Called once the batch that applied entries is committed (see
    /// [`SharedKeyIndex::committed`]).
    pub fn committed(&self) {
        self.keys.committed();
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn revisions(&self) -> Revisions {
        self.revisions
    }

    /// Applies one committed entry. Client requests proposed here come back in
    /// `completions`; conf changes are returned for the Raft node to apply to Raft
    /// (membership rows are already updated here).
    pub fn apply(
        &mut self,
        conn: &Connection,
        entry: &Entry,
        completions: &mut Vec<Completion>,
    ) -> Result<Option<ConfChangeEntry>, StorageError> {
        if entry.index <= self.applied_index {
            return Ok(None);
        }
        let writer = self.keys.writer();
        let txn = StateTxn::writer(conn, &writer);
        let conn = &txn;
        self.applied_requests
            .enter_generation(conn, self.applied_index, entry.index)?;
        self.entry_term = entry.term;
        self.entry_index = entry.index;
        let conf_change = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => None, // a new leader's no-op
            EntryType::EntryNormal => {
                let req = RaftRequest::decode(entry.data.as_ref()).map_err(|e| {
                    StorageError::Corrupt(format!("log entry {}: {e}", entry.index))
                })?;
                if self
                    .applied_requests
                    .first_application(conn, req.origin, req.id, entry.index)?
                {
                    let caller = Caller {
                        username: &req.username,
                        revision: req.auth_revision,
                    };
                    let result = self.apply_request(conn, &caller, req.request)?;
                    if req.origin == self.member_id {
                        completions.push(Completion { id: req.id, result });
                    }
                }
                None
            }
            EntryType::EntryConfChange => {
                let cc: raft::prelude::ConfChange =
                    protobuf::Message::parse_from_bytes(entry.data.as_ref()).map_err(|e| {
                        StorageError::Corrupt(format!("conf change {}: {e}", entry.index))
                    })?;
                let change = raft_proto::ConfChangeI::into_v2(cc);
                self.apply_membership(conn, entry.index, &change)?
                    .then_some(ConfChangeEntry {
                        index: entry.index,
                        change,
                    })
            }
            EntryType::EntryConfChangeV2 => {
                let change: ConfChangeV2 = protobuf::Message::parse_from_bytes(entry.data.as_ref())
                    .map_err(|e| {
                        StorageError::Corrupt(format!("conf change {}: {e}", entry.index))
                    })?;
                self.apply_membership(conn, entry.index, &change)?
                    .then_some(ConfChangeEntry {
                        index: entry.index,
                        change,
                    })
            }
        };
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        Ok(conf_change)
    }

    /// Records how far this batch applied, and the revisions that resulted. Called once
    /// per batch, in the batch's transaction, after its last `apply`.
    pub fn persist_progress(&mut self, conn: &Connection) -> Result<(), StorageError> {
        if self.persisted != (self.applied_index, self.revisions) {
            Meta::AppliedIndex.set_u64(conn, self.applied_index)?;
            Meta::AppliedTerm.set_u64(conn, self.applied_term)?;
            self.revisions
                .store(conn)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            self.persisted = (self.applied_index, self.revisions);
        }
        Ok(())
    }

    /// Applies a committed membership change to the member table, or refuses it, as
    /// etcd does, when the applied state no longer allows it (see
    /// [`membership::RefusedChange`]); a refused change does not reach Raft either.
    /// Returns whether it took effect.
    fn apply_membership(
        &self,
        conn: &Connection,
        index: u64,
        cc: &ConfChangeV2,
    ) -> Result<bool, StorageError> {
        let record =
            if cc.context.is_empty() {
                None
            } else {
                Some(MemberRecord::decode(cc.context.as_ref()).map_err(|e| {
                    StorageError::Corrupt(format!("conf change member record: {e}"))
                })?)
            };
        for single in cc.get_changes() {
            let id = single.node_id;
            let verdict = match single.get_change_type() {
                ConfChangeType::RemoveNode => membership::check_remove(conn, id)?,
                kind => {
                    let urls = record
                        .as_ref()
                        .filter(|r| r.id == id)
                        .map(|r| r.peer_urls.as_slice());
                    membership::check_add(conn, id, kind == ConfChangeType::AddLearnerNode, urls)?
                }
            };
            if let Err(refused) = verdict {
                tracing::warn!(
                    index,
                    member_id = %format!("{id:x}"),
                    change = ?single.get_change_type(),
                    error = %refused,
                    "refused a committed membership change"
                );
                return Ok(false);
            }
        }
        for single in cc.get_changes() {
            match single.get_change_type() {
                ConfChangeType::RemoveNode => membership::remove(conn, single.node_id)?,
                // A voter added for a member already there is a learner's promotion:
                // it keeps what it published.
                ConfChangeType::AddNode if membership::exists(conn, single.node_id)? => {
                    membership::set_learner(conn, single.node_id, false)?
                }
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(r) = record.as_ref().filter(|r| r.id == single.node_id) {
                        membership::upsert(conn, &Member::from_record(r))?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Applies one request; the error of a failed one goes to the waiting client, while
    /// storage failures stop the member. A txn can fail after some of its writes, so it
    /// runs in a savepoint that is rolled back on failure; a put or delete fails, if at
    /// all, before writing anything.
    fn apply_request(
        &mut self,
        conn: &StateTxn<'_>,
        caller: &Caller<'_>,
        request: Option<Request>,
    ) -> Result<ApplyResult, StorageError> {
        let atomic = matches!(request, Some(Request::Txn(_)));
        if atomic {
            conn.prepare_cached("SAVEPOINT request")?.execute([])?;
        }
        let outcome = match self.check_permission(conn, caller, request.as_ref()) {
            Ok(()) => self.dispatch(conn, caller, request),
            Err(e) => Err(e),
        };
        if atomic {
            if outcome.is_err() {
                conn.prepare_cached("ROLLBACK TO request")?.execute([])?;
            }
            conn.prepare_cached("RELEASE request")?.execute([])?;
        }
        match outcome {
            Err(RequestError::Internal(detail)) => Err(StorageError::Corrupt(detail)),
            other => Ok(other),
        }
    }

    /// etcd's capped appliers: with CORRUPT raised every request that changes the
    /// store is refused; with NOSPACE those that could make it grow (puts, txns with a
    /// put in either branch, lease grants), while deletes and compaction still apply.
    fn refused_by_alarm(&self, request: &Request) -> Result<(), RequestError> {
        let raised = |t: AlarmType| self.alarms.iter().any(|a| a.alarm == t as i32);
        if raised(AlarmType::Corrupt) {
            match request {
                Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Txn(_)
                | Request::Compaction(_)
                | Request::LeaseGrant(_)
                | Request::LeaseRevoke(_) => return Err(RequestError::Corrupt),
                _ => {}
            }
        }
        if raised(AlarmType::Nospace) && may_grow_store(request) {
            return Err(RequestError::NoSpace);
        }
        Ok(())
    }

    /// The alarm set, if it changed since the last call (or was never asked for).
    pub fn take_alarms_changed(&mut self) -> Option<Vec<AlarmMember>> {
        std::mem::take(&mut self.alarms_changed).then(|| self.alarms.clone())
    }

    fn apply_alarm(
        &mut self,
        conn: &Connection,
        req: &AlarmRequest,
    ) -> Result<Vec<AlarmMember>, RequestError> {
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let changed = match alarm_request::AlarmAction::try_from(req.action) {
            Ok(alarm_request::AlarmAction::Get) => {
                return Ok(crate::storage::alarms::list(conn)?
                    .into_iter()
                    .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                    .collect());
            }
            // etcd ignores a request to raise "no alarm".
            Ok(alarm_request::AlarmAction::Activate) if req.alarm == AlarmType::None as i32 => {
                false
            }
            Ok(alarm_request::AlarmAction::Activate) => {
                let raised = crate::storage::alarms::activate(conn, &member)?;
                if raised {
                    tracing::warn!(
                        member = %format!("{:x}", member.member_id),
                        alarm = alarm_name(member.alarm),
                        "alarm raised"
                    );
                }
                raised
            }
            Ok(alarm_request::AlarmAction::Deactivate) => {
                let cleared = crate::storage::alarms::deactivate(conn, &member)?;
                if cleared {
                    tracing::info!(
                        member = %format!("{:x}", member.member_id),
                        alarm = alarm_name(member.alarm),
                        "alarm disarmed"
                    );
                }
                cleared
            }
            Err(_) => false,
        };
        if changed {
            self.alarms = crate::storage::alarms::list(conn)?;
            self.alarms_changed = true;
            Ok(vec![member])
        } else {
            Ok(Vec::new())
        }
    }

    /// etcd's apply-time permission checks (its `authApplierV3`): writes and what they
    /// read, in every operation of a txn (nested ones too), and a lease revoke needs
    /// write permission on every key attached to the lease. Auth changes are checked by
    /// the store itself; compaction, as in etcd 3.4 and 3.5, is not checked.
    fn check_permission(
        &self,
        conn: &StateTxn<'_>,
        caller: &Caller<'_>,
        request: Option<&Request>,
    ) -> Result<(), RequestError> {
        let auth = self.auth.state();
        if !auth.enabled {
            return Ok(());
        }
        let check = |key: &[u8], end: &[u8], access| {
            auth.check_op(caller.username, caller.revision, key, end, access)
        };
        let lease_keys = |lease: i64| -> Result<(), RequestError> {
            if lease == 0 {
                return Ok(());
            }
            crate::storage::keyspace::lease_keys(conn, lease)
                .iter()
                .try_for_each(|k| check(k, b"", crate::auth::Access::Write))
        };
        match request {
            Some(Request::Put(p)) => {
                crate::auth::permissions::check_put(p, &check).and_then(|()| lease_keys(p.lease))
            }
            Some(Request::DeleteRange(d)) => crate::auth::permissions::check_delete(d, &check),
            Some(Request::Txn(t)) => {
                crate::auth::permissions::check_txn(t, &check)?;
                crate::auth::permissions::txn_leases(t)
                    .into_iter()
                    .try_for_each(lease_keys)
            }
            Some(Request::LeaseRevoke(r)) => lease_keys(r.id),
            _ => Ok(()),
        }
    }

    fn dispatch(
        &mut self,
        conn: &StateTxn<'_>,
        caller: &Caller<'_>,
        request: Option<Request>,
    ) -> ApplyResult {
        let base = self.revisions;
        if let Some(r) = &request {
            self.refused_by_alarm(r)?;
        }
        let applied = match request {
            Some(Request::Put(p)) => {
                let mut w = self.write_txn(conn);
                let r = w.put(&p)?;
                self.finish_write(&mut w)?;
                Applied::Put(r)
            }
            Some(Request::DeleteRange(d)) => {
                let mut w = self.write_txn(conn);
                let r = w.delete_range(&d)?;
                self.finish_write(&mut w)?;
                Applied::DeleteRange(r)
            }
            Some(Request::Txn(t)) => {
                let mut w = self.write_txn(conn);
                let r = match mvcc::apply_txn(&mut w, &t) {
                    Ok(r) => r,
                    Err(e) => {
                        // apply_request rolls back the rows.
                        w.roll_back();
                        return Err(e);
                    }
                };
                self.finish_write(&mut w)?;
                Applied::Txn(r)
            }
            Some(Request::Compaction(c)) => {
                let revs = mvcc::compact(conn, base, c.revision)?;
                self.revisions = revs;
                Applied::Compaction(CompactionResponse {
                    header: Some(ResponseHeader {
                        revision: revs.current,
                        ..Default::default()
                    }),
                })
            }
            Some(Request::Publish(attrs)) => {
                membership::publish(conn, &attrs)?;
                Applied::Published
            }
            Some(Request::MemberUpdate(u)) => {
                membership::update_peer_urls(conn, u.id, &u.peer_urls)?;
                self.membership_touched = true;
                Applied::MemberUpdated
            }
            Some(Request::LeaseGrant(g)) => {
                Applied::LeaseGrant(lease::grant(conn, &self.lessor, &g, base.current)?)
            }
            Some(Request::LeaseExpire(e)) if e.term != self.entry_term => {
                return Err(RequestError::LeaderChanged);
            }
            Some(Request::LeaseRevoke(LeaseRevokeRequest { id }))
            | Some(Request::LeaseExpire(LeaseExpire { id, .. })) => {
                let mut w = self.write_txn(conn);
                let resp = lease::revoke(&mut w, &self.lessor, id)?;
                self.finish_write(&mut w)?;
                Applied::LeaseRevoke(resp)
            }
            Some(Request::LeaseRenew(r)) => {
                Applied::LeaseRenew(lease::renew(conn, &self.lessor, r.id, base.current)?)
            }
            Some(Request::Alarm(a)) => Applied::Alarm(self.apply_alarm(conn, &a)?),
            Some(Request::Auth(change)) => {
                let change = change
                    .change
                    .ok_or_else(|| RequestError::Internal("empty auth change".into()))?;
                let token = self
                    .auth
                    .apply(conn, caller.username, &change, self.entry_index)?;
                Applied::Auth {
                    revision: base.current,
                    token,
                }
            }
            None => return Err(RequestError::Internal("empty raft request".into())),
        };
        Ok(applied)
    }

    /// A write on top of the current revisions, recording watch events if asked to.
    fn write_txn<'c>(&self, conn: &'c StateTxn<'c>) -> WriteTxn<'c> {
        WriteTxn::new(conn, self.revisions).collecting(self.collect_events)
    }

    /// Makes a request's writes the new revision, and keeps its watch events.
    fn finish_write(&mut self, w: &mut WriteTxn<'_>) -> Result<(), RequestError> {
        self.revisions.current = w.revision();
        if self.collect_events {
            self.events.extend(w.take_events());
        }
        Ok(())
    }

    /// Whether entries applied since the last call changed members' peer URLs, which
    /// the peer transport must then learn (conf changes are reported on their own).
    pub fn take_membership_touched(&mut self) -> bool {
        std::mem::take(&mut self.membership_touched)
    }

    /// Whether the requests applied from now on record watch events. Set at the start
    /// of a batch, so that a batch's events are either all there or not collected.
    pub fn collect_events(&mut self, collect: bool) {
        self.collect_events = collect;
        self.events.clear();
    }

    /// The events of what was applied since [`Self::collect_events`]; `None` if they
    /// were not collected (watchers then read them from storage).
    pub fn take_events(&mut self) -> Option<Vec<Event>> {
        let events = std::mem::take(&mut self.events);
        self.collect_events.then_some(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;

    fn entry(index: u64, id: u64, key: &str) -> Entry {
        let req = RaftRequest {
            id,
            origin: 7,
            request: Some(Request::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        Entry {
            index,
            term: 1,
            data: req.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn request_entry(index: u64, username: &str, auth_revision: u64, request: Request) -> Entry {
        let req = RaftRequest {
            id: index,
            origin: 7,
            username: username.into(),
            auth_revision,
            request: Some(request),
        };
        Entry {
            index,
            term: 1,
            data: req.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn auth(change: crate::proto::qetcdpb::auth_change::Change) -> Request {
        Request::Auth(crate::proto::qetcdpb::AuthChange {
            change: Some(change),
        })
    }

    #[test]
    fn a_permission_revoked_between_propose_and_apply_is_honoured() {
        use crate::proto::authpb::Permission;
        use crate::proto::etcdserverpb::*;
        use crate::proto::qetcdpb::auth_change::Change;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let keys = SharedKeyIndex::load(&conn).unwrap();
        let store = std::sync::Arc::new(crate::auth::AuthStore::default());
        let mut sm =
            StateMachine::with_lessor(&conn, 7, Default::default(), store.clone(), keys).unwrap();
        let grant = AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(Permission {
                perm_type: 2,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }),
        };
        let setup = [
            Change::UserAdd(AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            Change::RoleAdd(AuthRoleAddRequest { name: "app".into() }),
            Change::RoleGrantPermission(grant),
            Change::UserAdd(AuthUserAddRequest {
                name: "alice".into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
            Change::UserGrantRole(AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "app".into(),
            }),
            Change::Enable(AuthEnableRequest {}),
        ];
        let mut done = Vec::new();
        let mut index = 0;
        for change in setup {
            index += 1;
            sm.apply(&conn, &request_entry(index, "", 0, auth(change)), &mut done)
                .unwrap();
        }
        assert!(done.iter().all(|c| c.result.is_ok()));
        let proposed_at = store.state().revision;
        let put = |key: &str| {
            Request::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        };
        let mut outcome = |sm: &mut StateMachine, user: &str, rev: u64, req: Request| {
            index += 1;
            let mut done = Vec::new();
            sm.apply(&conn, &request_entry(index, user, rev, req), &mut done)
                .unwrap();
            done.pop().unwrap().result
        };
        assert!(outcome(&mut sm, "alice", proposed_at, put("app/a")).is_ok());
        assert!(matches!(
            outcome(&mut sm, "alice", proposed_at, put("other")),
            Err(RequestError::PermissionDenied)
        ));
        assert!(matches!(
            outcome(&mut sm, "", 0, put("app/a")),
            Err(RequestError::UserEmpty)
        ));
        // A non-root user cannot change the store, whatever the API let through.
        assert!(matches!(
            outcome(
                &mut sm,
                "alice",
                proposed_at,
                auth(Change::RoleAdd(AuthRoleAddRequest { name: "x".into() }))
            ),
            Err(RequestError::PermissionDenied)
        ));
        let revoke = auth(Change::RoleRevokePermission(
            AuthRoleRevokePermissionRequest {
                role: "app".into(),
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            },
        ));
        assert!(outcome(&mut sm, "root", proposed_at, revoke).is_ok());
        // Proposed before the revoke, applied after it.
        assert!(matches!(
            outcome(&mut sm, "alice", proposed_at, put("app/b")),
            Err(RequestError::AuthOldRevision)
        ));
        let now = store.state().revision;
        assert!(matches!(
            outcome(&mut sm, "alice", now, put("app/b")),
            Err(RequestError::PermissionDenied)
        ));
        // What was applied is what a restart (or a snapshot) loads.
        let reloaded = crate::auth::AuthState::load(&conn).unwrap();
        assert_eq!(reloaded, *store.state());
    }

    #[test]
    fn a_request_proposed_twice_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let mut sm = StateMachine::load(&conn, 7).unwrap();
        let mut done = Vec::new();
        sm.apply(&conn, &entry(1, 100, "a"), &mut done).unwrap();
        sm.apply(&conn, &entry(2, 100, "a"), &mut done).unwrap();
        sm.apply(&conn, &entry(3, 101, "b"), &mut done).unwrap();
        assert_eq!(sm.revisions().current, 3, "two puts, not three");
        assert_eq!(done.iter().map(|c| c.id).collect::<Vec<_>>(), [100, 101]);
        assert_eq!(sm.applied_index(), 3);
        // A restart remembers the IDs: a copy proposed before it applies no more.
        sm.persist_progress(&conn).unwrap();
        let mut sm = StateMachine::load(&conn, 7).unwrap();
        sm.apply(&conn, &entry(4, 101, "b"), &mut done).unwrap();
        assert_eq!(sm.revisions().current, 3, "the copy of 101 after a restart");
    }

    fn conf_entry(index: u64, kind: ConfChangeType, id: u64, url: Option<&str>) -> Entry {
        let mut cc = ConfChangeV2::default();
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        cc.mut_changes().push(single);
        if let Some(url) = url {
            let record = MemberRecord {
                id,
                peer_urls: vec![url.to_string()],
                is_learner: kind == ConfChangeType::AddLearnerNode,
                ..Default::default()
            };
            cc.context = record.encode_to_vec().into();
        }
        let mut e = Entry {
            index,
            term: 1,
            data: protobuf::Message::write_to_bytes(&cc).unwrap().into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e
    }

    #[test]
    fn membership_changes_are_checked_again_when_applied() {
        use ConfChangeType::*;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let mut sm = StateMachine::load(&conn, 7).unwrap();
        let mut done = Vec::new();
        let mut apply = |index, kind, id, url| {
            sm.apply(&conn, &conf_entry(index, kind, id, url), &mut done)
                .unwrap()
                .is_some()
        };
        assert!(apply(1, AddNode, 7, Some("https://a:2380")));
        assert!(apply(2, AddLearnerNode, 8, Some("https://b:2380")));
        // Another member with a URL already taken (two adds racing on two members).
        assert!(!apply(3, AddLearnerNode, 9, Some("https://b:2380")));
        // A voter again, a learner added twice, a promotion of nobody.
        assert!(!apply(4, AddNode, 7, Some("https://a:2380")));
        assert!(!apply(5, AddLearnerNode, 8, Some("https://b:2380")));
        assert!(!apply(6, AddNode, 10, None));
        // Promotion of the learner, then its removal: it never comes back, not even
        // as a learner or at another URL, and cannot be removed twice.
        assert!(apply(7, AddNode, 8, None));
        assert!(apply(8, RemoveNode, 8, None));
        assert!(!apply(9, AddLearnerNode, 8, Some("https://c:2380")));
        assert!(!apply(10, RemoveNode, 8, None));
        // Its URL is free again for a new member.
        assert!(apply(11, AddLearnerNode, 11, Some("https://b:2380")));
        let ids: Vec<u64> = membership::list(&conn)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [7, 11]);
        assert!(membership::is_removed(&conn, 8).unwrap());
        assert_eq!(
            sm.applied_index(),
            11,
            "refused changes are applied entries too"
        );
    }

    #[test]
    fn request_ids_are_remembered_for_one_to_two_generations() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::storage::open_writer(&dir.path().join("s.db")).unwrap();
        let mut sm = StateMachine::load(&conn, 7).unwrap();
        let mut done = Vec::new();
        let g = crate::storage::applied_requests::REQUEST_ID_GENERATION;
        sm.apply(&conn, &entry(g - 1, 200, "a"), &mut done).unwrap();
        // Next generation: still remembered, in the other table.
        sm.apply(&conn, &entry(g + 5, 200, "a"), &mut done).unwrap();
        sm.apply(&conn, &entry(g + 6, 300, "b"), &mut done).unwrap();
        assert_eq!(done.iter().map(|c| c.id).collect::<Vec<_>>(), [200, 300]);
        // Two generations on, the first is forgotten; the second is not.
        sm.apply(&conn, &entry(2 * g + 1, 200, "a"), &mut done)
            .unwrap();
        sm.apply(&conn, &entry(2 * g + 2, 300, "b"), &mut done)
            .unwrap();
        assert_eq!(
            done.iter().map(|c| c.id).collect::<Vec<_>>(),
            [200, 300, 200]
        );
    }
}
