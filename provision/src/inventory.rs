//! The inventory: one TOML file that describes a whole cluster, its schema, defaults and
//! validation.
//!
//! Every problem is reported as `file:line: field: message`, because the operator fixes
//! the file, not the program: the line comes from the TOML parser's spans, the field is
//! the path the operator would write (`member[1].address`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub mod auth;
pub use auth::AuthSpec;

pub const DEFAULT_CLIENT_PORT: u16 = 2379;
pub const DEFAULT_PEER_PORT: u16 = 2380;
/// The unit's `StateDirectory=qetcd`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/qetcd";
/// Leaf certificates are short-lived enough that renewal stays a practised routine;
/// `provision render` renews any that would expire within 30 days.
pub const DEFAULT_CERT_VALIDITY_DAYS: u32 = 365;

/// One problem in an inventory, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// How members find each other the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Every member is listed in `ETCD_INITIAL_CLUSTER`.
    Static,
    /// etcd's DNS SRV discovery (`ETCD_DISCOVERY_SRV`): members read each other from the
    /// SRV records of `domain`, whose targets are the members' hostnames. Those
    /// records are rendered too, so the inventory stays the one description.
    Dns(SrvDiscovery),
    /// etcd discovery: members register with a discovery service under a one-use token
    /// and read each other from it (`ETCD_DISCOVERY_TOKEN` + `ETCD_DISCOVERY_ENDPOINTS`,
    /// or `ETCD_DISCOVERY` for the v2 protocol). `provision discovery new` makes tokens.
    Discovery(EtcdDiscovery),
}

/// The service side of `bootstrap = "discovery"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdDiscovery {
    /// etcd 3.6's v3 protocol: a token on a v3 cluster's gRPC endpoints.
    V3 {
        token: String,
        endpoints: Vec<String>,
    },
    /// The v2 protocol: the token's full URL on a v2 keys API.
    V2 { url: String },
}

impl EtcdDiscovery {
    /// The daemon's view of the same service, for token checks.
    pub fn service(&self) -> qetcd::bootstrap::discovery::token::Service {
        use qetcd::bootstrap::discovery::token::Service;
        match self {
            EtcdDiscovery::V2 { url } => Service::V2 { url: url.clone() },
            EtcdDiscovery::V3 { token, endpoints } => Service::V3 {
                endpoints: endpoints.clone(),
                client: Box::new(default_discovery_client()),
                token: token.clone(),
            },
        }
    }

    /// How the operator would name the token.
    pub fn describe(&self) -> String {
        match self {
            EtcdDiscovery::V2 { url } => url.clone(),
            EtcdDiscovery::V3 { token, endpoints } => {
                format!("{token} on {}", endpoints.join(","))
            }
        }
    }
}

/// etcd 3.6's defaults for the v3 discovery client (what the daemon uses when the env
/// file sets nothing else).
pub fn default_discovery_client() -> qetcd::config::DiscoveryClient {
    match qetcd::config::Config::parse(["qetcd"], &[]) {
        Ok(qetcd::config::Parsed::Run { config, .. }) => config.discovery_client,
        _ => unreachable!("the daemon's defaults parse"),
    }
}

/// The DNS side of `bootstrap = "dns"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvDiscovery {
    /// Lower case, without a trailing dot.
    pub domain: String,
    /// etcd's `--discovery-srv-name`: a suffix that gives the cluster record names of
    /// its own (`_etcd-server-ssl-<srv_name>._tcp`), so several clusters share a domain.
    pub srv_name: Option<String>,
}

impl Inventory {
    /// The SRV discovery settings, when the cluster bootstraps from DNS.
    pub fn srv(&self) -> Option<&SrvDiscovery> {
        match &self.bootstrap {
            Bootstrap::Static | Bootstrap::Discovery(_) => None,
            Bootstrap::Dns(d) => Some(d),
        }
    }

    /// The etcd discovery settings, when the cluster bootstraps from a token.
    pub fn discovery(&self) -> Option<&EtcdDiscovery> {
        match &self.bootstrap {
            Bootstrap::Discovery(d) => Some(d),
            _ => None,
        }
    }
}

