//! TEMPORARY stand-in until the real config module lands.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}
#[derive(Debug, Clone, Copy)]
pub struct LogLevel;
impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        "info"
    }
}
#[derive(Debug, Clone, Default)]
pub struct InitialCluster(pub BTreeMap<String, Vec<Url>>);
impl InitialCluster {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<Url>)> {
        self.0.iter()
    }
}
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: InitialCluster,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub quota_backend_bytes: i64,
    pub max_request_bytes: u32,
    pub max_txn_ops: u32,
    pub pre_vote: bool,
    pub log_level: LogLevel,
}
pub enum Parsed {
    Run {
        config: Config,
        warnings: Vec<String>,
    },
    Version,
    Help(String),
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);
impl ConfigError {
    pub fn exit_code(&self) -> i32 {
        2
    }
}
impl Config {
    pub fn parse<I, S>(args: I, _env: &[(String, String)]) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.into().into_string().unwrap())
            .collect();
        let mut m = BTreeMap::new();
        let mut i = 1;
        while i < args.len() {
            let a = args[i].trim_start_matches('-').to_string();
            if let Some((k, v)) = a.split_once('=') {
                m.insert(k.to_string(), v.to_string());
                i += 1;
            } else {
                m.insert(a, args.get(i + 1).cloned().unwrap_or_default());
                i += 2;
            }
        }
        let g = |k: &str, d: &str| m.get(k).cloned().unwrap_or(d.to_string());
        let urls = |s: String| {
            s.split(',')
                .map(|u| Url::parse(u).unwrap())
                .collect::<Vec<_>>()
        };
        let name = g("name", "default");
        let mut ic = InitialCluster::default();
        for item in g("initial-cluster", &format!("{name}=http://localhost:2380")).split(',') {
            let (n, u) = item.split_once('=').unwrap();
            ic.0.entry(n.to_string())
                .or_default()
                .push(Url::parse(u).unwrap());
        }
        let hb: u64 = g("heartbeat-interval", "100").parse().unwrap();
        let el: u64 = g("election-timeout", "1000").parse().unwrap();
        Ok(Parsed::Run {
            warnings: vec![],
            config: Config {
                data_dir: PathBuf::from(g("data-dir", &format!("{name}.etcd"))),
                listen_client_urls: urls(g("listen-client-urls", "http://localhost:2379")),
                advertise_client_urls: urls(g("advertise-client-urls", "http://localhost:2379")),
                listen_peer_urls: urls(g("listen-peer-urls", "http://localhost:2380")),
                initial_advertise_peer_urls: urls(g(
                    "initial-advertise-peer-urls",
                    "http://localhost:2380",
                )),
                initial_cluster: ic,
                initial_cluster_state: ClusterState::New,
                initial_cluster_token: g("initial-cluster-token", "etcd-cluster"),
                heartbeat_interval: Duration::from_millis(hb),
                election_timeout: Duration::from_millis(el),
                snapshot_count: g("snapshot-count", "10000").parse().unwrap(),
                snapshot_catchup_entries: 5000,
                quota_backend_bytes: 0,
                max_request_bytes: 1572864,
                max_txn_ops: 128,
                pre_vote: true,
                log_level: LogLevel,
                name,
            },
        })
    }
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout.as_millis() / self.heartbeat_interval.as_millis()) as usize
    }
}
pub fn url_string(u: &Url) -> String {
    u.as_str().trim_end_matches('/').to_string()
}
pub fn member_id(urls: &[Url], token: &str, _now: Option<u64>) -> u64 {
    let mut s: Vec<String> = urls.iter().map(url_string).collect();
    s.sort();
    let mut b = s.concat();
    b.push_str(token);
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b.as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap())
}
pub fn cluster_id(ids: &[u64]) -> u64 {
    let mut ids = ids.to_vec();
    ids.sort();
    let b: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &b);
    u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap())
}
