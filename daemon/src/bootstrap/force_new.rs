//! `--force-new-cluster`: bring a member's data back as a one-member cluster after the
//! cluster lost its majority (spec §7.4), as etcd does it.
//!
//! etcd keeps the member's and the cluster's IDs, drops the log entries that were never
//! committed (nobody acknowledged them), and appends, as committed, one conf change
//! per other member removing it. The member then applies those like any removal (the
//! membership rows go, Raft's configuration shrinks to this member alone) and elects
//! itself. Other members are then refused as removed; new ones are added one by one.

use raft::Storage as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};

use crate::storage::{Durability, RaftLog, StorageError};

/// Rewrites the log of the member `own` as above; returns how many members it removes.
pub fn force_new_cluster(conn: rusqlite::Connection, own: u64) -> Result<usize, StorageError> {
    let log = RaftLog::open(conn)?;
    let cs = log.conf_state();
    let others: Vec<u64> = cs
        .voters
        .iter()
        .chain(cs.learners.iter())
        .copied()
        .filter(|id| *id != own)
        .collect();
    let mut hs = log.hard_state();
    let first = hs.commit + 1;
    let entries: Vec<Entry> = others
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ConfChangeType::RemoveNode);
            single.node_id = *id;
            let mut cc = ConfChangeV2::default();
            cc.mut_changes().push(single);
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e.term = hs.term;
            e.index = first + i as u64;
            e.data = protobuf::Message::write_to_bytes(&cc)
                .expect("a conf change always encodes")
                .into();
            e
        })
        .collect();
    let last = log
        .last_index()
        .map_err(|e| StorageError::Corrupt(format!("raft log: {e}")))?;
    let discarded = last.saturating_sub(hs.commit);
    let mut batch = log.batch(Durability::Sync)?;
    if !entries.is_empty() {
        // Appending at commit + 1 drops every uncommitted entry after it.
        batch.append(&entries)?;
        hs.commit = entries.last().expect("not empty").index;
        batch.set_hard_state(&hs)?;
    }
    batch.commit()?;
    tracing::warn!(
        removed = others.len(),
        discarded_uncommitted_entries = discarded,
        "forcing a new one-member cluster from this member's data (--force-new-cluster)"
    );
    Ok(others.len())
}

#[cfg(test)]
mod tests {
    use raft::prelude::{ConfState, HardState};

    use super::*;
    use crate::storage;

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            term: 2,
            ..Default::default()
        }
    }

    #[test]
    fn uncommitted_entries_give_way_to_committed_removals_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let log = RaftLog::open(storage::open_writer(&path).unwrap()).unwrap();
        let mut b = log.batch(Durability::SyncAll).unwrap();
        b.set_conf_state(&ConfState::from((vec![1, 2, 3], vec![4])))
            .unwrap();
        b.append(&(1..=5).map(entry).collect::<Vec<_>>()).unwrap();
        let hs = HardState {
            term: 3,
            commit: 3,
            ..Default::default()
        };
        b.set_hard_state(&hs).unwrap();
        b.commit().unwrap();
        drop(log);

        let removed = force_new_cluster(storage::open_writer(&path).unwrap(), 2).unwrap();
        assert_eq!(removed, 3);
        let log = RaftLog::open(storage::open_writer(&path).unwrap()).unwrap();
        assert_eq!(log.hard_state().commit, 6);
        assert_eq!(log.last_index().unwrap(), 6);
        let tail = log
            .entries(4, 7, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        let gone: Vec<u64> = tail
            .iter()
            .map(|e| {
                assert_eq!(e.get_entry_type(), EntryType::EntryConfChangeV2);
                assert_eq!(e.term, 3);
                let cc: ConfChangeV2 = protobuf::Message::parse_from_bytes(&e.data).unwrap();
                assert_eq!(cc.changes[0].get_change_type(), ConfChangeType::RemoveNode);
                cc.changes[0].node_id
            })
            .collect();
        assert_eq!(gone, [1, 3, 4]);
    }
}
