//! Reading an etcd WAL far enough to tell a data dir `snapshot restore` just made from
//! one an etcd member has run in, and to take restore's member and cluster IDs from it.
//!
//! `etcdctl snapshot restore` (3.4) and `etcdutl snapshot restore` (3.5) write one WAL
//! file holding: the metadata record (member ID, cluster ID), a snapshot record at index
//! 0, one committed `ConfChangeAddNode` entry per member at term 1 (its context the
//! member as JSON), the hard state committing them, and a snapshot record at that
//! index. An etcd that has run as a member appended more: its first leader's empty
//! entry at term 2, the publication of its name, every request since. So a data dir is
//! taken as *restored* when its WAL holds nothing but such bootstrap entries, all
//! committed; anything else is a live etcd member's, which qetcd refuses untouched.
//!
//! Records are framed as etcd frames them: an 8-byte little-endian length (its top
//! byte, when its high bit is set, giving the padding to 8 bytes in its low 3 bits),
//! then a `walpb.Record`. The preallocated zeros after the last record end the file.

use std::path::{Path, PathBuf};

use prost::Message;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, HardState};

use super::{BackupError, EtcdMember};

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalSnapshot {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

/// What `snapshot restore` decided: this member's and the cluster's IDs, and the
/// members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<EtcdMember>,
}

/// What an etcd data dir's WAL says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Made by `snapshot restore` and never run.
    Restored(Restored),
    /// An etcd member has run in it (the reason says what shows it).
    Live(String),
}

/// Reads the WAL of the etcd data dir `data_dir` (`member/wal`).
pub fn inspect(data_dir: &Path) -> Result<Verdict, BackupError> {
    let wal_dir = data_dir.join("member").join("wal");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&wal_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verdict::Live("it has no member/wal directory".into()));
        }
        Err(e) => return Err(BackupError::io(&wal_dir, e)),
    };
    files.sort();
    let [file] = files.as_slice() else {
        return Ok(Verdict::Live(format!(
            "its WAL has {} files (restore writes one)",
            files.len()
        )));
    };
    let bytes = std::fs::read(file).map_err(|e| BackupError::io(file, e))?;
    classify(&bytes).map_err(|reason| BackupError::Wal {
        path: file.display().to_string(),
        reason,
    })
}

fn classify(bytes: &[u8]) -> Result<Verdict, String> {
    let mut metadata = None;
    let mut members = Vec::new();
    let mut commit = 0;
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let frame = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if frame == 0 {
            break;
        }
        let len = (frame & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if frame & (1 << 63) != 0 {
            ((frame >> 56) & 0x7) as usize
        } else {
            0
        };
        let start = at + 8;
        let data = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| format!("a WAL record at byte {at} runs past the end of the file"))?;
        at = start + len + pad;
        let record = Record::decode(data).map_err(|e| format!("a WAL record at byte {at}: {e}"))?;
        match record.r#type {
            METADATA => {
                let m = Metadata::decode(record.data.as_slice())
                    .map_err(|e| format!("WAL metadata: {e}"))?;
                metadata = Some(m);
            }
            ENTRY => {
                let entry = Entry::parse_from_bytes(&record.data)
                    .map_err(|e| format!("a WAL entry: {e}"))?;
                let Some(member) = bootstrap_member(&entry, members.len() as u64 + 1) else {
                    return Ok(Verdict::Live(format!(
                        "its WAL has entry {} (term {}, {:?}) besides restore's bootstrap entries",
                        entry.index,
                        entry.term,
                        entry.get_entry_type()
                    )));
                };
                members.push(member);
            }
            STATE => {
                let hs = HardState::parse_from_bytes(&record.data)
                    .map_err(|e| format!("a WAL hard state: {e}"))?;
                if hs.term > 1 {
                    return Ok(Verdict::Live(format!("its WAL reached term {}", hs.term)));
                }
                commit = hs.commit;
            }
            SNAPSHOT => {
                let s = WalSnapshot::decode(record.data.as_slice())
                    .map_err(|e| format!("a WAL snapshot record: {e}"))?;
                if s.term > 1 {
                    return Ok(Verdict::Live(format!(
                        "its WAL has a snapshot at term {}",
                        s.term
                    )));
                }
            }
            CRC => {}
            other => return Err(format!("a WAL record of unknown type {other}")),
        }
    }
    let Some(metadata) = metadata else {
        return Err("the WAL has no metadata record".into());
    };
    if members.is_empty() || commit != members.len() as u64 {
        return Ok(Verdict::Live(format!(
            "its WAL commits {commit} of {} bootstrap entries",
            members.len()
        )));
    }
    if !members.iter().any(|m| m.id == metadata.node_id) {
        return Err(format!(
            "the WAL names member {:x}, which is not among its members",
            metadata.node_id
        ));
    }
    Ok(Verdict::Restored(Restored {
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        members,
    }))
}

/// The member a bootstrap entry adds, if `entry` is the `index`th such entry.
fn bootstrap_member(entry: &Entry, index: u64) -> Option<EtcdMember> {
    if entry.get_entry_type() != EntryType::EntryConfChange || entry.term != 1 {
        return None;
    }
    if entry.index != index {
        return None;
    }
    let cc = ConfChange::parse_from_bytes(&entry.data).ok()?;
    if cc.get_change_type() != ConfChangeType::AddNode {
        return None;
    }
    let member: EtcdMember = serde_json::from_slice(&cc.context).ok()?;
    (member.id == cc.node_id).then_some(member)
}