/// What protects client and peer traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain `http://` URLs. Peer traffic is still QUIC (always encrypted) but
    /// unauthenticated.
    None,
    /// A peer CA and a client CA generated and kept by this tool; every member gets
    /// its own certificates and verifies the other side's.
    SelfSigned,
    /// etcd's `--auto-tls` / `--peer-auto-tls`: each member makes its own
    /// self-signed certificate. Encryption without authentication.
    Auto,
}

impl TlsMode {
    pub fn scheme(self) -> &'static str {
        match self {
            TlsMode::None => "http",
            TlsMode::SelfSigned | TlsMode::Auto => "https",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::SelfSigned => "self-signed",
            TlsMode::Auto => "auto",
        }
    }
}

/// A subject alternative name: an IP address or a DNS name (wildcards allowed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Ip(ip) => write!(f, "{ip}"),
            San::Dns(d) => f.write_str(d),
        }
    }
}

impl San {
    pub fn parse(s: &str) -> Result<San, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let name = s.strip_prefix("*.").unwrap_or(s);
        if is_dns_name(name) {
            Ok(San::Dns(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is neither an IP address nor a DNS name"))
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// What it listens on and advertises; always a routable IP.
    pub address: IpAddr,
    pub hostname: Option<String>,
    pub extra_sans: Vec<San>,
    /// Set for a member added to the running cluster (`provision member add`): the
    /// members it joined, whose peer URLs its `ETCD_INITIAL_CLUSTER` lists with its own
    /// (`ETCD_INITIAL_CLUSTER_STATE=existing`). Unset for the bootstrap members.
    pub joined: Option<Vec<String>>,
    /// Removed from the running cluster (`provision member remove`): no longer
    /// rendered, but still part of the bootstrap members' `ETCD_INITIAL_CLUSTER` (and
    /// of the `joined` lists naming it), so their bundles stay as they were.
    pub removed: bool,
}

impl Member {
    /// The SANs every certificate of this member carries: its address, its hostname,
    /// then the extra ones, without repeats.
    pub fn sans(&self) -> Vec<San> {
        let mut out = vec![San::Ip(self.address)];
        out.extend(self.hostname.iter().map(|h| San::Dns(h.clone())));
        for s in &self.extra_sans {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }
}

/// A validated inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it came from, as given on the command line.
    pub file: String,
    pub name: String,
    pub token: String,
    pub bootstrap: Bootstrap,
    pub tls: TlsMode,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    /// Whether the client listener also serves on 127.0.0.1 (as the seed's commands
    /// do), so that tools on the host reach the member without knowing its address.
    pub listen_localhost: bool,
    pub cert_validity_days: u32,
    /// The members that are rendered: every `[[member]]` not marked `removed`, in file
    /// order.
    pub members: Vec<Member>,
    /// Every `[[member]]`, removed ones included, in file order: what the initial
    /// cluster lists are made of.
    pub all_members: Vec<Member>,
    /// The users and roles of `[auth]`, if the inventory has one.
    pub auth: Option<AuthSpec>,
    /// Things that work but are probably not what the operator wants.
    pub warnings: Vec<Diagnostic>,
}

// The file as written. Every value is optional and spanned so that validation, not
// serde, words the errors and knows their lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    member: Vec<Spanned<RawMember>>,
    auth: Option<Spanned<auth::RawAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    bootstrap: Option<Spanned<String>>,
    domain: Option<Spanned<String>>,
    srv_name: Option<Spanned<String>>,
    discovery_token: Option<Spanned<String>>,
    discovery_endpoints: Option<Spanned<Vec<String>>>,
    discovery_url: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    client_port: Option<Spanned<i64>>,
    peer_port: Option<Spanned<i64>>,
    data_dir: Option<Spanned<String>>,
    listen_localhost: Option<Spanned<bool>>,
    cert_validity_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    extra_sans: Option<Vec<Spanned<String>>>,
    joined: Option<Spanned<Vec<String>>>,
    removed: Option<Spanned<bool>>,
}

/// Collects diagnostics against one source text.
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn diag(&self, span: &Range<usize>, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            field: field.to_string(),
            message,
        }
    }

