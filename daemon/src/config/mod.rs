//! etcd's configuration: flags, their `ETCD_*` environment twins, defaults, and the
//! validation etcd does at start-up, with etcd's error texts.
//!
//! Parsing turns arguments and environment into one [`Config`]; [`Config::validate`]
//! checks what etcd checks for every start; [`Config::validate_new_cluster`] adds what
//! etcd checks only when bootstrapping a new member. The provisioning tool uses the same
//! type to check what it renders.

mod flags;
mod ids;
mod initial_cluster;
mod urls;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use flags::{FLAGS, command, env_name};
pub use ids::{cluster_id, member_id};
pub use initial_cluster::InitialCluster;
pub use urls::{check_bind_url, parse_url_list, url_string};

use flags::{Kind, lookup, normalize_args, parse_bool};

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Panic,
    Fatal,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }
}

/// `--log-format`: etcd 3.6's, JSON lines by default as etcd logs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    /// Tab-separated: time, level, caller, message, then the fields as JSON.
    Console,
}

/// One of `--log-outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// systemd's journal, through its native socket.
    Journal,
    /// A file, appended to.
    File(PathBuf),
}

/// Client or peer TLS settings, as given. Behaviour comes with TLS support; until then
/// they are parsed so that etcd configurations load and scheme rules can be checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    pub cert_file: String,
    pub key_file: String,
    pub client_cert_auth: bool,
    pub trusted_ca_file: String,
    pub crl_file: String,
    pub allowed_hostname: String,
    pub allowed_cn: String,
    pub auto_tls: bool,
    /// Certificate and key presented when this member dials out (peers) instead of
    /// `cert_file`/`key_file`; both or neither.
    pub client_cert_file: String,
    pub client_key_file: String,
    /// Peer side only: accept a peer whose certificate's SANs do not cover the address
    /// it connects from (etcd §6.4 check off).
    pub skip_client_san_verification: bool,
}

impl TlsFlags {
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_empty() && self.key_file.is_empty() && !self.auto_tls
    }
}

/// etcd 3.6's v3 discovery client settings (`--discovery-*` besides token and
/// endpoints): how to reach the backing cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryClient {
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    /// Plaintext gRPC unless false (or a certificate, key or CA is given).
    pub insecure_transport: bool,
    pub insecure_skip_tls_verify: bool,
    pub cert: String,
    pub key: String,
    pub cacert: String,
    /// `user` or `user:password`.
    pub user: String,
    pub password: String,
}

/// A member's whole configuration, with etcd's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub listen_metrics_urls: Vec<Url>,
    pub initial_cluster: InitialCluster,
    /// Whether `--initial-cluster` was given (flag or environment).
    pub initial_cluster_set: bool,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// One Raft tick. Default 100 ms.
    pub heartbeat_interval: Duration,
    /// Default 1000 ms; at least five heartbeats, at most 50 s.
    pub election_timeout: Duration,
    pub initial_election_tick_advance: bool,
    /// Applied entries between Raft log compactions. Default 10000 (etcd 3.6's).
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    /// 0 means etcd's default of 2 GiB; negative disables the quota.
    pub quota_backend_bytes: i64,
    /// Largest accepted request, in bytes. Default 1.5 MiB.
    pub max_request_bytes: u32,
    pub max_txn_ops: u32,
    pub pre_vote: bool,
    pub strict_reconfig_check: bool,
    /// `--force-new-cluster`: restart this member's data as a one-member cluster.
    pub force_new_cluster: bool,
    pub max_learners: u32,
    /// `--auth-token`: `simple` or `jwt,<options>` (see `auth::jwt`).
    pub auth_token: String,
    /// `--auth-token-ttl`: how long a simple token lives without use.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost`: the cost of password hashes.
    pub bcrypt_cost: u32,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// `--log-outputs`, `default` resolved to stderr; never empty.
    pub log_outputs: Vec<LogOutput>,
    /// `--metrics`.
    pub metrics: crate::metrics::MetricsLevel,
    /// `--discovery`: a v2 discovery URL (the directory of the token on a service
    /// that speaks the v2 keys API).
    pub discovery: String,
    /// `--discovery-fallback`; only `exit` is supported (validated).
    pub discovery_fallback: String,
    /// `--discovery-proxy`: HTTP proxy for v2 discovery traffic.
    pub discovery_proxy: String,
    /// `--enable-v2`: serve the v2 keys API subset used by v2 discovery.
    pub enable_v2: bool,
    pub discovery_srv: String,
    pub discovery_srv_name: String,
    pub discovery_token: String,
    pub discovery_endpoints: String,
    pub discovery_client: DiscoveryClient,
    pub client_tls: TlsFlags,
    pub peer_tls: TlsFlags,
    pub self_signed_cert_validity_years: u32,
    pub cipher_suites: String,
    pub tls_min_version: String,
    pub tls_max_version: String,
    /// How often watchers that asked for progress notifications get one. Default 10m.
    pub watch_progress_notify_interval: Duration,
    /// `--experimental-initial-corrupt-check`: compare the key space's hash with the
    /// peers' before serving, on a restart from existing data.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares hashes
    /// with every member; zero (the default) turns the periodic check off.
    pub corrupt_check_time: Duration,
}

