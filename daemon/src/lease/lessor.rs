//! Lease deadlines, in memory.
//!
//! Every member keeps one deadline per granted lease; the table of leases in SQLite is
//! the authority on which leases exist, and this mirrors it (restored at start and
//! after a snapshot, then kept in step by applying grants, revokes and keep-alives).
//! Deadlines are not replicated: they are restarted from "now" wherever a keep-alive is
//! applied, and only the leader acts on them, once promoted (see [`Lessor::new_leader`]).
//! Memory is one entry per granted lease, as the table.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::RequestError;

/// A lease the leader asked to revoke is asked again after this long if it still
/// exists (the revoke may have been lost with a leader); etcd's
/// `expiredLeaseRetryInterval`.
const RETRY_INTERVAL: Duration = Duration::from_secs(3);

pub struct Lessor {
    state: Mutex<State>,
    /// The shortest TTL a grant gets (see [`super::min_ttl`]).
    min_ttl: i64,
    ids: super::IdGenerator,
    /// How much a new leader adds on top of every lease's TTL (etcd: one election
    /// timeout), so that clients have time to find it and renew.
    promote_extension: Duration,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Tracked>,
    /// The same deadlines, ordered, so finding the expired ones does not scan them all.
    by_deadline: BTreeSet<(Instant, i64)>,
    /// The Raft term in which this member became the leader whose deadlines count;
    /// 0: never.
    primary_term: u64,
}

#[derive(Clone, Copy)]
struct Tracked {
    ttl: i64,
    deadline: Instant,
}

impl State {
    fn set(&mut self, id: i64, ttl: i64, deadline: Instant) {
        if let Some(old) = self.leases.insert(id, Tracked { ttl, deadline }) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.by_deadline.remove(&(old.deadline, id));
        }
    }
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl Default for Lessor {
    /// A lessor with etcd's default timing (100 ms heartbeat, 1 s election timeout).
    fn default() -> Self {
        Lessor::new(0, Duration::from_millis(100), 10)
    }
}

impl Lessor {
    /// The lessor of member `member_id`, whose Raft ticks every `heartbeat` and calls
    /// an election after `election_ticks` ticks.
    pub fn new(member_id: u64, heartbeat: Duration, election_ticks: usize) -> Self {
        Lessor {
            state: Mutex::new(State::default()),
            min_ttl: super::min_ttl(heartbeat, election_ticks),
            ids: super::IdGenerator::new(member_id),
            promote_extension: heartbeat * election_ticks as u32,
        }
    }

    /// The shortest TTL this member grants: shorter requests are raised to it.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// A new lease ID for a grant that did not name one.
    pub fn next_id(&self) -> i64 {
        self.ids.next()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock: every
        // method leaves both maps updated together before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what is tracked by the leases in the database, each with a full TTL
    /// from now (at start-up or after installing a snapshot). Keeps the primary term:
    /// a promotion holds until the term changes.
    pub fn restore(&self, conn: &Connection) -> Result<(), RequestError> {
        let rows = crate::storage::leases::all(conn)?;
        let now = Instant::now();
        let mut s = self.state();
        s.leases.clear();
        s.by_deadline.clear();
        for (id, ttl) in rows {
            s.set(id, ttl, now + seconds(ttl));
        }
        Ok(())
    }

    /// A lease was granted, or kept alive: its countdown restarts now.
    pub fn refresh(&self, id: i64, ttl: i64) {
        self.state().set(id, ttl, Instant::now() + seconds(ttl));
    }

    /// A lease was revoked.
    pub fn remove(&self, id: i64) {
        self.state().remove(id);
    }

    /// The leader of `term` has committed its first entry, and this member applied
    /// it. Every lease gets its full TTL plus an election timeout from now, as etcd's
    /// `Promote`: whatever the old leader knew of keep-alives, no client loses a lease
    /// it renewed in time. If this member is that leader (`leading`), everything of
    /// earlier terms is applied, and from now on its deadlines decide expiry.
    pub fn new_leader(&self, term: u64, leading: bool) {
        let now = Instant::now();
        let mut s = self.state();
        if leading {
            s.primary_term = term;
        }
        let leases: Vec<(i64, i64)> = s.leases.iter().map(|(id, t)| (*id, t.ttl)).collect();
        for (id, ttl) in leases {
            s.set(id, ttl, now + self.promote_extension + seconds(ttl));
        }
    }

    /// Whether this member was promoted in `term` (and so, if it still leads in
    /// `term`, decides expiry).
    pub fn is_primary(&self, term: u64) -> bool {
        term != 0 && self.state().primary_term == term
    }

    /// Whole seconds lease `id` has left, as etcd reports them (0 once past its
    /// deadline but not yet revoked); `None` if the lease is not tracked.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let s = self.state();
        let t = s.leases.get(&id)?;
        Some(
            t.deadline
                .saturating_duration_since(Instant::now())
                .as_secs() as i64,
        )
    }

    /// Up to `limit` leases past their deadline at `now`. Each is given a new deadline
    /// `RETRY_INTERVAL` later, so that it is handed out again only if the revoke the
    /// caller proposes does not take effect.
    pub fn take_expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut s = self.state();
        let expired: Vec<(i64, i64)> = s
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .map(|(_, id)| (*id, s.leases[id].ttl))
            .collect();
        for (id, ttl) in &expired {
            s.set(*id, *ttl, now + RETRY_INTERVAL);
        }
        expired.into_iter().map(|(id, _)| id).collect()
    }

    /// How many leases are tracked.
    pub fn len(&self) -> usize {
        self.state().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
