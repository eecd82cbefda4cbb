//! One watch: what it covers and how far it has been delivered.

use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb::WatchCreateRequest;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::mvccpb::{Event, event::EventType};

#[derive(Debug)]
pub struct Watcher {
    pub range: KeyRange,
    /// The first revision not yet delivered.
    pub next_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl Watcher {
    /// A watcher for `req`, delivering from `next_revision`.
    pub fn new(req: &WatchCreateRequest, next_revision: i64) -> Self {
        let filters = &req.filters;
        Watcher {
            range: KeyRange::new(&req.key, &req.range_end),
            next_revision,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
        }
    }

    /// Whether this watcher delivers `event` (revision aside).
    pub fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else {
            return false;
        };
        let filtered = if event.r#type == EventType::Delete as i32 {
            self.no_delete
        } else {
            self.no_put
        };
        !filtered && self.range.contains(&kv.key)
    }
}
