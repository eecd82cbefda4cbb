//! Watches: etcd's change notifications, on the committed key space.
//!
//! - [`feed`]: the Raft thread publishes each committed batch's events here.
//! - [`history`]: catch-up reads from the stored revisions, for watches that start in
//!   the past and for watchers that fell behind the feed.
//! - [`watcher`]: one watch's range, filters and position.
//!
//! The gRPC stream that multiplexes watchers lives in `api::watch`. The guarantees —
//! revision order, all events of a revision together, no gap and no duplicate between
//! history and live events — rest on one rule: a watcher's `next_revision` only moves
//! forward, past revisions it has delivered in full.

pub mod feed;
pub mod history;
pub mod watcher;

pub use feed::{EventBatch, EventFeed, Subscription};
pub use watcher::Watcher;