    fn error(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let d = self.diag(span, field, message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let d = self.diag(span, field, message.into());
        self.warnings.push(d);
    }
}

impl Inventory {
    /// Reads and validates `path`; errors name it as given.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: label.clone(),
            source,
        })?;
        Inventory::parse(&label, &text)
    }

    /// Validates inventory `text`; `file` is the name errors use.
    pub fn parse(file: &str, text: &str) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            InventoryError::Invalid(vec![Diagnostic {
                file: file.to_string(),
                line: line_of(text, span.start),
                field: field_at(text, span.start),
                message: e.message().trim_end().to_string(),
            }])
        })?;
        let mut c = Checker {
            file,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let inv = check(&mut c, raw);
        if !c.errors.is_empty() {
            c.errors.sort_by_key(|d| d.line);
            return Err(InventoryError::Invalid(c.errors));
        }
        let mut inv = inv.expect("no errors means a complete inventory");
        inv.file = file.to_string();
        inv.warnings = c.warnings;
        Ok(inv)
    }
}

/// Validates everything, reporting every problem; `None` only when there were errors.
fn check(c: &mut Checker<'_>, raw: RawInventory) -> Option<Inventory> {
    let whole = 0..0;
    let Some(cluster) = raw.cluster else {
        c.error(
            &whole,
            "cluster",
            "missing [cluster] table (name, token, bootstrap, tls, ...)",
        );
        return None;
    };
    let cluster_span = cluster.span();
    let cluster = cluster.into_inner();

    let name = match &cluster.name {
        None => {
            c.error(&cluster_span, "cluster.name", "missing");
            None
        }
        Some(n) if !is_simple_name(n.get_ref()) => {
            c.error(
                &n.span(),
                "cluster.name",
                format!(
                    "{:?} must be letters, digits, '.', '_' or '-', starting with a letter or digit",
                    n.get_ref()
                ),
            );
            None
        }
        Some(n) => Some(n.get_ref().clone()),
    };

    let token = match &cluster.token {
        None => {
            c.error(
                &cluster_span,
                "cluster.token",
                "missing: every cluster needs a token of its own (etcd's --initial-cluster-token), so that members of different clusters never join each other",
            );
            None
        }
        Some(t) if t.get_ref().trim().is_empty() => {
            c.error(
                &t.span(),
                "cluster.token",
                "is empty: every cluster needs a token of its own (etcd's --initial-cluster-token)",
            );
            None
        }
        Some(t) if !is_env_safe(t.get_ref()) => {
            c.error(
                &t.span(),
                "cluster.token",
                format!(
                    "{:?} may only hold letters, digits and . _ - : / @ + (it goes into an environment file unquoted)",
                    t.get_ref()
                ),
            );
            None
        }
        Some(t) => Some(t.get_ref().clone()),
    };

    let bootstrap = check_bootstrap(c, &cluster, &cluster_span);

    let tls = match &cluster.tls {
        None => {
            c.error(
                &cluster_span,
                "cluster.tls",
                "missing: choose \"self-signed\" (CAs kept by this tool), \"auto\" (etcd's auto TLS: encrypted, unauthenticated) or \"none\" (plain http)",
            );
            None
        }
        Some(t) => match t.get_ref().as_str() {
            "none" => Some(TlsMode::None),
            "self-signed" => Some(TlsMode::SelfSigned),
            "auto" => Some(TlsMode::Auto),
            other => {
                c.error(
                    &t.span(),
                    "cluster.tls",
                    format!(
                        "unknown TLS mode {other:?}: expected \"none\", \"self-signed\" or \"auto\""
                    ),
                );
                None
            }
        },
    };

    let port = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, field: &str, default: u16| match v {
        None => Some(default),
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                c.error(
                    &p.span(),
                    field,
                    format!("{} is not a port (1-65535)", p.get_ref()),
                );
                None
            }
        },
    };
    let client_port = port(
        c,
        &cluster.client_port,
        "cluster.client_port",
        DEFAULT_CLIENT_PORT,
    );
    let peer_port = port(
        c,
        &cluster.peer_port,
        "cluster.peer_port",
        DEFAULT_PEER_PORT,
    );
    if let (Some(cp), Some(pp)) = (client_port, peer_port)
        && cp == pp
    {
        let span = cluster
            .peer_port
            .as_ref()
            .map_or(cluster_span.clone(), Spanned::span);
        c.error(
            &span,
            "cluster.peer_port",
            format!("{pp} is also the client port; clients and peers need ports of their own"),
        );
    }

    let data_dir = match &cluster.data_dir {
        None => Some(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(d) => {
            let p = Path::new(d.get_ref());
            if !p.is_absolute() || p == Path::new("/") || !is_env_safe(d.get_ref()) {
                c.error(
                    &d.span(),
                    "cluster.data_dir",
                    format!(
                        "{:?} must be an absolute directory path other than / (letters, digits and . _ - / only)",
                        d.get_ref()
                    ),
                );
                None
            } else if let Some(why) = hidden_from_service(p) {
                c.error(
                    &d.span(),
                    "cluster.data_dir",
                    format!("{:?} {why}", d.get_ref()),
                );
                None
            } else {
                Some(p.to_path_buf())
            }
        }
    };

    let listen_localhost = cluster
        .listen_localhost
        .as_ref()
        .is_none_or(|b| *b.get_ref());

    let cert_validity_days = match &cluster.cert_validity_days {
        None => Some(DEFAULT_CERT_VALIDITY_DAYS),
        // Below 60 days, the 30-day renewal window would re-issue on every render.
        Some(d) => match u32::try_from(*d.get_ref()) {
            Ok(n) if (60..=3650).contains(&n) => Some(n),
            _ => {
                c.error(
                    &d.span(),
                    "cluster.cert_validity_days",
                    format!(
                        "{} is out of range: 60 to 3650 days (certificates are renewed when less than 30 days remain)",
                        d.get_ref()
                    ),
                );
                None
            }
        },
    };

    let domain = match &bootstrap {
        Some(Bootstrap::Dns(d)) => Some(d.domain.as_str()),
        _ => None,
    };
    let members = check_members(c, &raw.member, domain);
    let auth = match &raw.auth {
        None => Some(None),
        Some(a) => auth::check_auth(c, a, tls == Some(TlsMode::SelfSigned)).map(Some),
    };

    Some(Inventory {
        file: String::new(),
        name: name?,
        token: token?,
        bootstrap: bootstrap?,
        tls: tls?,
        client_port: client_port?,
        peer_port: peer_port?,
        data_dir: data_dir?,
        listen_localhost,
        cert_validity_days: cert_validity_days?,
        members: members
            .as_ref()?
            .iter()
            .filter(|m| !m.removed)
            .cloned()
            .collect(),
        all_members: members?,
        auth: auth?,
        warnings: Vec::new(),
    })
}

