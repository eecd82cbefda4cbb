//! The robustness tier: a three-member qetcd cluster (on loopback, or on network
//! namespaces of its own when a host is to be cut off), concurrent etcd clients and
//! watchers recording every call and return ([`recorder`]), one injected fault per run
//! (`tests/faults.rs`), and checkers that read the recording afterwards.
//!
//! Peer-link faults come from network namespaces ([`netns`]: links down, blackhole
//! routes) and from a user-space UDP proxy ([`proxy`]: loss, delay, reordering).
//!
//! The checkers trust nothing but the history: [`linearizability`] (per key, with the
//! etcd model in [`model`]), [`revisions`] (the one global revision counter, across
//! keys) and [`watch_check`] (etcd's watch guarantees). A failed check writes the
//! history and the failing window to a file ([`report`]).

pub mod history;
pub mod linearizability;
pub mod model;
pub mod netns;
pub mod proxy;
pub mod recorder;
pub mod report;
pub mod revisions;
pub mod tmpfs;
pub mod watch_check;