/// What the command line asks for.
pub enum Parsed {
    Run {
        config: Box<Config>,
        /// Things etcd warns about at start-up (unknown `ETCD_*` variables, ...).
        warnings: Vec<String>,
    },
    Version,
    Help(String),
}

/// A configuration etcd would refuse, with etcd's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A command-line problem Go's flag package reports (exit 2).
    #[error("{0}")]
    Usage(String),
    /// An environment variable with a value that does not parse.
    #[error("invalid value {value:?} for {var}: {reason}")]
    InvalidEnv {
        var: String,
        value: String,
        reason: String,
    },
    #[error(
        "conflicting environment variable {0:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
    )]
    ShadowedEnv(String),
    /// Start-up validation failed (exit 1).
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// etcd exits 2 for command-line syntax errors (Go's flag package) and 1 for
    /// everything found afterwards.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Raw flag values by name, after command line and environment.
struct Values {
    values: BTreeMap<&'static str, String>,
    /// Flags that came from the environment, with their variable.
    from_env: BTreeMap<&'static str, String>,
}

impl Values {
    fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    fn raw(&self, name: &'static str) -> &str {
        match self.values.get(name) {
            Some(v) => v,
            None => lookup(name).map_or("", |f| f.default),
        }
    }

    fn invalid(&self, name: &'static str, reason: String) -> ConfigError {
        let value = self.raw(name).to_string();
        match self.from_env.get(name) {
            Some(var) => ConfigError::InvalidEnv {
                var: var.clone(),
                value,
                reason,
            },
            None => ConfigError::Usage(format!(
                "invalid value {value:?} for flag -{name}: {reason}"
            )),
        }
    }

    fn text(&self, name: &'static str) -> String {
        self.raw(name).to_string()
    }

    fn bool(&self, name: &'static str) -> Result<bool, ConfigError> {
        parse_bool(self.raw(name)).map_err(|e| self.invalid(name, e))
    }

    fn uint(&self, name: &'static str) -> Result<u64, ConfigError> {
        self.raw(name)
            .parse::<u64>()
            .map_err(|_| self.invalid(name, "parse error".into()))
    }

    fn int(&self, name: &'static str) -> Result<i64, ConfigError> {
        self.raw(name)
            .parse::<i64>()
            .map_err(|_| self.invalid(name, "parse error".into()))
    }

    /// A Go duration (`10m`, `1.5s`, `250ms`, `1h30m`).
    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        parse_go_duration(self.raw(name)).ok_or_else(|| self.invalid(name, "parse error".into()))
    }

    fn urls(&self, name: &'static str) -> Result<Vec<Url>, ConfigError> {
        parse_url_list(self.raw(name)).map_err(|e| self.invalid(name, e))
    }
}