/// The bootstrap mode, with `domain` and `srv_name`, which only `dns` takes.
fn check_bootstrap(
    c: &mut Checker<'_>,
    cluster: &RawCluster,
    cluster_span: &Range<usize>,
) -> Option<Bootstrap> {
    let mode = cluster.bootstrap.as_ref();
    let mode_span = mode.map_or(cluster_span.clone(), Spanned::span);
    match mode.map(|b| b.get_ref().as_str()) {
        None | Some("static") => {
            let ok = no_srv_fields(
                c,
                cluster,
                "a static cluster lists its members in ETCD_INITIAL_CLUSTER",
            ) & no_discovery_fields(c, cluster, "static");
            ok.then_some(Bootstrap::Static)
        }
        Some("discovery") => {
            let ok = no_srv_fields(
                c,
                cluster,
                "a discovery cluster reads its members from the discovery service",
            );
            let d = check_discovery(c, cluster, &mode_span);
            if ok {
                d.map(Bootstrap::Discovery)
            } else {
                None
            }
        }
        Some("dns") => {
            if !no_discovery_fields(c, cluster, "dns") {
                return None;
            }
            let domain = match &cluster.domain {
                None => {
                    c.error(
                        &mode_span,
                        "cluster.domain",
                        "missing: bootstrap \"dns\" reads the members from this domain's SRV records (etcd's --discovery-srv, e.g. \"example.com\")",
                    );
                    None
                }
                Some(d) => {
                    let v = d.get_ref();
                    if v.parse::<IpAddr>().is_err() && is_dns_name(v) {
                        Some(v.trim_end_matches('.').to_ascii_lowercase())
                    } else {
                        c.error(
                            &d.span(),
                            "cluster.domain",
                            format!("{v:?} is not a DNS domain name"),
                        );
                        None
                    }
                }
            };
            let srv_name = match &cluster.srv_name {
                None => Some(None),
                Some(n) if is_srv_name(n.get_ref()) => Some(Some(n.get_ref().clone())),
                Some(n) => {
                    c.error(
                        &n.span(),
                        "cluster.srv_name",
                        format!(
                            "{:?} must be letters, digits and '-' (not at either end), at most {MAX_SRV_NAME} characters: it becomes part of the record names, as in _etcd-server-ssl-<srv_name>._tcp",
                            n.get_ref()
                        ),
                    );
                    None
                }
            };
            Some(Bootstrap::Dns(SrvDiscovery {
                domain: domain?,
                srv_name: srv_name?,
            }))
        }
        Some(other) => {
            c.error(
                &mode_span,
                "cluster.bootstrap",
                format!(
                    "unknown bootstrap mode {other:?}: expected \"static\", \"dns\" or \"discovery\""
                ),
            );
            None
        }
    }
}

