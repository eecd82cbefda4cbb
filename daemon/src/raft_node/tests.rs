//! The node on a real state database, without the network: proposals, reads, restart,
//! log compaction.

use std::time::Duration;

use raft::prelude::ConfState;

use super::*;
use crate::proto::etcdserverpb::PutRequest;
use crate::state_machine::Applied;
use crate::storage::{self, Meta};

const ID: u64 = 0x8e9e05c52164694d;

fn node_config(snapshot_count: u64) -> NodeConfig {
    NodeConfig {
        id: ID,
        tick_interval: Duration::from_millis(10),
        election_ticks: 10,
        pre_vote: true,
        snapshot_count,
        snapshot_catchup_entries: 5,
        request_timeout: Duration::from_secs(5),
        joining: false,
    }
}

/// A one-voter database, as bootstrap leaves it.
fn bootstrapped(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("state.db");
    let log = RaftLog::open(storage::open_writer(&path).unwrap()).unwrap();
    let mut b = log.batch(Durability::Sync).unwrap();
    b.set_conf_state(&ConfState::from((vec![ID], vec![])))
        .unwrap();
    Meta::MemberId.set_u64(b.conn(), ID).unwrap();
    b.commit().unwrap();
    path
}

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

async fn revision_of(node: &NodeHandle, key: &str) -> i64 {
    match node.propose(put(key)).await.unwrap() {
        Applied::Put(r) => r.header.unwrap().revision,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_apply_in_order_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = bootstrapped(dir.path());
    let (node, thread) = start(
        node_config(1000),
        storage::open_writer(&path).unwrap(),
        Box::new(NoPeers),
        AppliedState::default(),
    )
    .unwrap();
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(revision_of(&node, &format!("k{i}")).await);
    }
    assert_eq!(revisions, (2..22).collect::<Vec<_>>());
    // Concurrent proposals share Ready batches and still get distinct revisions.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let n = node.clone();
        tasks.push(tokio::spawn(async move {
            revision_of(&n, &format!("c{i}")).await
        }));
    }
    let mut concurrent = Vec::new();
    for t in tasks {
        concurrent.push(t.await.unwrap());
    }
    concurrent.sort_unstable();
    assert_eq!(concurrent, (22..72).collect::<Vec<_>>());
    node.read_barrier().await.unwrap();
    node.stop();
    thread.join().unwrap().unwrap();

    let (node, thread) = start(
        node_config(1000),
        storage::open_writer(&path).unwrap(),
        Box::new(NoPeers),
        AppliedState::default(),
    )
    .unwrap();
    assert_eq!(node.status().revision.load(Ordering::Acquire), 71);
    assert_eq!(revision_of(&node, "after-restart").await, 72);
    node.stop();
    thread.join().unwrap().unwrap();
}

/// The log's truncated index and the state's applied index, read as another process
/// would.
fn log_marks(path: &std::path::Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "ATTACH DATABASE ?1 AS log",
        rusqlite::params![storage::log_db_path(path).to_string_lossy()],
    )
    .unwrap();
    let truncated = Meta::TruncatedIndex.get_u64(&conn).unwrap().unwrap_or(0);
    let applied = Meta::AppliedIndex.get_u64(&conn).unwrap().unwrap_or(0);
    (truncated, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_compacted_every_snapshot_count_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = bootstrapped(dir.path());
    let (node, thread) = start(
        node_config(10),
        storage::open_writer(&path).unwrap(),
        Box::new(NoPeers),
        AppliedState::default(),
    )
    .unwrap();
    // The log is cut only up to what the checkpointer has made durable in the state
    // database, which it does on its own schedule: on a busy machine the first cuts
    // lag. Write in rounds of snapshot-count entries until a cut lands within the
    // window, with a deadline.
    let read_marks = || log_marks(&path);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    loop {
        for _ in 0..10 {
            revision_of(&node, &format!("k{written}")).await;
            written += 1;
        }
        let (truncated, applied) = read_marks();
        if written >= 40 && truncated + 15 >= applied {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "log truncated at {truncated} with applied {applied} after {written} puts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop();
    thread.join().unwrap().unwrap();
    let conn = storage::open_writer(&path).unwrap();
    let truncated = Meta::TruncatedIndex.get_u64(&conn).unwrap().unwrap_or(0);
    let applied = Meta::AppliedIndex.get_u64(&conn).unwrap().unwrap();
    assert!(applied >= 40, "applied {applied}");
    assert!(
        truncated >= applied - 15 && truncated <= applied - 5,
        "log truncated at {truncated} with applied {applied}: expected about snapshot-count \
         entries ago, keeping the catch-up window"
    );
    let oldest: i64 = conn
        .query_row("SELECT MIN(idx) FROM raft_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(oldest as u64, truncated + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_cut_is_made_a_step_per_batch_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = bootstrapped(dir.path());
    let count = 3 * COMPACTION_STEP;
    let (node, thread) = start(
        node_config(count),
        storage::open_writer(&path).unwrap(),
        Box::new(NoPeers),
        AppliedState::default(),
    )
    .unwrap();
    // One put at a time: each is applied in a batch or two of its own, so the log's
    // start moves by at most two steps between puts; to pass two steps it must have
    // moved more than once, the cut going on while the puts do.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut written = 0u64;
    let mut last = 0;
    let mut moves = 0;
    while last <= 2 * COMPACTION_STEP {
        revision_of(&node, &format!("k{written}")).await;
        written += 1;
        if written < count {
            continue;
        }
        let (truncated, _) = log_marks(&path);
        assert!(
            truncated <= last + 2 * COMPACTION_STEP,
            "the log's start jumped from {last} to {truncated} in one put"
        );
        if truncated > last {
            moves += 1;
            last = truncated;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "log truncated at {last} after {written} puts"
        );
    }
    assert!(moves >= 2, "the log was cut to {last} in {moves} step(s)");
    node.stop();
    thread.join().unwrap().unwrap();
    let conn = storage::open_writer(&path).unwrap();
    let truncated = Meta::TruncatedIndex.get_u64(&conn).unwrap().unwrap_or(0);
    let oldest: i64 = conn
        .query_row("SELECT MIN(idx) FROM raft_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(oldest as u64, truncated + 1);
}
