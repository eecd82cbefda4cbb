//! etcd's v2 discovery protocol (`--discovery <url>`), request for request as etcd
//! 3.5's `v2discovery` sends them, so that either implementation's members can share a
//! token.
//!
//! The discovery URL `D` names a directory on a v2 keys API: the client talks to
//! `scheme://host` and uses the URL's whole path as the directory (no `/v2/keys` is
//! added). Steps: read `D/_config/size` (N); list `D` and fail fast when N others
//! already registered; register `D/<member id hex>` create-only with
//! `value=<name>=<peer url>[,…]`; wait until that key is visible; list again; watch `D`
//! recursively until N registrations are known; the first N by creation index are the
//! initial cluster.
//!
//! Retries follow etcd: requests that get no answer (or a 5xx) while checking the
//! cluster or waiting are retried after `2^min(retries, 8)` seconds, the count never
//! reset; the registration and every answer with a v2 error code are fatal.
//!
//! Two deliberate differences from etcd, both where etcd would form a broken cluster:
//! watch events under `_config/`, deletions and keys already known are not counted as
//! members (etcd appends every event's node).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::http_client::{Client, Response, TransportError};
use super::{DiscoveryError, backoff, discovered_config, nodes_to_cluster};
use crate::config::{Config, InitialCluster, member_id};
use crate::notify::Notifier;

/// etcd's v2 client default request timeout (none for watches).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's `nRetries`.
const MAX_RETRIES: u32 = u32::MAX;

/// One node of a v2 keys API answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub dir: bool,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default, rename = "createdIndex")]
    pub created_index: u64,
    #[serde(default, rename = "modifiedIndex")]
    pub modified_index: u64,
}

#[derive(Debug, Deserialize)]
struct KeysResponse {
    #[serde(default)]
    action: String,
    node: Node,
}

#[derive(Debug, Deserialize)]
struct KeysError {
    #[serde(rename = "errorCode")]
    code: u64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: String,
    #[serde(default)]
    index: u64,
}

/// A step that failed: retried (etcd's `ClusterError`) or final.
enum Failure {
    Retry(String),
    Fatal(DiscoveryError),
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        Failure::Retry(e.0)
    }
}

/// `path.Join("/", parts...)`: one slash between parts, no trailing slash, `.` and
/// `..` resolved.
pub fn join_path(parts: &[&str]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in parts {
        for seg in part.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
    }
    format!("/{}", out.join("/"))
}

/// The last path segment (`path.Base`).
fn base(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// `--discovery-proxy`: a bare `host:port` gets `http://` (etcd's `newProxyFunc`).
pub fn parse_proxy(proxy: &str) -> Result<Option<Url>, DiscoveryError> {
    if proxy.is_empty() {
        return Ok(None);
    }
    let parsed = match Url::parse(proxy) {
        Ok(u) if u.scheme().starts_with("http") && u.host_str().is_some() => Ok(u),
        first => Url::parse(&format!("http://{proxy}")).map_err(|_| match first {
            Err(e) => e.to_string(),
            Ok(_) => "unsupported proxy URL".to_string(),
        }),
    };
    match parsed {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(Some(u)),
        Ok(_) => Err(DiscoveryError::InvalidProxy {
            proxy: proxy.into(),
            reason: "missing host".into(),
        }),
        Err(reason) => Err(DiscoveryError::InvalidProxy {
            proxy: proxy.into(),
            reason,
        }),
    }
}

/// Checks `--discovery` before anything is sent: etcd would retry a URL it can never
/// reach (say `ftp://…` or `host:port/path`) forever.
pub fn parse_discovery_url(durl: &str) -> Result<Url, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadDiscoveryUrl {
        url: durl.into(),
        reason,
    };
    let u = Url::parse(durl).map_err(|e| bad(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad(format!("unsupported scheme {:?}", u.scheme())));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("missing host".into()));
    }
    if join_path(&[u.path()]) == "/" {
        return Err(bad("missing the token's directory in the path".into()));
    }
    Ok(u)
}

/// A v2 discovery session for one member.
pub struct Discovery {
    client: Client,
    /// The discovery directory: the URL's path, cleaned.
    cluster: String,
    id: u64,
    retries: u32,
    notifier: Notifier,
}