/// `domain` and `srv_name` belong to `bootstrap = "dns"` only.
fn no_srv_fields(c: &mut Checker<'_>, cluster: &RawCluster, why: &str) -> bool {
    let mut ok = true;
    for (field, value) in [("domain", &cluster.domain), ("srv_name", &cluster.srv_name)] {
        if let Some(v) = value {
            c.error(
                &v.span(),
                &format!("cluster.{field}"),
                format!("only used with bootstrap = \"dns\" (the members' SRV records); {why}"),
            );
            ok = false;
        }
    }
    ok
}

/// `discovery_*` belong to `bootstrap = "discovery"` only.
fn no_discovery_fields(c: &mut Checker<'_>, cluster: &RawCluster, mode: &str) -> bool {
    let spans = [
        (
            "discovery_token",
            cluster.discovery_token.as_ref().map(Spanned::span),
        ),
        (
            "discovery_endpoints",
            cluster.discovery_endpoints.as_ref().map(Spanned::span),
        ),
        (
            "discovery_url",
            cluster.discovery_url.as_ref().map(Spanned::span),
        ),
    ];
    let mut ok = true;
    for (field, span) in spans {
        if let Some(span) = span {
            c.error(
                &span,
                &format!("cluster.{field}"),
                format!("only used with bootstrap = \"discovery\", not {mode:?}"),
            );
            ok = false;
        }
    }
    ok
}