impl Config {
    /// Parses etcd-style arguments (`args[0]` is the program) and `ETCD_*` variables.
    pub fn parse<I, S>(args: I, env: &[(String, String)]) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.into().to_string_lossy().into_owned())
            .collect();
        let matches = command()
            .try_get_matches_from(normalize_args(args))
            .map_err(clap_error)?;
        if matches.get_flag("help") {
            return Ok(Parsed::Help(command().render_long_help().to_string()));
        }
        if matches.get_flag("version") {
            return Ok(Parsed::Version);
        }
        let mut values = Values {
            values: BTreeMap::new(),
            from_env: BTreeMap::new(),
        };
        for f in FLAGS {
            if let Some(v) = matches.get_one::<String>(f.name) {
                values.values.insert(f.name, v.clone());
            }
        }
        let mut warnings = Vec::new();
        apply_env(&mut values, env, &mut warnings)?;
        let config = Config::from_values(&values, &mut warnings)?;
        Ok(Parsed::Run {
            config: Box::new(config),
            warnings,
        })
    }

    fn from_values(v: &Values, warnings: &mut Vec<String>) -> Result<Self, ConfigError> {
        let name = v.text("name");
        if name == "default" {
            warnings.push(
                "it isn't recommended to use default name, please set a value for --name. Note that etcd might run into issue when multiple members have the same default name".into(),
            );
        }
        let data_dir = match v.text("data-dir") {
            d if d.is_empty() => PathBuf::from(format!("{name}.etcd")),
            d => PathBuf::from(d),
        };
        let initial_advertise_peer_urls = v.urls("initial-advertise-peer-urls")?;
        let listen_client_urls = v.urls("listen-client-urls")?;
        // etcd clears the advertise default when listen URLs are set explicitly, and
        // then refuses to start (see validate).
        let advertise_client_urls =
            if v.is_set("listen-client-urls") && !v.is_set("advertise-client-urls") {
                Vec::new()
            } else {
                v.urls("advertise-client-urls")?
            };
        let initial_cluster_text = v.text("initial-cluster");
        let mut initial_cluster = InitialCluster::parse(&initial_cluster_text)
            .map_err(|e| v.invalid("initial-cluster", e))?;
        // As etcd: a non-default name with the untouched default cluster forms a
        // one-member cluster of this member's advertised peer URLs.
        let default_cluster = lookup("initial-cluster").map_or("", |f| f.default);
        if name != "default" && initial_cluster_text == default_cluster {
            initial_cluster = InitialCluster::from_name(&name, &initial_advertise_peer_urls);
        }
        let discovery_set = [
            "discovery",
            "discovery-srv",
            "discovery-srv-name",
            "discovery-endpoints",
            "discovery-token",
        ]
        .iter()
        .any(|f| v.is_set(f));
        if discovery_set && !v.is_set("initial-cluster") {
            initial_cluster = InitialCluster::default();
        }
        let initial_cluster_state = match v.raw("initial-cluster-state") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                let reason = format!(
                    "invalid value {other:?} for flag -initial-cluster-state: valid values are \"new\" or \"existing\""
                );
                return Err(match v.from_env.get("initial-cluster-state") {
                    Some(var) => ConfigError::InvalidEnv {
                        var: var.clone(),
                        value: other.into(),
                        reason,
                    },
                    None => ConfigError::Usage(reason),
                });
            }
        };
        let log_level = match v.raw("log-level") {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "panic" | "dpanic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown log level {other:?}: only supports debug, info, warn, error, panic, or fatal"
                )));
            }
        };
        let log_format = match v.raw("log-format") {
            "json" | "" => LogFormat::Json,
            "console" => LogFormat::Console,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown log format: {other}, supported values json, console"
                )));
            }
        };
        match v.raw("logger") {
            "zap" => {}
            "capnslog" => {
                return Err(ConfigError::Invalid(
                    "--logger=capnslog is removed in v3.5".into(),
                ));
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown logger option {other:?}"
                )));
            }
        }
        let log_outputs = parse_log_outputs(v.raw("log-outputs"))?;
        let metrics = match v.raw("metrics") {
            "basic" => crate::metrics::MetricsLevel::Basic,
            "extensive" => crate::metrics::MetricsLevel::Extensive,
            other => {
                return Err(v.invalid(
                    "metrics",
                    format!("unknown metrics level {other:?}: only supports basic or extensive"),
                ));
            }
        };
        let max_request_bytes = u32::try_from(v.uint("max-request-bytes")?)
            .map_err(|_| v.invalid("max-request-bytes", "value out of range".into()))?;
        let max_txn_ops = u32::try_from(v.uint("max-txn-ops")?)
            .map_err(|_| v.invalid("max-txn-ops", "value out of range".into()))?;
        for ignored in ["wal-dir"] {
            if v.is_set(ignored) {
                warnings.push(format!(
                    "--{ignored} is accepted for etcd compatibility but has no effect in qetcd"
                ));
            }
        }
        if v.raw("auto-compaction-retention") != "0" {
            return Err(ConfigError::Invalid(
                "--auto-compaction-retention is not supported by this version of qetcd; compact with the Compact API".into(),
            ));
        }
        let client_tls = TlsFlags {
            cert_file: v.text("cert-file"),
            key_file: v.text("key-file"),
            client_cert_auth: v.bool("client-cert-auth")?,
            trusted_ca_file: v.text("trusted-ca-file"),
            crl_file: v.text("client-crl-file"),
            allowed_hostname: v.text("client-cert-allowed-hostname"),
            allowed_cn: String::new(),
            auto_tls: v.bool("auto-tls")?,
            client_cert_file: v.text("client-cert-file"),
            client_key_file: v.text("client-key-file"),
            skip_client_san_verification: false,
        };
        let peer_tls = TlsFlags {
            cert_file: v.text("peer-cert-file"),
            key_file: v.text("peer-key-file"),
            client_cert_auth: v.bool("peer-client-cert-auth")?,
            trusted_ca_file: v.text("peer-trusted-ca-file"),
            crl_file: v.text("peer-crl-file"),
            allowed_hostname: v.text("peer-cert-allowed-hostname"),
            allowed_cn: v.text("peer-cert-allowed-cn"),
            auto_tls: v.bool("peer-auto-tls")?,
            client_cert_file: v.text("peer-client-cert-file"),
            client_key_file: v.text("peer-client-key-file"),
            skip_client_san_verification: v.bool("peer-skip-client-san-verification")?
                || v.bool("experimental-peer-skip-client-san-verification")?,
        };
        Ok(Config {
            name,
            data_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls: v.urls("listen-peer-urls")?,
            initial_advertise_peer_urls,
            listen_metrics_urls: v.urls("listen-metrics-urls")?,
            initial_cluster,
            initial_cluster_set: v.is_set("initial-cluster"),
            initial_cluster_state,
            initial_cluster_token: v.text("initial-cluster-token"),
            heartbeat_interval: Duration::from_millis(v.uint("heartbeat-interval")?),
            election_timeout: Duration::from_millis(v.uint("election-timeout")?),
            initial_election_tick_advance: v.bool("initial-election-tick-advance")?,
            snapshot_count: v.uint("snapshot-count")?,
            snapshot_catchup_entries: v.uint("snapshot-catchup-entries")?,
            quota_backend_bytes: v.int("quota-backend-bytes")?,
            max_request_bytes,
            max_txn_ops,
            pre_vote: v.bool("pre-vote")?,
            strict_reconfig_check: v.bool("strict-reconfig-check")?,
            force_new_cluster: v.bool("force-new-cluster")?,
            max_learners: v.uint("max-learners")? as u32,
            auth_token: v.text("auth-token"),
            auth_token_ttl: Duration::from_secs(v.uint("auth-token-ttl")?),
            bcrypt_cost: v.uint("bcrypt-cost")? as u32,
            log_level,
            log_format,
            log_outputs,
            metrics,
            discovery: v.text("discovery"),
            discovery_fallback: v.text("discovery-fallback"),
            discovery_proxy: v.text("discovery-proxy"),
            enable_v2: v.bool("enable-v2")?,
            discovery_srv: v.text("discovery-srv"),
            discovery_srv_name: v.text("discovery-srv-name"),
            discovery_token: v.text("discovery-token"),
            discovery_endpoints: v.text("discovery-endpoints"),
            discovery_client: DiscoveryClient {
                dial_timeout: v.duration("discovery-dial-timeout")?,
                request_timeout: v.duration("discovery-request-timeout")?,
                keepalive_time: v.duration("discovery-keepalive-time")?,
                keepalive_timeout: v.duration("discovery-keepalive-timeout")?,
                insecure_transport: v.bool("discovery-insecure-transport")?,
                insecure_skip_tls_verify: v.bool("discovery-insecure-skip-tls-verify")?,
                cert: v.text("discovery-cert"),
                key: v.text("discovery-key"),
                cacert: v.text("discovery-cacert"),
                user: v.text("discovery-user"),
                password: v.text("discovery-password"),
            },
            client_tls,
            peer_tls,
            self_signed_cert_validity_years: v.uint("self-signed-cert-validity")? as u32,
            cipher_suites: v.text("cipher-suites"),
            tls_min_version: v.text("tls-min-version"),
            tls_max_version: v.text("tls-max-version"),
            watch_progress_notify_interval: v
                .duration("experimental-watch-progress-notify-interval")?,
            initial_corrupt_check: v.bool("experimental-initial-corrupt-check")?,
            corrupt_check_time: v.duration("experimental-corrupt-check-time")?,
        })
    }

    /// Raft ticks in an election timeout.
    pub fn election_ticks(&self) -> usize {
        let hb = self.heartbeat_interval.as_millis().max(1);
        (self.election_timeout.as_millis() / hb) as usize
    }
}

