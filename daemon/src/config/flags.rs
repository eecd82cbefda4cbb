//! Every flag qetcd accepts, with its `ETCD_*` twin, default and help; and the command
//! line syntax of Go's `flag` package (`-name x`, `--name=x`, bare booleans).

use clap::{Arg, ArgAction, Command};

/// How a flag's text value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Go's strconv.ParseBool; given without a value it means true.
    Bool,
    /// Unsigned integer.
    Uint,
    /// Signed integer.
    Int,
    /// Comma-separated URL list with etcd's URL grammar.
    Urls,
}

pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub group: &'static str,
    pub help: &'static str,
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const SECURITY: &str = "Security";
const LOGGING: &str = "Logging";
const OTHER: &str = "Other";

macro_rules! flag {
    ($name:literal, $kind:ident, $default:literal, $group:ident, $help:literal) => {
        Flag {
            name: $name,
            kind: Kind::$kind,
            default: $default,
            group: $group,
            help: $help,
        }
    };
}

/// The flags, in the order `--help` lists them.
pub const FLAGS: &[Flag] = &[
    flag!(
        "name",
        Text,
        "default",
        MEMBER,
        "Human-readable name for this member."
    ),
    flag!(
        "data-dir",
        Text,
        "",
        MEMBER,
        "Path to the data directory. Default: ${name}.etcd."
    ),
    flag!(
        "wal-dir",
        Text,
        "",
        MEMBER,
        "Accepted for etcd compatibility; qetcd keeps its log inside the data directory."
    ),
    flag!(
        "snapshot-count",
        Uint,
        "10000",
        MEMBER,
        "Number of applied Raft entries between compactions of the Raft log."
    ),
    flag!(
        "snapshot-catchup-entries",
        Uint,
        "5000",
        MEMBER,
        "Number of entries kept behind the applied index at log compaction, for slow followers to catch up from."
    ),
    flag!(
        "heartbeat-interval",
        Uint,
        "100",
        MEMBER,
        "Time (in milliseconds) of a heartbeat interval."
    ),
    flag!(
        "election-timeout",
        Uint,
        "1000",
        MEMBER,
        "Time (in milliseconds) for an election to timeout. At least 5 heartbeat intervals, at most 50000."
    ),
    flag!(
        "initial-election-tick-advance",
        Bool,
        "true",
        MEMBER,
        "Whether to fast-forward initial election ticks on boot for faster election."
    ),
    flag!(
        "listen-peer-urls",
        Urls,
        "http://localhost:2380",
        MEMBER,
        "List of URLs to listen on for peer traffic (IP addresses or localhost)."
    ),
    flag!(
        "listen-client-urls",
        Urls,
        "http://localhost:2379",
        MEMBER,
        "List of URLs to listen on for client traffic (IP addresses or localhost)."
    ),
    flag!(
        "max-snapshots",
        Uint,
        "5",
        MEMBER,
        "Accepted for etcd compatibility; qetcd keeps no snapshot files."
    ),
    flag!(
        "max-wals",
        Uint,
        "5",
        MEMBER,
        "Accepted for etcd compatibility; qetcd keeps no WAL files."
    ),
    flag!(
        "quota-backend-bytes",
        Int,
        "0",
        MEMBER,
        "Size limit of the backend database (0: 2 GiB)."
    ),
    flag!(
        "max-txn-ops",
        Uint,
        "128",
        MEMBER,
        "Maximum number of operations permitted in a transaction."
    ),
    flag!(
        "max-request-bytes",
        Uint,
        "1572864",
        MEMBER,
        "Maximum client request size in bytes the server will accept."
    ),
    flag!(
        "initial-advertise-peer-urls",
        Urls,
        "http://localhost:2380",
        CLUSTERING,
        "List of this member's peer URLs to advertise to the rest of the cluster."
    ),
    flag!(
        "initial-cluster",
        Text,
        "default=http://localhost:2380",
        CLUSTERING,
        "Initial cluster configuration for bootstrapping: name=url[,name=url...]."
    ),
    flag!(
        "initial-cluster-state",
        Text,
        "new",
        CLUSTERING,
        "Initial cluster state ('new' or 'existing')."
    ),
    flag!(
        "initial-cluster-token",
        Text,
        "etcd-cluster",
        CLUSTERING,
        "Initial cluster token for the etcd cluster during bootstrap."
    ),
    flag!(
        "advertise-client-urls",
        Urls,
        "http://localhost:2379",
        CLUSTERING,
        "List of this member's client URLs to advertise to the public."
    ),
    flag!(
        "discovery",
        Text,
        "",
        CLUSTERING,
        "Discovery URL used to bootstrap the cluster."
    ),
    flag!(
        "discovery-fallback",
        Text,
        "exit",
        CLUSTERING,
        "Expected behavior ('exit') when discovery services fails."
    ),
    flag!(
        "discovery-proxy",
        Text,
        "",
        CLUSTERING,
        "HTTP proxy to use for traffic to discovery service."
    ),
    flag!(
        "discovery-srv",
        Text,
        "",
        CLUSTERING,
        "DNS srv domain used to bootstrap the cluster."
    ),
    flag!(
        "discovery-srv-name",
        Text,
        "",
        CLUSTERING,
        "Suffix to the dns srv name queried when bootstrapping."
    ),
    flag!(
        "discovery-token",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: discovery token for the etcd cluster to be bootstrapped."
    ),
    flag!(
        "discovery-endpoints",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: List of gRPC endpoints of the discovery service."
    ),
    flag!(
        "discovery-dial-timeout",
        Text,
        "2s",
        CLUSTERING,
        "V3 discovery: dial timeout for client connections."
    ),
    flag!(
        "discovery-request-timeout",
        Text,
        "5s",
        CLUSTERING,
        "V3 discovery: timeout for discovery requests (excluding dial timeout)."
    ),
    flag!(
        "discovery-keepalive-time",
        Text,
        "2s",
        CLUSTERING,
        "V3 discovery: keepalive time for client connections."
    ),
    flag!(
        "discovery-keepalive-timeout",
        Text,
        "6s",
        CLUSTERING,
        "V3 discovery: keepalive timeout for client connections."
    ),
    flag!(
        "discovery-insecure-transport",
        Bool,
        "true",
        CLUSTERING,
        "V3 discovery: disable transport security for client connections."
    ),
    flag!(
        "discovery-insecure-skip-tls-verify",
        Bool,
        "false",
        CLUSTERING,
        "V3 discovery: skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)."
    ),
    flag!(
        "discovery-cert",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: identify secure client using this TLS certificate file."
    ),
    flag!(
        "discovery-key",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: identify secure client using this TLS key file."
    ),
    flag!(
        "discovery-cacert",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle."
    ),
    flag!(
        "discovery-user",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: username[:password] for authentication (prompt if password is not supplied)."
    ),
    flag!(
        "discovery-password",
        Text,
        "",
        CLUSTERING,
        "V3 discovery: password for authentication (if this option is used, --user option shouldn't include password)."
    ),
    flag!(
        "strict-reconfig-check",
        Bool,
        "true",
        CLUSTERING,
        "Reject reconfiguration requests that would cause quorum loss."
    ),
    flag!(
        "force-new-cluster",
        Bool,
        "false",
        CLUSTERING,
        "Force to create a new one member cluster."
    ),
    flag!(
        "pre-vote",
        Bool,
        "true",
        CLUSTERING,
        "Enable the raft Pre-Vote algorithm to prevent disruption when a node that has been partitioned away rejoins the cluster."
    ),
    flag!(
        "max-learners",
        Uint,
        "1",
        CLUSTERING,
        "Maximum number of learners allowed in the cluster."
    ),
    flag!(
        "auto-compaction-retention",
        Text,
        "0",
        CLUSTERING,
        "Auto compaction retention (not supported yet: must be 0)."
    ),
    flag!(
        "auto-compaction-mode",
        Text,
        "periodic",
        CLUSTERING,
        "Interpret 'auto-compaction-retention' as 'periodic' or 'revision'."
    ),
    flag!(
        "enable-v2",
        Bool,
        "false",
        CLUSTERING,
        "Serve the subset of the v2 keys API that etcd's v2 discovery protocol uses (/v2/keys), so this cluster can be a discovery service."
    ),
    flag!(
        "cert-file",
        Text,
        "",
        SECURITY,
        "Path to the client server TLS cert file."
    ),
    flag!(
        "key-file",
        Text,
        "",
        SECURITY,
        "Path to the client server TLS key file."
    ),
    flag!(
        "client-cert-file",
        Text,
        "",
        SECURITY,
        "Path to an explicit client certificate for outbound client connections; --cert-file is used when empty."
    ),
    flag!(
        "client-key-file",
        Text,
        "",
        SECURITY,
        "Path to an explicit client key for outbound client connections; --key-file is used when empty."
    ),
    flag!(
        "client-cert-auth",
        Bool,
        "false",
        SECURITY,
        "Enable client cert authentication."
    ),
    flag!(
        "client-crl-file",
        Text,
        "",
        SECURITY,
        "Path to the client certificate revocation list file."
    ),
    flag!(
        "client-cert-allowed-hostname",
        Text,
        "",
        SECURITY,
        "Allowed TLS hostname for client cert authentication."
    ),
    flag!(
        "trusted-ca-file",
        Text,
        "",
        SECURITY,
        "Path to the client server TLS trusted CA cert file (implies client cert authentication)."
    ),
    flag!(
        "auth-token",
        Text,
        "simple",
        SECURITY,
        "Specify auth token specific options."
    ),
    flag!(
        "auth-token-ttl",
        Uint,
        "300",
        SECURITY,
        "The lifetime in seconds of the auth token."
    ),
    flag!(
        "bcrypt-cost",
        Uint,
        "10",
        SECURITY,
        "Specify bcrypt algorithm cost factor for auth password hashing."
    ),
    flag!(
        "auto-tls",
        Bool,
        "false",
        SECURITY,
        "Client TLS using generated certificates."
    ),
    flag!(
        "peer-cert-file",
        Text,
        "",
        SECURITY,
        "Path to the peer server TLS cert file."
    ),
    flag!(
        "peer-key-file",
        Text,
        "",
        SECURITY,
        "Path to the peer server TLS key file."
    ),
    flag!(
        "peer-client-cert-file",
        Text,
        "",
        SECURITY,
        "Path to an explicit certificate this member presents when it dials peers; --peer-cert-file is used when empty."
    ),
    flag!(
        "peer-client-key-file",
        Text,
        "",
        SECURITY,
        "Path to the key of --peer-client-cert-file; --peer-key-file is used when empty."
    ),
    flag!(
        "peer-client-cert-auth",
        Bool,
        "false",
        SECURITY,
        "Enable peer client cert authentication."
    ),
    flag!(
        "peer-trusted-ca-file",
        Text,
        "",
        SECURITY,
        "Path to the peer server TLS trusted CA file."
    ),
    flag!(
        "peer-cert-allowed-cn",
        Text,
        "",
        SECURITY,
        "Comma-separated list of allowed CNs for inter-peer TLS authentication."
    ),
    flag!(
        "peer-cert-allowed-hostname",
        Text,
        "",
        SECURITY,
        "Comma-separated list of allowed SAN hostnames for inter-peer TLS authentication."
    ),
    flag!(
        "peer-auto-tls",
        Bool,
        "false",
        SECURITY,
        "Peer TLS using self-generated certificates."
    ),
    flag!(
        "peer-skip-client-san-verification",
        Bool,
        "false",
        SECURITY,
        "Skip verification of SAN field in client certificate for peer connections."
    ),
    flag!(
        "experimental-peer-skip-client-san-verification",
        Bool,
        "false",
        SECURITY,
        "Deprecated (etcd 3.5 name). Use --peer-skip-client-san-verification."
    ),
    flag!(
        "peer-crl-file",
        Text,
        "",
        SECURITY,
        "Path to the peer certificate revocation list file."
    ),
    flag!(
        "self-signed-cert-validity",
        Uint,
        "1",
        SECURITY,
        "The validity period (in years) of the client and peer certificates generated by --auto-tls and --peer-auto-tls."
    ),
    flag!(
        "cipher-suites",
        Text,
        "",
        SECURITY,
        "Comma-separated list of supported TLS cipher suites between client/server and peers (empty: the TLS library's defaults)."
    ),
    flag!(
        "tls-min-version",
        Text,
        "TLS1.2",
        SECURITY,
        "Minimum TLS version supported (TLS1.2 or TLS1.3)."
    ),
    flag!(
        "tls-max-version",
        Text,
        "",
        SECURITY,
        "Maximum TLS version supported (TLS1.2 or TLS1.3; empty: the highest)."
    ),
    flag!(
        "log-level",
        Text,
        "info",
        LOGGING,
        "Configures log level. Only supports debug, info, warn, error, panic, or fatal."
    ),
    flag!(
        "logger",
        Text,
        "zap",
        LOGGING,
        "Specify 'zap' for structured logging (the only logger; 'capnslog' was removed in etcd v3.5)."
    ),
    flag!(
        "log-format",
        Text,
        "json",
        LOGGING,
        "Configures log format. Only supports json, console."
    ),
    flag!(
        "log-outputs",
        Text,
        "default",
        LOGGING,
        "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, 'systemd/journal' to log to the journal, or list comma-separated output targets (file paths)."
    ),
    flag!(
        "listen-metrics-urls",
        Urls,
        "",
        OTHER,
        "List of additional URLs to listen on that will respond to both the /metrics and /health endpoints."
    ),
    flag!(
        "experimental-watch-progress-notify-interval",
        Text,
        "10m",
        OTHER,
        "Duration of periodic watch progress notifications."
    ),
    flag!(
        "experimental-initial-corrupt-check",
        Bool,
        "false",
        OTHER,
        "Enable to check data corruption before serving any client/peer traffic."
    ),
    flag!(
        "experimental-corrupt-check-time",
        Text,
        "0s",
        OTHER,
        "Duration of time between cluster corruption check passes."
    ),
    flag!(
        "metrics",
        Text,
        "basic",
        OTHER,
        "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics."
    ),
];