/// The token (v3: `discovery_token` + `discovery_endpoints`; v2: `discovery_url`).
fn check_discovery(
    c: &mut Checker<'_>,
    cluster: &RawCluster,
    mode_span: &Range<usize>,
) -> Option<EtcdDiscovery> {
    const HOW: &str = "make one with `provision discovery new --size <members> --endpoints <client URLs of a running cluster>`";
    match (&cluster.discovery_url, &cluster.discovery_token) {
        (Some(url), Some(_)) => {
            c.error(
                &url.span(),
                "cluster.discovery_url",
                "give either discovery_url (v2 protocol) or discovery_token with discovery_endpoints (v3 protocol), not both",
            );
            None
        }
        (Some(url), None) => {
            if let Some(e) = &cluster.discovery_endpoints {
                c.error(
                    &e.span(),
                    "cluster.discovery_endpoints",
                    "only used with discovery_token (v3 protocol); the v2 protocol's discovery_url names the service itself",
                );
                return None;
            }
            let v = url.get_ref();
            if let Err(e) = qetcd::bootstrap::discovery::v2::parse_discovery_url(v) {
                c.error(&url.span(), "cluster.discovery_url", e.to_string());
                return None;
            }
            if !is_env_safe(v) {
                c.error(
                    &url.span(),
                    "cluster.discovery_url",
                    format!("{v:?} may only hold letters, digits and . _ - : / @ +"),
                );
                return None;
            }
            Some(EtcdDiscovery::V2 { url: v.clone() })
        }
        (None, Some(token)) => {
            let t = token.get_ref();
            let token_ok = !t.is_empty()
                && t.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
            if !token_ok {
                c.error(
                    &token.span(),
                    "cluster.discovery_token",
                    format!("{t:?} may only hold letters, digits and - _ . ({HOW})"),
                );
            }
            let endpoints = match &cluster.discovery_endpoints {
                None => {
                    c.error(
                        &token.span(),
                        "cluster.discovery_endpoints",
                        "missing: the client URLs (gRPC endpoints) of the cluster that holds discovery_token",
                    );
                    None
                }
                Some(e) if e.get_ref().is_empty() => {
                    c.error(
                        &e.span(),
                        "cluster.discovery_endpoints",
                        "empty: list the client URLs of the cluster that holds discovery_token",
                    );
                    None
                }
                Some(e) => {
                    let bad: Vec<&String> = e
                        .get_ref()
                        .iter()
                        .filter(|u| {
                            !is_env_safe(u)
                                || qetcd::config::parse_url_list(u).map_or(true, |l| {
                                    l.iter().any(|p| !matches!(p.scheme(), "http" | "https"))
                                })
                        })
                        .collect();
                    if bad.is_empty() {
                        Some(e.get_ref().clone())
                    } else {
                        c.error(
                            &e.span(),
                            "cluster.discovery_endpoints",
                            format!("{bad:?}: each must be an http:// or https:// client URL, e.g. \"http://10.0.0.5:2379\""),
                        );
                        None
                    }
                }
            };
            (token_ok && endpoints.is_some()).then(|| EtcdDiscovery::V3 {
                token: t.clone(),
                endpoints: endpoints.expect("checked"),
            })
        }
        (None, None) => {
            c.error(
                mode_span,
                "cluster.discovery_token",
                format!("missing: bootstrap \"discovery\" needs a fresh token ({HOW}), with discovery_endpoints; or discovery_url for the v2 protocol"),
            );
            None
        }
    }
}

/// The longest `srv_name` that keeps `_etcd-server-ssl-<srv_name>` within one DNS
/// label (63 characters).
const MAX_SRV_NAME: usize = 63 - "_etcd-server-ssl-".len();

