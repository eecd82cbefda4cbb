//! qetcd: an etcd-compatible key-value store. To clients it is etcd (v3 gRPC API, etcd's
//! flags and `ETCD_*` variables); inside, Raft through raft-rs and state in SQLite.
//!
//! Where things live:
//! - [`config`]: etcd's flags, environment variables, defaults and validation.
//! - [`bootstrap`]: from configuration to an initialised data directory.
//! - [`raft_node`]: the Raft thread and its Ready loop.
//! - [`storage`]: the SQLite database: Raft log and everything applied.
//! - [`state_machine`]: applying committed entries.
//! - [`mvcc`], [`watch`], [`lease`], [`membership`]: etcd's data model on that database.
//! - [`api`]: the gRPC services and HTTP endpoints; [`error`] what clients are told.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves; [`logging`] etcd's log lines.
//! - [`tls`]: certificates and TLS configs for client listeners and peers.
//! - [`server`]: one member and its lifecycle (start, serve, stop), and the tasks that
//!   drive the Raft node on its behalf; [`notify`] speaks systemd's notify protocol.

pub mod api;
pub mod auth;
pub mod bbolt;
pub mod bootstrap;
pub mod config;
pub mod error;
pub mod etcd_backup;
pub mod lease;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod notify;
pub mod proto;
pub mod raft_node;
pub mod server;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod watch;