/// `--log-outputs` as etcd reads it: comma-separated; `default` is stderr and stands
/// alone; `systemd/journal` goes with nothing but `default`; anything else is a file.
fn parse_log_outputs(raw: &str) -> Result<Vec<LogOutput>, ConfigError> {
    let given: Vec<&str> = raw.split(',').filter(|o| !o.is_empty()).collect();
    if given.len() > 1 && given.contains(&"default") {
        return Err(ConfigError::Invalid(
            "multi logoutput for \"default\" is not supported yet".into(),
        ));
    }
    if given.len() > 1 && given.contains(&"systemd/journal") {
        let quoted: Vec<String> = given.iter().map(|o| format!("{o:?}")).collect();
        return Err(ConfigError::Invalid(format!(
            "running with systemd/journal but other '--log-outputs' values ([{}]) are configured with 'default'; override 'default' value with something else",
            quoted.join(" ")
        )));
    }
    let mut outputs: Vec<LogOutput> = Vec::new();
    for o in given {
        let output = match o {
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            "systemd/journal" => LogOutput::Journal,
            path => LogOutput::File(PathBuf::from(path)),
        };
        // etcd merges repeated outputs.
        if !outputs.contains(&output) {
            outputs.push(output);
        }
    }
    if outputs.is_empty() {
        outputs.push(LogOutput::Stderr);
    }
    Ok(outputs)
}

