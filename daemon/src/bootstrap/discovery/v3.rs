//! etcd 3.6's v3 discovery protocol (`--discovery-token`, `--discovery-endpoints`):
//! the same idea as v2 on an ordinary etcd v3 cluster, through the v3 gRPC API.
//!
//! Keys under `/_etcd/registry/<token>/`: `_config/size` holds N; each member puts
//! `members/<member id hex>` = `<name>=<peer url>[,…]` (a plain put, so re-registering
//! after a crash keeps the key's create revision). A member checks the size and the
//! registrations (fast fail when N others are there), registers, checks again, watches
//! the members prefix from the revision it read until N are known — re-watching from
//! the same revision, after the backoff, when the watch breaks — and takes the first N
//! by create revision.
//! Member IDs hash the peer URLs with the token.
//!
//! Errors: a missing or bad size key and a full cluster are final; everything else
//! (unreachable endpoints, timeouts, a failed put) is retried with etcd's backoff, the
//! count reset after each successful check. Registrations that are not under the
//! members prefix, without `=`, or seen twice are skipped with etcd's warnings. Unlike
//! etcd 3.6, which then merges them into one member and forms a broken cluster, two
//! registrations with one name fail with `discovery: found duplicate name`, as in v2.

use tokio_stream::StreamExt;

use super::grpc_client::{self, Connection};
use super::{DiscoveryError, backoff, discovered_config, nodes_to_cluster};
use crate::config::{Config, InitialCluster, member_id};
use crate::notify::Notifier;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use crate::proto::mvccpb::KeyValue;

const DISCOVERY_PREFIX: &str = "/_etcd/registry";

pub fn size_key(token: &str) -> String {
    format!("{DISCOVERY_PREFIX}/{token}/_config/size")
}

pub fn members_prefix(token: &str) -> String {
    format!("{DISCOVERY_PREFIX}/{token}/members")
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registered {
    key: String,
    value: String,
    create_revision: i64,
}

/// The registrations known so far (etcd's `clusterInfo`).
#[derive(Debug, Default)]
struct Registry {
    prefix: String,
    members: Vec<Registered>,
}

impl Registry {
    fn new(token: &str) -> Self {
        Registry {
            prefix: members_prefix(token),
            members: Vec::new(),
        }
    }

    /// etcd's `clusterInfo.add`, with its warnings for what it skips.
    fn add(&mut self, kv: &KeyValue) {
        let key = String::from_utf8_lossy(&kv.key).trim().to_string();
        let value = String::from_utf8_lossy(&kv.value).trim().to_string();
        if !key.starts_with(&self.prefix) {
            tracing::warn!(key = %key, "invalid peer registry key");
        } else if !value.contains('=') {
            tracing::warn!(key = %key, value = %value, "invalid peer info returned from discovery service");
        } else if self.members.iter().any(|m| m.key == key) {
            tracing::warn!(key = %key, "found duplicate peer from discovery service");
        } else {
            tracing::info!(key = %key, value = %value, "found peer from discovery service");
            self.members.push(Registered {
                key,
                value,
                create_revision: kv.create_revision,
            });
            self.members.sort_by_key(|m| m.create_revision);
        }
    }
}

enum Failure {
    Retry(String),
    Fatal(DiscoveryError),
}

/// The answer to one call on `endpoint` within `timeout`; an error status or no answer
/// in time is a failure to retry, naming the endpoint.
async fn answered<T>(
    endpoint: &str,
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Failure::Retry(format!("{endpoint}: {}", s.message()))),
        Err(_) => Err(Failure::Retry(format!("{endpoint}: request timed out"))),
    }
}

pub struct Discovery {
    cfg: crate::config::DiscoveryClient,
    endpoints: Vec<String>,
    conn: Option<Connection>,
    next_endpoint: usize,
    token: String,
    id: u64,
    retries: u32,
    notifier: Notifier,
}

impl Discovery {
    pub fn new(cfg: &Config, id: u64) -> Self {
        Discovery {
            cfg: cfg.discovery_client.clone(),
            endpoints: cfg
                .discovery_endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            conn: None,
            next_endpoint: 0,
            token: cfg.discovery_token.clone(),
            id,
            retries: 0,
            notifier: Notifier::from_env(),
        }
    }

    fn self_key(&self) -> String {
        format!("{}/{:x}", members_prefix(&self.token), self.id)
    }