/// `--initial-cluster-token` → `ETCD_INITIAL_CLUSTER_TOKEN`.
pub fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

pub fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// The clap definition: used to parse, to print `--help`, and for the man page.
pub fn command() -> Command {
    let mut cmd = Command::new("qetcd")
        .about("An etcd-compatible distributed key-value store (Raft over QUIC, state in SQLite).")
        .long_about(
            "qetcd is configured exactly like etcd: every flag below can also be given as an \
             ETCD_* environment variable (--initial-cluster-token is ETCD_INITIAL_CLUSTER_TOKEN). \
             Giving the same option both ways is an error.",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("help")
                .long("help")
                .short('h')
                .action(ArgAction::SetTrue)
                .help("Print this help and exit."),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print the version and exit."),
        );
    for f in FLAGS {
        let mut arg = Arg::new(f.name)
            .long(f.name)
            .help_heading(f.group)
            .value_name(match f.kind {
                Kind::Bool => "BOOL",
                Kind::Uint | Kind::Int => "NUMBER",
                Kind::Urls => "URLS",
                Kind::Text => "VALUE",
            })
            .help(if f.default.is_empty() {
                format!("{} [env: {}]", f.help, env_name(f.name))
            } else {
                format!(
                    "{} [default: {}] [env: {}]",
                    f.help,
                    f.default,
                    env_name(f.name)
                )
            })
            .action(ArgAction::Set)
            .allow_hyphen_values(f.kind == Kind::Int);
        if f.kind == Kind::Bool {
            arg = arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Rewrites Go-style single-dash long flags (`-name`) to clap's `--name`. Go's flag
/// package treats `-x` and `--x` alike; clap only knows `--x` for long names.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest_is_positional = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || rest_is_positional {
            out.push(a);
            continue;
        }
        if a == "--" {
            rest_is_positional = true;
            out.push(a);
            continue;
        }
        let long_single_dash = a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
        if long_single_dash {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

/// Go's strconv.ParseBool.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error".to_string()),
    }
}
