//! What the Raft thread tells watchers after each committed batch.
//!
//! A broadcast of bounded capacity: publishing never waits for a watcher. A watcher
//! that falls behind loses batches (the receiver reports how many) and reads what it
//! missed from the stored revisions instead, so a slow watcher costs storage reads,
//! never memory without bound and never a stalled write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::proto::mvccpb::Event;

/// Batches the feed holds for its slowest receiver before that one must catch up from
/// storage.
const FEED_BATCHES: usize = 256;
/// A batch whose events are larger than this is published without them: watchers read
/// it from storage. Bounds the feed's memory at about `FEED_BATCHES` times this.
const MAX_BATCH_EVENT_BYTES: usize = 1 << 20;

/// The revisions one committed batch created.
#[derive(Debug)]
pub struct EventBatch {
    /// The first and last new revision.
    pub first: i64,
    pub last: i64,
    /// Their events in revision order; `None` when not collected (read them from
    /// storage).
    pub events: Option<Vec<Event>>,
}

#[derive(Debug)]
pub struct EventFeed {
    tx: broadcast::Sender<Arc<EventBatch>>,
    /// Live subscriptions; while there are none, nobody collects events.
    subscribers: Arc<AtomicUsize>,
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed {
            tx: broadcast::channel(FEED_BATCHES).0,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl EventFeed {
    /// Whether events are worth collecting for the next batch.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) > 0
    }

    /// Publishes a committed batch.
    pub fn publish(&self, mut batch: EventBatch) {
        if let Some(events) = &batch.events {
            let bytes: usize = events
                .iter()
                .map(|e| e.kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len()))
                .sum();
            if bytes > MAX_BATCH_EVENT_BYTES {
                batch.events = None;
            }
        }
        // No receiver: nobody watches, and a later watcher reads storage anyway.
        let _ = self.tx.send(Arc::new(batch));
    }

    /// Starts receiving batches committed from now on. Subscribe *before* reading
    /// storage, so that nothing falls between the read and the first batch received.
    pub fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        Subscription {
            rx: self.tx.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }
}

pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<EventBatch>>,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}
