//! Cluster membership as the state database records it: who the members are, their peer
//! URLs (from bootstrap or conf changes) and what each published about itself (name and
//! client URLs).

use rusqlite::{Connection, params};

use crate::proto::etcdserverpb;
use crate::proto::qetcdpb::{MemberAttributes, MemberRecord};
use crate::storage::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started and published its attributes.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    pub fn from_record(r: &MemberRecord) -> Self {
        Member {
            id: r.id,
            name: r.name.clone(),
            peer_urls: r.peer_urls.clone(),
            client_urls: r.client_urls.clone(),
            is_learner: r.is_learner,
        }
    }

    pub fn to_proto(&self) -> etcdserverpb::Member {
        etcdserverpb::Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }
}

fn encode_urls(urls: &[String]) -> String {
    serde_json::to_string(urls).expect("a list of strings always serialises")
}

fn decode_urls(s: &str) -> Result<Vec<String>, StorageError> {
    serde_json::from_str(s).map_err(|e| StorageError::Corrupt(format!("member URLs {s:?}: {e}")))
}

pub fn upsert(conn: &Connection, m: &Member) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO members (id, name, peer_urls, client_urls, is_learner)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, peer_urls = excluded.peer_urls,
           client_urls = excluded.client_urls, is_learner = excluded.is_learner",
    )?
    .execute(params![
        m.id as i64,
        m.name,
        encode_urls(&m.peer_urls),
        encode_urls(&m.client_urls),
        m.is_learner
    ])?;
    Ok(())
}

pub fn exists(conn: &Connection, id: u64) -> Result<bool, StorageError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM members WHERE id = ?1")?
        .exists(params![id as i64])?)
}

pub fn set_learner(conn: &Connection, id: u64, is_learner: bool) -> Result<(), StorageError> {
    conn.prepare_cached("UPDATE members SET is_learner = ?2 WHERE id = ?1")?
        .execute(params![id as i64, is_learner])?;
    Ok(())
}

/// Gives a member new peer URLs (etcd's `member update`); refused for an unknown
/// member, or URLs another member has.
pub fn update_peer_urls(
    conn: &Connection,
    id: u64,
    peer_urls: &[String],
) -> Result<(), crate::error::RequestError> {
    let members = list(conn)?;
    if !members.iter().any(|m| m.id == id) {
        return Err(crate::error::RequestError::MemberNotFound);
    }
    if members
        .iter()
        .any(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)))
    {
        return Err(crate::error::RequestError::PeerUrlExists);
    }
    conn.prepare_cached("UPDATE members SET peer_urls = ?2 WHERE id = ?1")?
        .execute(params![id as i64, encode_urls(peer_urls)])?;
    Ok(())
}

/// Removes a member for good: its ID is recorded so that it can never return.
pub fn remove(conn: &Connection, id: u64) -> Result<(), StorageError> {
    conn.prepare_cached("DELETE FROM members WHERE id = ?1")?
        .execute(params![id as i64])?;
    conn.prepare_cached("INSERT OR IGNORE INTO members_removed (id) VALUES (?1)")?
        .execute(params![id as i64])?;
    Ok(())
}

/// Records `id` as removed without touching the members (an imported backup's
/// `members_removed` bucket).
pub fn record_removed(conn: &Connection, id: u64) -> Result<(), StorageError> {
    conn.prepare_cached("INSERT OR IGNORE INTO members_removed (id) VALUES (?1)")?
        .execute(params![id as i64])?;
    Ok(())
}

/// Every removed member's ID, ascending as unsigned numbers.
pub fn removed_ids(conn: &Connection) -> Result<Vec<u64>, StorageError> {
    let mut stmt = conn.prepare_cached("SELECT id FROM members_removed")?;
    let mut ids = stmt
        .query_map([], |r| r.get::<_, i64>(0).map(|id| id as u64))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// Whether `id` belonged to a member that was removed (etcd's `membership: ID removed`).
pub fn is_removed(conn: &Connection, id: u64) -> Result<bool, StorageError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM members_removed WHERE id = ?1")?
        .exists(params![id as i64])?)
}

/// Whether a member other than `id` advertises one of `peer_urls`.
fn peer_urls_taken(conn: &Connection, id: u64, peer_urls: &[String]) -> Result<bool, StorageError> {
    Ok(list(conn)?
        .iter()
        .any(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u))))
}

/// Why a committed membership change must not take effect, checked again when it is
/// applied (etcd's `ValidateConfigurationChange`): the checks made when it was proposed
/// may be stale by then, as when two members each accepted a change for the same URL.
/// Every member decides alike, from the same applied state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedChange {
    /// `membership: ID removed`.
    IdRemoved,
    /// `membership: ID exists`: a voter added again.
    IdExists,
    /// `membership: ID not found`.
    IdNotFound,
    /// `membership: peerURL exists`.
    PeerUrlExists,
}

impl std::fmt::Display for RefusedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusedChange::IdRemoved => "membership: ID removed",
            RefusedChange::IdExists => "membership: ID exists",
            RefusedChange::IdNotFound => "membership: ID not found",
            RefusedChange::PeerUrlExists => "membership: peerURL exists",
        })
    }
}

/// The check of an added member: a voter (`learner` false) or a learner, with the
/// peer URLs its conf change carries (`None`: a voter added for an existing learner,
/// i.e. a promotion).
pub fn check_add(
    conn: &Connection,
    id: u64,
    learner: bool,
    peer_urls: Option<&[String]>,
) -> Result<Result<(), RefusedChange>, StorageError> {
    if is_removed(conn, id)? {
        return Ok(Err(RefusedChange::IdRemoved));
    }
    let existing = list(conn)?.into_iter().find(|m| m.id == id);
    Ok(match existing {
        // Promotion: a voter added for a member that is a learner.
        Some(m) if m.is_learner && !learner => Ok(()),
        Some(_) => Err(RefusedChange::IdExists),
        None => match peer_urls {
            None => Err(RefusedChange::IdNotFound),
            Some(urls) if peer_urls_taken(conn, id, urls)? => Err(RefusedChange::PeerUrlExists),
            Some(_) => Ok(()),
        },
    })
}

pub fn check_remove(conn: &Connection, id: u64) -> Result<Result<(), RefusedChange>, StorageError> {
    Ok(if is_removed(conn, id)? {
        Err(RefusedChange::IdRemoved)
    } else if !exists(conn, id)? {
        Err(RefusedChange::IdNotFound)
    } else {
        Ok(())
    })
}

/// Records a member's published name and client URLs. A member no longer in the
/// cluster is ignored, as etcd does.
pub fn publish(conn: &Connection, attrs: &MemberAttributes) -> Result<(), StorageError> {
    conn.prepare_cached("UPDATE members SET name = ?2, client_urls = ?3 WHERE id = ?1")?
        .execute(params![
            attrs.member_id as i64,
            attrs.name,
            encode_urls(&attrs.client_urls)
        ])?;
    Ok(())
}

/// All members, ordered by ID (as unsigned numbers, as etcd lists them).
pub fn list(conn: &Connection) -> Result<Vec<Member>, StorageError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, name, peer_urls, client_urls, is_learner FROM members")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let peer: String = r.get(2)?;
        let client: String = r.get(3)?;
        out.push(Member {
            id: id as u64,
            name: r.get(1)?,
            peer_urls: decode_urls(&peer)?,
            client_urls: decode_urls(&client)?,
            is_learner: r.get(4)?,
        });
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}
