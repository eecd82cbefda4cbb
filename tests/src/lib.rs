//! Harness for process-level tests: start real members (qetcd, or Debian's etcd as a
//! reference), drive them with Debian's `etcdctl`, wait for conditions with deadlines.
//!
//! Every member gets its own loopback address (127.x.y.z), so tests run in parallel
//! without port clashes, and every process is killed when its handle drops, even when
//! the test panics.

pub mod bench;
pub mod cluster;
pub mod data_dir;
pub mod etcd35;
pub mod etcdctl;
pub mod log_lines;
pub mod member;
pub mod netns;
pub mod pki;
pub mod provision;
pub mod users;
pub mod wait;

pub use cluster::Cluster;
pub use etcdctl::{Etcdctl, Output};
pub use member::{Binary, Member, MemberSpec};
pub use wait::wait_until;