/// etcd's environment rules: a variable applies only to a flag not given on the command
/// line, and giving both is fatal; empty values are ignored; unknown `ETCD_*` names warn.
fn apply_env(
    values: &mut Values,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(suffix) = var.strip_prefix("ETCD_") else {
            continue;
        };
        let Some(flag) = FLAGS
            .iter()
            .find(|f| f.name.to_uppercase().replace('-', "_") == suffix)
        else {
            if !matches!(var.as_str(), "ETCD_UNSUPPORTED_ARCH") {
                warnings.push(format!("unrecognized environment variable {var}={value}"));
            }
            continue;
        };
        if values.values.contains_key(flag.name) && !values.from_env.contains_key(flag.name) {
            return Err(ConfigError::ShadowedEnv(var.clone()));
        }
        if value.is_empty() {
            continue;
        }
        if flag.kind == Kind::Bool && parse_bool(value).is_err() {
            return Err(ConfigError::InvalidEnv {
                var: var.clone(),
                value: value.clone(),
                reason: "parse error".into(),
            });
        }
        values.values.insert(flag.name, value.clone());
        values.from_env.insert(flag.name, var.clone());
    }
    Ok(())
}

/// Go's flag package wording for what clap reports.
fn clap_error(e: clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(s)) => s.join(" "),
        _ => String::new(),
    };
    let arg = context(ContextKind::InvalidArg);
    let flag = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('-');
    let flag = flag.split('=').next().unwrap_or(flag).to_string();
    ConfigError::Usage(match e.kind() {
        ErrorKind::UnknownArgument => {
            if arg.starts_with('-') {
                format!("flag provided but not defined: -{flag}")
            } else {
                format!("{arg:?} is not a valid flag")
            }
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals => {
            format!("flag needs an argument: -{flag}")
        }
        _ => e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    })
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// Go's `time.ParseDuration` for the units etcd's duration flags use.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Some(Duration::from_secs_f64(total))
}

/// etcd's default backend quota, used for `--quota-backend-bytes 0`: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// Above this etcd warns that the quota "exceeds the maximum value": 8 GiB.
pub const MAX_QUOTA_BYTES: u64 = 8 << 30;

/// The backend quota `--quota-backend-bytes` asks for, as etcd reads it: 0 means the
/// default of 2 GiB, a negative value disables the quota (`None`). Logs etcd's message
/// for the choice, with its warning for quotas above 8 GiB.
pub fn backend_quota(flag: i64) -> Option<u64> {
    let quota = match flag {
        f if f < 0 => {
            tracing::info!(quota_size_bytes = flag, "disabled backend quota");
            return None;
        }
        0 => {
            tracing::info!(
                quota_size_bytes = DEFAULT_QUOTA_BYTES,
                "enabled backend quota with default value"
            );
            DEFAULT_QUOTA_BYTES
        }
        f => f as u64,
    };
    if quota > MAX_QUOTA_BYTES {
        tracing::warn!(
            quota_size_bytes = quota,
            quota_maximum_size_bytes = MAX_QUOTA_BYTES,
            "quota exceeds the maximum value"
        );
    } else if flag != 0 {
        tracing::info!(quota_size_bytes = quota, "enabled backend quota");
    }
    Some(quota)
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("abc"), None);
    }
}