impl Discovery {
    pub fn new(durl: &str, proxy: &str, id: u64) -> Result<Self, DiscoveryError> {
        let u = parse_discovery_url(durl)?;
        let proxy = parse_proxy(proxy)?;
        if let Some(p) = &proxy {
            tracing::info!(proxy_url = %p, "running proxy with discovery");
        }
        let client = Client::new(&u, proxy).map_err(|e| DiscoveryError::Transport(e.0))?;
        Ok(Discovery {
            client,
            cluster: join_path(&[u.path()]),
            id,
            retries: 0,
            notifier: Notifier::from_env(),
        })
    }

    fn self_key(&self) -> String {
        join_path(&[&self.cluster, &format!("{:x}", self.id)])
    }

    /// etcd's `joinCluster`: the registrations of the first N members, joined with `,`.
    pub async fn join_cluster(&mut self, config: &str) -> Result<Vec<String>, DiscoveryError> {
        // Fast path: a full cluster fails before registering.
        self.check_cluster().await?;
        self.create_self(config).await?;
        let (nodes, size, index) = self.check_cluster().await?;
        let all = self.wait_nodes(nodes, size, index).await?;
        Ok(all.into_iter().map(|n| n.value).collect())
    }

    async fn send(
        &self,
        method: http::Method,
        key: &str,
        query: &str,
        form: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<(Response, u64), Failure> {
        let target = format!("{key}?{query}");
        let resp = self.client.request(method, &target, form, timeout).await?;
        if resp.status / 100 == 5 {
            return Err(Failure::Retry(match resp.status {
                500 | 503 => format!("client: etcd member {} has no leader", self.endpoint()),
                s => format!(
                    "client: etcd member {} returns server error [{}]",
                    self.endpoint(),
                    http::StatusCode::from_u16(s)
                        .ok()
                        .and_then(|c| c.canonical_reason())
                        .unwrap_or("unknown")
                ),
            }));
        }
        let index = resp
            .headers
            .get("X-Etcd-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((resp, index))
    }

    /// `scheme://host:port` as etcd's client names the endpoint.
    fn endpoint(&self) -> String {
        self.client
            .origin()
            .as_str()
            .trim_end_matches('/')
            .to_string()
    }

    /// A keys API answer: the node on success, the service's error otherwise.
    fn decode(resp: &Response) -> Result<Node, DiscoveryError> {
        if matches!(resp.status, 200 | 201) {
            return serde_json::from_slice::<KeysResponse>(&resp.body)
                .map(|r| {
                    let _ = r.action;
                    r.node
                })
                .map_err(|_| DiscoveryError::InvalidJson);
        }
        let e: KeysError =
            serde_json::from_slice(&resp.body).map_err(|_| DiscoveryError::InvalidJson)?;
        Err(DiscoveryError::Service {
            code: e.code,
            message: e.message,
            cause: e.cause,
            index: e.index,
        })
    }

    async fn get(&self, key: &str) -> Result<(Node, u64), Failure> {
        let (resp, index) = self
            .send(
                http::Method::GET,
                key,
                "quorum=false&recursive=false&sorted=false",
                None,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        Ok((Self::decode(&resp).map_err(Failure::Fatal)?, index))
    }

    /// `GET key?recursive=..&wait=true&waitIndex=..`, no timeout.
    async fn watch_next(
        &self,
        key: &str,
        wait_index: u64,
        recursive: bool,
    ) -> Result<Node, Failure> {
        let query = format!("recursive={recursive}&wait=true&waitIndex={wait_index}");
        let (resp, _) = self
            .send(http::Method::GET, key, &query, None, None)
            .await?;
        Self::decode(&resp).map_err(Failure::Fatal)
    }

    async fn retry_backoff(&mut self, step: &str) -> Result<(), DiscoveryError> {
        if self.retries == MAX_RETRIES {
            return Err(DiscoveryError::TooManyRetries);
        }
        self.retries += 1;
        let wait = backoff(self.retries);
        tracing::info!(url = step, backoff = ?wait, "retry connecting to discovery service");
        self.notifier.status(&format!(
            "discovery service unreachable ({step}); retrying in {}s",
            wait.as_secs()
        ));
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// etcd's `checkCluster` with its retries: registrations sorted by creation index,
    /// the size, and the index to watch after.
    async fn check_cluster(&mut self) -> Result<(Vec<Node>, usize, u64), DiscoveryError> {
        loop {
            match self.check_cluster_once().await {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => {
                    tracing::warn!(error = %e, "failed to get from discovery server");
                    self.retry_backoff("cluster status check").await?;
                }
            }
        }
    }

    async fn check_cluster_once(&self) -> Result<(Vec<Node>, usize, u64), Failure> {
        let config_key = join_path(&[&self.cluster, "_config"]);
        let size_key = join_path(&[&config_key, "size"]);
        let size = match self.get(&size_key).await {
            Ok((node, _)) => node.value,
            Err(Failure::Fatal(DiscoveryError::Service { code: 100, .. })) => {
                return Err(Failure::Fatal(DiscoveryError::SizeNotFound));
            }
            Err(Failure::Fatal(DiscoveryError::InvalidJson)) => {
                return Err(Failure::Fatal(DiscoveryError::BadDiscoveryEndpoint));
            }
            Err(e) => return Err(e),
        };
        let size: usize = size
            .parse::<u64>()
            .ok()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(Failure::Fatal(DiscoveryError::BadSizeKey))?;
        let (dir, index) = self.get(&self.cluster).await?;
        let mut nodes: Vec<Node> = dir
            .nodes
            .into_iter()
            .filter(|n| base(&n.key) != "_config")
            .collect();
        nodes.sort_by_key(|n| n.created_index);
        let own = format!("{:x}", self.id);
        for (i, n) in nodes.iter().enumerate() {
            if base(&n.key) == own {
                break;
            }
            // etcd: `uint64(i) >= size-1`, with size 0 wrapping around to "never".
            if size > 0 && i >= size - 1 {
                return Err(Failure::Fatal(DiscoveryError::FullCluster));
            }
        }
        Ok((nodes, size, index))
    }

    /// Registers this member create-only, then waits until the key is visible on the
    /// server it talks to. Any failure is final, as in etcd.
    async fn create_self(&self, contents: &str) -> Result<(), DiscoveryError> {
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("value", contents)
            .finish();
        let key = self.self_key();
        let node = match self
            .send(
                http::Method::PUT,
                &key,
                "prevExist=false",
                Some(form),
                Some(REQUEST_TIMEOUT),
            )
            .await
        {
            Ok((resp, _)) => match Self::decode(&resp) {
                Ok(node) => node,
                Err(DiscoveryError::Service { code: 105, .. }) => {
                    return Err(DiscoveryError::DuplicateId);
                }
                Err(e) => return Err(e),
            },
            Err(Failure::Retry(e)) => return Err(DiscoveryError::Transport(e)),
            Err(Failure::Fatal(e)) => return Err(e),
        };
        tracing::info!(key = %key, value = contents, "registered with discovery service");
        match self
            .watch_next(&key, node.created_index.max(1), false)
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Retry(e)) => Err(DiscoveryError::Transport(e)),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// etcd's `waitNodes` with its retries.
    async fn wait_nodes(
        &mut self,
        mut nodes: Vec<Node>,
        mut size: usize,
        mut index: u64,
    ) -> Result<Vec<Node>, DiscoveryError> {
        let own = format!("{:x}", self.id);
        loop {
            nodes.truncate(size);
            for n in &nodes {
                if base(&n.key) == own {
                    tracing::info!(self = %n.value, "found self from discovery server");
                } else {
                    tracing::info!(peer = %n.value, "found peer from discovery server");
                }
            }
            let mut all = std::mem::take(&mut nodes);
            let mut next = index + 1;
            let mut broken = None;
            while all.len() < size {
                tracing::info!(
                    found_peers = all.len(),
                    needed_peers = size - all.len(),
                    "found peers from discovery server; waiting for more"
                );
                self.notifier.status(&format!(
                    "waiting for discovery: {} of {size} members registered",
                    all.len()
                ));
                match self.watch_next(&self.cluster, next, true).await {
                    Ok(node) => {
                        next = node.modified_index.max(next) + 1;
                        if !self.counts_as_member(&node, &all) {
                            continue;
                        }
                        tracing::info!(peer = %node.value, "found peer from discovery server");
                        all.push(node);
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Retry(e)) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            match broken {
                None => {
                    tracing::info!(
                        found_peers = all.len(),
                        "found all peers from discovery server"
                    );
                    return Ok(all);
                }
                Some(e) => {
                    tracing::warn!(error = %e, "error while waiting for peers");
                    self.retry_backoff("waiting for other nodes").await?;
                    (nodes, size, index) = self.check_cluster().await?;
                }
            }
        }
    }

    /// Whether a watch event is a new registration (see the module docs).
    fn counts_as_member(&self, node: &Node, known: &[Node]) -> bool {
        let config_prefix = join_path(&[&self.cluster, "_config"]);
        !node.dir
            && !node.value.is_empty()
            && node.key != config_prefix
            && !node.key.starts_with(&format!("{config_prefix}/"))
            && !known.iter().any(|k| k.key == node.key)
    }
}

/// The configuration with `initial_cluster` from the discovery service at
/// `--discovery`, and the discovery URL as the member-ID token (as etcd does).
pub async fn discover(cfg: &Config) -> Result<Config, DiscoveryError> {
    let durl = cfg.discovery.as_str();
    let id = member_id(&cfg.initial_advertise_peer_urls, durl, None);
    let own = InitialCluster::from_name(&cfg.name, &cfg.initial_advertise_peer_urls).to_string();
    let mut d = Discovery::new(durl, &cfg.discovery_proxy, id)?;
    tracing::info!(discovery_url = durl, member_id = %format!("{id:x}"), "joining discovery cluster");
    let values = d.join_cluster(&own).await?;
    let size = values.len();
    let cluster = nodes_to_cluster(&values, size)?;
    discovered_config(cfg, cluster, durl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_as_go_path_join() {
        assert_eq!(
            join_path(&["/v2/keys/_etcd/registry/abc/", "_config"]),
            "/v2/keys/_etcd/registry/abc/_config"
        );
        assert_eq!(join_path(&["//a//b/", "c"]), "/a/b/c");
        assert_eq!(join_path(&["/a/./b/..", "c"]), "/a/c");
        assert_eq!(base("/a/b/_config"), "_config");
    }

    #[test]
    fn proxy_addresses_get_http_when_bare() {
        assert_eq!(
            parse_proxy("127.0.0.1:3128").unwrap().unwrap().as_str(),
            "http://127.0.0.1:3128/"
        );
        assert_eq!(
            parse_proxy("localhost:3128").unwrap().unwrap().as_str(),
            "http://localhost:3128/"
        );
        assert_eq!(
            parse_proxy("http://p.example:8080")
                .unwrap()
                .unwrap()
                .as_str(),
            "http://p.example:8080/"
        );
        assert!(parse_proxy("").unwrap().is_none());
        assert!(parse_proxy("[::1").is_err());
    }

    #[test]
    fn discovery_urls_are_checked_before_use() {
        for bad in [
            "127.0.0.1:2379/v2/keys/x",
            "ftp://127.0.0.1/v2/keys/x",
            "http://127.0.0.1:2379/",
            "not a url",
        ] {
            let e = parse_discovery_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid discovery URL"), "{bad}: {e}");
        }
        parse_discovery_url("https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de")
            .unwrap();
    }

    #[test]
    fn member_ids_hash_the_full_discovery_url() {
        // etcd: PeerURLsMapAndToken gives token = the --discovery string as given.
        let durl = "http://127.0.0.1:2379/v2/keys/_etcd/registry/tok";
        let urls = vec![Url::parse("http://10.0.1.10:2380").unwrap()];
        let by_hand = {
            use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
            let d = digest(
                &SHA1_FOR_LEGACY_USE_ONLY,
                format!("http://10.0.1.10:2380{durl}").as_bytes(),
            );
            u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap())
        };
        assert_eq!(member_id(&urls, durl, None), by_hand);
        assert_ne!(member_id(&urls, "tok", None), by_hand);
    }

    #[test]
    fn answers_decode_as_etcds_client_reads_them() {
        let ok = Response {
            status: 200,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(
                br#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[{"key":"/d/1","value":"a=http://1.2.3.4:2380","modifiedIndex":7,"createdIndex":7}],"modifiedIndex":5,"createdIndex":5}}"#,
            ),
        };
        let node = Discovery::decode(&ok).unwrap();
        assert_eq!(node.nodes[0].created_index, 7);
        let exists = Response {
            status: 412,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(
                br#"{"errorCode":105,"message":"Key already exists","cause":"/d/1","index":9}"#,
            ),
        };
        assert_eq!(
            Discovery::decode(&exists).unwrap_err().to_string(),
            "105: Key already exists (/d/1) [9]"
        );
        let html = Response {
            status: 200,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"<html>"),
        };
        assert_eq!(
            Discovery::decode(&html).unwrap_err(),
            DiscoveryError::InvalidJson
        );
    }
}
