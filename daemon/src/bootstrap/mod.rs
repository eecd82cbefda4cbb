//! From configuration to an initialised state database: a new member of a new cluster
//! (IDs derived exactly as etcd derives them), or a restart from an existing data dir.
//!
//! A new member's initial cluster is `--initial-cluster`, or read from DNS SRV records
//! ([`dns_srv`], `--discovery-srv`) or from an etcd discovery service ([`discovery`],
//! `--discovery`, `--discovery-token`) before anything is written.

pub mod discovery;
pub mod dns_srv;
pub mod etcd_restore;
mod force_new;
pub mod join;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use raft::prelude::ConfState;

use crate::config::{ClusterState, Config, cluster_id, member_id};
use crate::membership::{self, Member};
use crate::storage::{self, Durability, Meta, RaftLog, StorageError};
use crate::transport::members_query as join_cluster;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "data directory {0} was written by etcd, and an etcd member has run in it ({1}); qetcd imports only a data dir fresh from `etcdctl snapshot restore` or `etcdutl snapshot restore` and will not touch this one — take a snapshot of it and restore that, or point --data-dir at an empty directory"
    )]
    EtcdDataDir(PathBuf, String),
    #[error(
        "data directory {0} holds both an etcd member (member/) and a qetcd member (qetcd/) that was not imported from it; which one is current cannot be known, so qetcd will not touch either — move one of them away"
    )]
    HalfEtcdHalfQetcd(PathBuf),
    #[error("cannot import the etcd snapshot restored in {dir}: {source}")]
    EtcdRestore {
        dir: PathBuf,
        source: crate::etcd_backup::BackupError,
    },
    #[error("cannot access data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("member exists with identical ID {0:x}")]
    DuplicateId(u64),
    #[error("cannot use 0 as member id")]
    ZeroId,
    #[error(transparent)]
    Join(#[from] join::JoinError),
    /// etcd's wrapper around every discovery failure.
    #[error("failed to join discovery cluster ({0})")]
    Discovery(discovery::DiscoveryError),
    #[error("discovery cluster {0} has duplicate url")]
    DiscoveryDuplicateUrl(String),
    #[error(transparent)]
    DnsSrv(#[from] dns_srv::DnsSrvError),
    /// The configuration cannot bootstrap a new member (etcd's VerifyBootstrap).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An initialised state database, ready for the Raft node.
pub struct Bootstrapped {
    pub member_id: u64,
    pub cluster_id: u64,
    pub db_path: PathBuf,
    pub conn: rusqlite::Connection,
    /// True when the member restarted from existing state (`--initial-*` ignored).
    pub restarted: bool,
    /// True when the member just joined a running cluster and has no state yet.
    pub joined: bool,
}

/// Whether starting with `cfg` joins a running cluster: state `existing` and no member
/// state in the data dir yet. The cluster to join is then fetched ([`join::fetch`])
/// and handed to [`bootstrap`].
pub fn is_joining(cfg: &Config) -> Result<bool, BootstrapError> {
    Ok(cfg.initial_cluster_state == ClusterState::Existing && !has_member_state(&cfg.data_dir)?)
}

/// Opens the member's state database, initialising it for a new cluster, or for the
/// running cluster `joining` describes, unless it already holds a member.
pub fn bootstrap(
    cfg: &Config,
    joining: Option<&join_cluster::RemoteCluster>,
) -> Result<Bootstrapped, BootstrapError> {
    let discovered;
    etcd_restore::import_if_restored(cfg, has_member_state(&cfg.data_dir)?)?;
    let restarting = has_member_state(&cfg.data_dir)?;
    let cfg = if !cfg.discovery_srv.is_empty() && !restarting {
        discovered = dns_srv::discover(cfg)?;
        &discovered
    } else if (!cfg.discovery.is_empty() || !cfg.discovery_token.is_empty()) && !restarting {
        if cfg.initial_cluster_state == ClusterState::Existing && !cfg.discovery.is_empty() {
            return Err(crate::config::ConfigError::Invalid(
                "discovery URL should not be set when joining existing initial cluster".into(),
            )
            .into());
        }
        discovered = discover(cfg)?;
        &discovered
    } else {
        if !cfg.discovery.is_empty() || !cfg.discovery_token.is_empty() {
            tracing::info!(
                discovery_url = %cfg.discovery,
                "discovery token is ignored since cluster already initialized; valid logs are found"
            );
        }
        cfg
    };
    prepare_data_dir(&cfg.data_dir)?;
    let db_path = storage::state_db_path(&cfg.data_dir);
    let db_dir = db_path.parent().expect("state db path has a parent");
    fs::create_dir_all(db_dir).map_err(|source| BootstrapError::DataDir {
        path: db_dir.to_path_buf(),
        source,
    })?;
    fs::set_permissions(db_dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        BootstrapError::DataDir {
            path: db_dir.to_path_buf(),
            source,
        }
    })?;
    let conn = storage::open_writer(&db_path)?;
    let existing = (
        Meta::MemberId.get_u64(&conn)?,
        Meta::ClusterId.get_u64(&conn)?,
    );
    if let (Some(member_id), Some(cluster_id)) = existing {
        tracing::info!(
            member_id = %format!("{member_id:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            data_dir = %cfg.data_dir.display(),
            "restarting member from existing data; --initial-cluster* flags are ignored"
        );
        let conn = if cfg.force_new_cluster {
            force_new::force_new_cluster(conn, member_id)?;
            storage::open_writer(&db_path)?
        } else {
            conn
        };
        return Ok(Bootstrapped {
            member_id,
            cluster_id,
            db_path,
            conn,
            restarted: true,
            joined: false,
        });
    }
    if cfg.initial_cluster_state == ClusterState::Existing {
        let cluster = joining.ok_or(join::JoinError::NoPeerAnswered)?;
        let (member_id, cluster_id) = join::initialise(cfg, conn, cluster)?;
        let conn = storage::open_writer(&db_path)?;
        return Ok(Bootstrapped {
            member_id,
            cluster_id,
            db_path,
            conn,
            restarted: false,
            joined: true,
        });
    }
    cfg.validate_new_cluster()?;
    let (member_id, cluster_id) = initialise_new_cluster(cfg, conn)?;
    let conn = storage::open_writer(&db_path)?;
    Ok(Bootstrapped {
        member_id,
        cluster_id,
        db_path,
        conn,
        restarted: false,
        joined: false,
    })
}

/// v2 or v3 discovery, with etcd's guidance logged when it fails.
fn discover(cfg: &Config) -> Result<Config, BootstrapError> {
    use discovery::DiscoveryError;
    discovery::discover(cfg).map_err(|e| {
        if let DiscoveryError::DuplicateUrl(map) = e {
            return BootstrapError::DiscoveryDuplicateUrl(map);
        }
        discovery::log_guidance(&e, cfg);
        BootstrapError::Discovery(e)
    })
}

/// Whether `data_dir` already holds a member's IDs (a restart), looked at without
/// creating anything.
fn has_member_state(data_dir: &Path) -> Result<bool, BootstrapError> {
    let db = storage::state_db_path(data_dir);
    if !db.exists() {
        return Ok(false);
    }
    let conn = storage::open_reader(&db)?;
    Ok(Meta::MemberId.get_u64(&conn).ok().flatten().is_some())
}

/// Creates the data directory 0700, refusing one that real etcd wrote.
fn prepare_data_dir(dir: &Path) -> Result<(), BootstrapError> {
    let io_err = |source| BootstrapError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    if dir.join("member").exists() {
        // etcd_restore::import_if_restored imported or refused it before this.
        return Err(BootstrapError::EtcdDataDir(
            dir.to_path_buf(),
            "it has a member/ directory".into(),
        ));
    }
    if dir.exists() {
        let mode = fs::metadata(dir).map_err(io_err)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            tracing::warn!(
                "directory {:?} exist, but the permission is {:o}. The recommended permission is \"-rwx------\" to prevent possible unprivileged access to the data",
                dir.display().to_string(),
                mode
            );
        }
    } else {
        fs::create_dir_all(dir).map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    }
    Ok(())
}

/// Writes IDs, members and the initial Raft configuration in one transaction, so that a
/// crash part-way leaves a database that still counts as uninitialised.
fn initialise_new_cluster(
    cfg: &Config,
    conn: rusqlite::Connection,
) -> Result<(u64, u64), BootstrapError> {
    let mut members = Vec::new();
    for (name, urls) in cfg.initial_cluster.iter() {
        let id = member_id(urls, &cfg.initial_cluster_token, None);
        if id == 0 {
            return Err(BootstrapError::ZeroId);
        }
        if members.iter().any(|m: &Member| m.id == id) {
            return Err(BootstrapError::DuplicateId(id));
        }
        members.push(Member {
            id,
            // Names and client URLs of the others arrive when they publish them.
            name: if *name == cfg.name {
                name.clone()
            } else {
                String::new()
            },
            peer_urls: urls.iter().map(crate::config::url_string).collect(),
            client_urls: Vec::new(),
            is_learner: false,
        });
    }
    let own = members
        .iter()
        .find(|m| m.name == cfg.name)
        .map(|m| m.id)
        .expect("validate_new_cluster checked that this member is in the initial cluster");
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cluster = cluster_id(&ids);

    let log = RaftLog::open(conn)?;
    let mut batch = log.batch(Durability::SyncAll)?;
    for m in &members {
        membership::upsert(batch.conn(), m)?;
    }
    let mut voters = ids.clone();
    voters.sort_unstable();
    batch.set_conf_state(&ConfState::from((voters, vec![])))?;
    Meta::MemberId.set_u64(batch.conn(), own)?;
    Meta::ClusterId.set_u64(batch.conn(), cluster)?;
    batch.commit()?;
    tracing::info!(
        member_id = %format!("{own:x}"),
        cluster_id = %format!("{cluster:x}"),
        members = ids.len(),
        "bootstrapped new cluster"
    );
    Ok((own, cluster))
}