    async fn connection(&mut self) -> Result<Connection, Failure> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = grpc_client::connect(&self.endpoints, self.next_endpoint, &self.cfg)
            .await
            .map_err(Failure::Retry)?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Forgets a connection that failed, so that the next attempt dials the next
    /// endpoint.
    fn drop_connection(&mut self) {
        if self.conn.take().is_some() {
            self.next_endpoint += 1;
        }
    }

    async fn retry_backoff(&mut self, step: &str, error: &str) -> Result<(), DiscoveryError> {
        if self.retries == u32::MAX {
            return Err(DiscoveryError::TooManyRetries);
        }
        self.drop_connection();
        self.retries += 1;
        let wait = backoff(self.retries);
        tracing::warn!(error = %error, step, "discovery request failed");
        tracing::info!(url = step, backoff = ?wait, "retry connecting to discovery service");
        self.notifier.status(&format!(
            "discovery service unreachable ({step}); retrying in {}s",
            wait.as_secs()
        ));
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn range(
        &mut self,
        req: RangeRequest,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, Failure> {
        let conn = self.connection().await?;
        let timeout = self.cfg.request_timeout;
        let mut kv = KvClient::new(conn.channel.clone());
        answered(&conn.endpoint, timeout, kv.range(conn.request(req))).await
    }

    /// The size, the registrations and the revision they were read at.
    async fn check_cluster_once(&mut self) -> Result<(Registry, usize, i64), Failure> {
        let size = self
            .range(RangeRequest {
                key: size_key(&self.token).into_bytes(),
                ..Default::default()
            })
            .await?;
        let Some(kv) = size.kvs.first() else {
            return Err(Failure::Fatal(DiscoveryError::SizeNotFound));
        };
        let size = String::from_utf8_lossy(&kv.value)
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(Failure::Fatal(DiscoveryError::BadSizeKey))?;
        let prefix = members_prefix(&self.token).into_bytes();
        let resp = self
            .range(RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                ..Default::default()
            })
            .await?;
        let mut registry = Registry::new(&self.token);
        for kv in &resp.kvs {
            registry.add(kv);
        }
        let rev = resp.header.map_or(0, |h| h.revision);
        Ok((registry, size, rev))
    }

    async fn check_cluster(&mut self) -> Result<(Registry, usize, i64), DiscoveryError> {
        loop {
            match self.check_cluster_once().await {
                Ok((registry, size, rev)) => {
                    self.retries = 0;
                    let own = self.self_key();
                    for (i, m) in registry.members.iter().enumerate() {
                        if m.key == own {
                            break;
                        }
                        if i >= size - 1 {
                            return Err(DiscoveryError::FullCluster);
                        }
                    }
                    return Ok((registry, size, rev));
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => self.retry_backoff("cluster status check", &e).await?,
            }
        }
    }

    async fn register_self(&mut self, contents: &str) -> Result<(), DiscoveryError> {
        loop {
            let attempt = async {
                let conn = self.connection().await?;
                let put = PutRequest {
                    key: self.self_key().into_bytes(),
                    value: contents.as_bytes().to_vec(),
                    ..Default::default()
                };
                let mut kv = KvClient::new(conn.channel.clone());
                let call = kv.put(conn.request(put));
                answered(&conn.endpoint, self.cfg.request_timeout, call)
                    .await
                    .map(|_| ())
            }
            .await;
            match attempt {
                Ok(()) => {
                    tracing::info!(key = %self.self_key(), value = contents, "register member itself successfully");
                    return Ok(());
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => self.retry_backoff("register member itself", &e).await?,
            }
        }
    }

    /// Watches the members prefix from `rev + 1` until `size` are registered; a broken
    /// watch is re-established from the same revision.
    async fn wait_peers(
        &mut self,
        registry: &mut Registry,
        size: usize,
        rev: i64,
    ) -> Result<(), DiscoveryError> {
        tracing::info!(
            found_peers = registry.members.len(),
            needed_peers = size.saturating_sub(registry.members.len()),
            "waiting for peers from discovery service"
        );
        while registry.members.len() < size {
            self.notifier.status(&format!(
                "waiting for discovery: {} of {size} members registered",
                registry.members.len()
            ));
            match self.watch_until(registry, size, rev).await {
                Ok(()) => {}
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => self.retry_backoff("watch members", &e).await?,
            }
        }
        tracing::info!(
            found_peers = registry.members.len(),
            "found all needed peers from discovery service"
        );
        Ok(())
    }

    async fn watch_until(
        &mut self,
        registry: &mut Registry,
        size: usize,
        rev: i64,
    ) -> Result<(), Failure> {
        let conn = self.connection().await?;
        let prefix = members_prefix(&self.token).into_bytes();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                start_revision: rev + 1,
                ..Default::default()
            })),
        };
        // The request stream stays open (dropping it would end the watch).
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
        tx.send(create).await.expect("receiver alive");
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut stream = WatchClient::new(conn.channel.clone())
            .watch(conn.request(requests))
            .await
            .map_err(|s| Failure::Retry(format!("{}: watch: {}", conn.endpoint, s.message())))?
            .into_inner();
        while registry.members.len() < size {
            match stream.next().await {
                Some(Ok(resp)) => {
                    if resp.compact_revision > 0 || resp.canceled {
                        return Err(Failure::Retry(format!(
                            "watch canceled: {} (compact revision {})",
                            resp.cancel_reason, resp.compact_revision
                        )));
                    }
                    for ev in resp.events {
                        if let Some(kv) = ev.kv {
                            registry.add(&kv);
                        }
                    }
                }
                Some(Err(s)) => {
                    return Err(Failure::Retry(format!(
                        "{}: watch: {}",
                        conn.endpoint,
                        s.message()
                    )));
                }
                None => return Err(Failure::Retry(format!("{}: watch closed", conn.endpoint))),
            }
        }
        drop(tx);
        Ok(())
    }

    /// etcd's `joinCluster`: the first N registrations by create revision.
    pub async fn join_cluster(&mut self, contents: &str) -> Result<Vec<String>, DiscoveryError> {
        self.check_cluster().await?;
        self.register_self(contents).await?;
        let (mut registry, size, rev) = self.check_cluster().await?;
        self.wait_peers(&mut registry, size, rev).await?;
        registry.members.truncate(size);
        Ok(registry.members.into_iter().map(|m| m.value).collect())
    }
}