fn is_srv_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SRV_NAME
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `domain` is the SRV discovery domain when the cluster bootstraps from DNS: every
/// member then needs a hostname inside it (the target of its SRV records, whose A
/// record is rendered in that domain's zone).
fn check_members(
    c: &mut Checker<'_>,
    raw: &[Spanned<RawMember>],
    domain: Option<&str>,
) -> Option<Vec<Member>> {
    if raw.is_empty() {
        c.error(
            &(c.text.len()..c.text.len()),
            "member",
            "no members: add one [[member]] table per host (name, address, hostname)",
        );
        return None;
    }
    let mut members = Vec::new();
    let mut ok = true;
    // First use of each name, address and hostname: (index, line).
    let mut seen: HashMap<(&str, String), (usize, usize)> = HashMap::new();
    for (i, m) in raw.iter().enumerate() {
        let span = m.span();
        let m = m.get_ref();
        let field = |f: &str| format!("member[{i}].{f}");
        let mut dup = |c: &mut Checker<'_>,
                       kind: &'static str,
                       value: String,
                       span: Range<usize>| {
            let line = line_of(c.text, span.start);
            match seen.get(&(kind, value.clone())) {
                Some((j, first)) => {
                    c.error(
                        &span,
                        &field(kind),
                        format!("{value:?} is already the {kind} of member[{j}] (line {first})"),
                    );
                    false
                }
                None => {
                    seen.insert((kind, value), (i, line));
                    true
                }
            }
        };

        let name = match &m.name {
            None => {
                c.error(&span, &field("name"), "missing");
                None
            }
            Some(n) if !is_simple_name(n.get_ref()) => {
                c.error(
                    &n.span(),
                    &field("name"),
                    format!(
                        "{:?} must be letters, digits, '.', '_' or '-', starting with a letter or digit (it names the host's bundle directory and goes into ETCD_INITIAL_CLUSTER)",
                        n.get_ref()
                    ),
                );
                None
            }
            Some(n) => dup(c, "name", n.get_ref().clone(), n.span()).then(|| n.get_ref().clone()),
        };

        let address = match &m.address {
            None => {
                c.error(
                    &span,
                    &field("address"),
                    "missing: the IP address the member listens on and advertises",
                );
                None
            }
            Some(a) => match check_address(a.get_ref()) {
                Ok(ip) => dup(c, "address", ip.to_string(), a.span()).then_some(ip),
                Err(e) => {
                    c.error(&a.span(), &field("address"), e);
                    None
                }
            },
        };

        let hostname = match &m.hostname {
            None if domain.is_some() => {
                c.error(
                    &span,
                    &field("hostname"),
                    format!(
                        "missing: with bootstrap \"dns\" every member needs a hostname in {}: its SRV records point at it and it is the member's advertised peer URL",
                        domain.unwrap_or_default()
                    ),
                );
                None
            }
            None => Some(None),
            Some(h) => {
                let v = h.get_ref();
                if v.parse::<IpAddr>().is_ok() {
                    c.error(
                        &h.span(),
                        &field("hostname"),
                        format!("{v:?} is an IP address; hostname is the member's DNS name (its IP belongs in address)"),
                    );
                    None
                } else if !is_dns_name(v) {
                    c.error(
                        &h.span(),
                        &field("hostname"),
                        format!("{v:?} is not a valid DNS name"),
                    );
                    None
                } else {
                    let v = v.to_ascii_lowercase();
                    // A URL host and an SRV target are written without the root dot.
                    let v = match domain {
                        Some(_) => v.trim_end_matches('.').to_string(),
                        None => v,
                    };
                    match domain {
                        Some(d) if !v.ends_with(&format!(".{d}")) => {
                            c.error(
                                &h.span(),
                                &field("hostname"),
                                format!(
                                    "{v:?} is not inside cluster.domain {d:?}: with bootstrap \"dns\" its A record is published in that domain's zone, next to the SRV records that point at it"
                                ),
                            );
                            None
                        }
                        _ => dup(c, "hostname", v.clone(), h.span()).then_some(Some(v)),
                    }
                }
            }
        };

        let mut extra_sans = Vec::new();
        let mut sans_ok = true;
        for (k, s) in m.extra_sans.iter().flatten().enumerate() {
            match San::parse(s.get_ref()) {
                Ok(san) => extra_sans.push(san),
                Err(e) => {
                    c.error(&s.span(), &field(&format!("extra_sans[{k}]")), e);
                    sans_ok = false;
                }
            }
        }

        let joined = match &m.joined {
            None => Some(None),
            Some(j) => {
                let earlier: Vec<&str> = members.iter().map(|m: &Member| m.name.as_str()).collect();
                let unknown: Vec<&String> = j
                    .get_ref()
                    .iter()
                    .filter(|n| !earlier.contains(&n.as_str()))
                    .collect();
                if j.get_ref().is_empty() || !unknown.is_empty() {
                    c.error(
                        &j.span(),
                        &field("joined"),
                        format!(
                            "{unknown:?}: joined lists the names of members above this one, the cluster the member was added to (written by `provision member add`)"
                        ),
                    );
                    None
                } else {
                    Some(Some(j.get_ref().clone()))
                }
            }
        };
        let removed = m.removed.as_ref().is_some_and(|r| *r.get_ref());

        match (name, address, hostname, joined, sans_ok) {
            (Some(name), Some(address), Some(hostname), Some(joined), true) => {
                members.push(Member {
                    name,
                    address,
                    hostname,
                    extra_sans,
                    joined,
                    removed,
                });
            }
            _ => ok = false,
        }
    }

    let active: Vec<&Spanned<RawMember>> = raw
        .iter()
        .filter(|m| !m.get_ref().removed.as_ref().is_some_and(|r| *r.get_ref()))
        .collect();
    if active.is_empty() {
        c.error(
            &raw[0].span(),
            "member",
            "every member is removed: at least one must remain",
        );
        return None;
    }
    let n = active.len();
    if n.is_multiple_of(2) {
        c.warn(
            &active[0].span(),
            "member",
            format!(
                "{n} members: an even count tolerates no more failures than {} members (a majority of {n} is {}, so {} may fail), while every write waits for one more member; use {} or {} members",
                n - 1,
                n / 2 + 1,
                (n - 1) / 2,
                n - 1,
                n + 1
            ),
        );
    }
    ok.then_some(members)
}

/// A member address: an IP that other members and clients can reach.
fn check_address(v: &str) -> Result<IpAddr, String> {
    match v.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Err(format!(
            "{v} is a loopback address; other members and clients must reach the member at its address (use listen_localhost for local access)"
        )),
        Ok(ip) if ip.is_unspecified() => Err(format!(
            "{v} is the unspecified address; the member advertises its address to the others, so it must be the host's own IP"
        )),
        Ok(ip) if ip.is_multicast() => Err(format!("{v} is a multicast address")),
        Ok(ip) => Ok(ip),
        Err(_) if v.parse::<std::net::SocketAddr>().is_ok() => Err(format!(
            "{v:?} carries a port; give the IP alone (ports are cluster.client_port and cluster.peer_port)"
        )),
        Err(_) if is_dns_name(v) => Err(format!(
            "{v:?} is a hostname, but the member listens on its address, so it must be an IP address (put the name in hostname)"
        )),
        Err(_) => Err(format!("{v:?} is not an IP address")),
    }
}

/// Why qetcd.service's sandbox would lose or hide a data dir at `p`, if it would.
fn hidden_from_service(p: &Path) -> Option<&'static str> {
    if ["/tmp", "/var/tmp"].iter().any(|t| p.starts_with(t)) {
        return Some(
            "is inside a temporary directory: qetcd.service has PrivateTmp=yes, so the data would vanish when the service stops",
        );
    }
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| p.starts_with(h))
    {
        return Some(
            "is inside a home directory, which qetcd.service cannot see (ProtectHome=yes)",
        );
    }
    None
}

fn is_simple_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Safe unquoted in an env file read by both systemd and sh.
fn is_env_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@' | '+')
        })
}

/// RFC 1123 host name with at least one letter in its last label (so "10.0.1.300"
/// is a broken address, not a name).
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    labels_ok
        && s.rsplit('.')
            .next()
            .is_some_and(|l| l.chars().any(|c| c.is_ascii_alphabetic()))
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text[..offset].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The field path at byte `offset`, as the operator writes it: the enclosing table
/// (`cluster`, `member[2]`) and the key on that line. The TOML parser's own errors
/// carry only a span; this turns it back into a name.
fn field_at(text: &str, offset: usize) -> String {
    let line_no = line_of(text, offset);
    let mut table = String::new();
    let mut members = 0usize;
    let mut key = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[") {
            let h = h.split("]]").next().unwrap_or("").trim();
            if h == "member" {
                table = format!("member[{members}]");
                members += 1;
            } else {
                table = h.to_string();
            }
            if n + 1 == line_no {
                return table;
            }
        } else if let Some(h) = t.strip_prefix('[') {
            table = h.split(']').next().unwrap_or("").trim().to_string();
            if n + 1 == line_no {
                return table;
            }
        } else if n + 1 == line_no {
            key = t
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string());
            break;
        }
    }
    match (table.is_empty(), key) {
        (_, None) => table,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
    }
}

#[cfg(test)]
mod tests;