/// The configuration with `initial_cluster` from the v3 discovery service, and the
/// discovery token as the member-ID token.
pub async fn discover(cfg: &Config) -> Result<Config, DiscoveryError> {
    let id = member_id(&cfg.initial_advertise_peer_urls, &cfg.discovery_token, None);
    let own = InitialCluster::from_name(&cfg.name, &cfg.initial_advertise_peer_urls).to_string();
    let mut d = Discovery::new(cfg, id);
    tracing::info!(
        endpoints = %cfg.discovery_endpoints,
        member_id = %format!("{id:x}"),
        "joining v3 discovery cluster"
    );
    let result = d.join_cluster(&own).await;
    let values = match result {
        Ok(v) => {
            tracing::info!("discovery joined cluster successfully");
            v
        }
        Err(e) => {
            tracing::warn!(error = %e, "discovery failed to join cluster");
            return Err(e);
        }
    };
    let size = values.len();
    let cluster = nodes_to_cluster(&values, size).map_err(|e| match e {
        DiscoveryError::InvalidUrl => DiscoveryError::InvalidPeerUrl,
        other => other,
    })?;
    discovered_config(cfg, cluster, &cfg.discovery_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(size_key("tok"), "/_etcd/registry/tok/_config/size");
        assert_eq!(members_prefix("tok"), "/_etcd/registry/tok/members");
        assert_eq!(prefix_end(b"/a/members"), b"/a/membert".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn registry_skips_what_etcd_skips_and_sorts_by_create_revision() {
        let kv = |k: &str, v: &str, rev: i64| KeyValue {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        };
        let mut r = Registry::new("t");
        r.add(&kv(
            "/_etcd/registry/t/members/b",
            "b=http://10.0.0.2:2380",
            9,
        ));
        r.add(&kv(
            "/_etcd/registry/t/members/a",
            "a=http://10.0.0.1:2380",
            5,
        ));
        r.add(&kv(
            "/_etcd/registry/t/members/a",
            "a=http://10.0.0.1:2380",
            5,
        ));
        r.add(&kv("/_etcd/registry/t/members/c", "garbage", 11));
        r.add(&kv("/elsewhere/x", "x=http://10.0.0.3:2380", 12));
        let keys: Vec<&str> = r.members.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/_etcd/registry/t/members/a", "/_etcd/registry/t/members/b"]
        );
    }
}
