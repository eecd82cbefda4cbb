//! DNS SRV discovery (`--discovery-srv <domain>`): the initial cluster read from the
//! domain's SRV records instead of `--initial-cluster`, as etcd 3.5+ reads it.
//!
//! Two record sets are queried and their results concatenated, https first:
//! `_etcd-server-ssl[-<name>]._tcp.<domain>` gives `https://` peers and
//! `_etcd-server[-<name>]._tcp.<domain>` `http://` ones (`<name>` is
//! `--discovery-srv-name`). A record whose target resolves to the address and port of
//! one of this member's `--initial-advertise-peer-urls` is this member (`--name`); the
//! others get placeholder names until they publish their own. Peer URLs are
//! `<scheme>://<target>:<port>` with the target's host name, not its address, and
//! member IDs hash those URLs with `--initial-cluster-token`, so every member, qetcd or
//! etcd, derives the same IDs from the same answers.
//!
//! Where etcd differs, and why:
//! - etcd gives up at the first failed lookup and relies on being restarted. Records are
//!   often published after the members are started, so qetcd retries for
//!   [`DISCOVERY_WINDOW`], saying in the log and in systemd's `STATUS=` what it waits
//!   for, and only then exits with the last error (systemd then restarts it).
//! - etcd silently drops a target that does not resolve: that member is then missing
//!   from this member's cluster and the IDs disagree. qetcd treats it as an error.
//! - When both record sets list the same host, etcd members derive different IDs and
//!   the cluster never forms (spec §5.1 item 7). qetcd refuses to start and says so.
//! - etcd restarts its placeholder counter for each record set, so placeholders of the
//!   two sets merge into one member; qetcd numbers them across both sets.
//!
//! Nothing touches the data directory here: discovery runs, and fails, before it is
//! created, so a failed start leaves nothing a later start would take for a member.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use url::Url;

use crate::config::{Config, InitialCluster, url_string};
use crate::notify::Notifier;

/// How long a start keeps retrying while the records are missing or do not yet
/// describe this member. etcd's own resolution retries (advertise URLs against
/// `--initial-cluster`) are bounded by the same 30 s.
pub const DISCOVERY_WINDOW: Duration = Duration::from_secs(30);
/// Pause between attempts.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// One DNS query's timeout; hickory's default of 5 s would use up the window in a few
/// attempts against a resolver that does not answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsSrvError {
    /// Neither record set gave a usable answer.
    #[error("{}", .0.join("; "))]
    NoRecords(Vec<String>),
    #[error(
        "error setting up initial cluster: cannot find local etcd member {name:?} in SRV records ({why})"
    )]
    LocalMemberNotFound { name: String, why: String },
    #[error(
        "DNS SRV records {ssl} and {plain} both list {hosts}: every member would derive different member IDs and the cluster would never form. Publish one of them: {ssl} for https:// peers, or {plain} for http:// peers"
    )]
    BothRecordSets {
        ssl: String,
        plain: String,
        hosts: String,
    },
    #[error("DNS SRV record {record} lists {target}:{port}, which does not resolve: {error}")]
    UnresolvableTarget {
        record: String,
        target: String,
        port: u16,
        error: String,
    },
    #[error("failed to resolve --initial-advertise-peer-urls {url} for DNS SRV discovery: {error}")]
    UnresolvableAdvertiseUrl { url: String, error: String },
    #[error("cannot read the system resolver configuration (/etc/resolv.conf): {0}")]
    ResolverConfig(String),
}

/// One of the two record sets: its peer URL scheme and its service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    pub scheme: &'static str,
    /// `etcd-server-ssl` or `etcd-server`, with `-<discovery-srv-name>` appended.
    pub service: String,
    /// `_<service>._tcp.<domain>`, as queried and as errors name it.
    pub record: String,
}

/// The two record sets for `domain`, https first (etcd's order).
pub fn record_sets(domain: &str, srv_name: &str) -> [RecordSet; 2] {
    let suffix = if srv_name.is_empty() {
        String::new()
    } else {
        format!("-{srv_name}")
    };
    let domain = domain.trim_end_matches('.');
    let set = |scheme, base: &str| {
        let service = format!("{base}{suffix}");
        RecordSet {
            scheme,
            record: format!("_{service}._tcp.{domain}"),
            service,
        }
    };
    [set("https", "etcd-server-ssl"), set("http", "etcd-server")]
}

/// One SRV answer with the addresses its target resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name without the trailing dot.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
}

/// What a record set's lookup gave.
pub type SetAnswer = Result<Vec<Target>, String>;

/// The cluster discovered, and whether it has https peers (for the TLS rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub cluster: InitialCluster,
    /// `name=url` entries in record order, as etcd logs them.
    pub entries: Vec<String>,
}

/// An advertised peer URL with the socket addresses it resolves to.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub url: Url,
    pub addrs: Vec<SocketAddr>,
}

/// Builds the initial cluster from the record sets' answers (pure: the lookups are done).
pub fn assemble(
    name: &str,
    advertised: &[Advertised],
    sets: &[(RecordSet, SetAnswer)],
) -> Result<Discovered, DnsSrvError> {
    if let [(ssl, Ok(a)), (plain, Ok(b))] = sets {
        let shared = shared_hosts(a, b);
        if !shared.is_empty() {
            return Err(DnsSrvError::BothRecordSets {
                ssl: ssl.record.clone(),
                plain: plain.record.clone(),
                hosts: shared.join(", "),
            });
        }
    }
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    let mut mismatches = Vec::new();
    let mut placeholder = 0usize;
    for (set, answer) in sets {
        let targets = match answer {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => {
                failures.push(format!(
                    "error querying DNS SRV records for _{} {}: no records",
                    set.service, set.record
                ));
                continue;
            }
            Err(e) => {
                failures.push(format!(
                    "error querying DNS SRV records for _{} {e}",
                    set.service
                ));
                continue;
            }
        };
        for t in targets {
            let url = format!("{}://{}:{}", set.scheme, t.host, t.port);
            let mine = advertised.iter().find(|a| {
                a.addrs
                    .iter()
                    .any(|s| s.port() == t.port && t.addrs.contains(&s.ip()))
            });
            match mine {
                Some(a) if a.url.scheme() != set.scheme => mismatches.push(format!(
                    "bootstrap at {url} from DNS for {} has scheme mismatch with expected peer {}",
                    set.service,
                    url_string(&a.url)
                )),
                Some(_) => entries.push(format!("{name}={url}")),
                None => {
                    entries.push(format!("{placeholder}={url}"));
                    placeholder += 1;
                }
            }
        }
    }
    if entries.is_empty() && mismatches.is_empty() {
        return Err(DnsSrvError::NoRecords(failures));
    }
    let cluster = InitialCluster::parse(&entries.join(",")).map_err(|e| {
        DnsSrvError::NoRecords(vec![format!("SRV records give an invalid peer URL: {e}")])
    })?;
    if cluster.get(name).is_none() {
        let listed: Vec<String> = sets
            .iter()
            .filter_map(|(set, a)| {
                let t = a.as_ref().ok().filter(|t| !t.is_empty())?;
                let targets: Vec<String> = t.iter().map(describe_target).collect();
                Some(format!("{} lists {}", set.record, targets.join(", ")))
            })
            .collect();
        let own: Vec<String> = advertised
            .iter()
            .map(|a| {
                let addrs: Vec<String> = a.addrs.iter().map(ToString::to_string).collect();
                format!("{} ({})", url_string(&a.url), addrs.join(", "))
            })
            .collect();
        let mut why = mismatches;
        why.push(format!(
            "{}; this member advertises {}",
            listed.join("; "),
            own.join(", ")
        ));
        return Err(DnsSrvError::LocalMemberNotFound {
            name: name.to_string(),
            why: why.join("; "),
        });
    }
    Ok(Discovered { cluster, entries })
}

fn describe_target(t: &Target) -> String {
    let addrs: Vec<String> = t.addrs.iter().map(ToString::to_string).collect();
    format!("{}:{} ({})", t.host, t.port, addrs.join(", "))
}

/// Hosts both record sets list: by name, or by an address they share.
fn shared_hosts(a: &[Target], b: &[Target]) -> Vec<String> {
    let mut shared = BTreeSet::new();
    for x in a {
        for y in b {
            if x.host.eq_ignore_ascii_case(&y.host) || x.addrs.iter().any(|ip| y.addrs.contains(ip))
            {
                shared.insert(x.host.clone());
            }
        }
    }
    shared.into_iter().collect()
}

/// The configuration with `initial_cluster` read from DNS, retrying for
/// [`DISCOVERY_WINDOW`]. Blocks; runs its lookups on a runtime of its own, so it may be
/// called from anywhere, including inside another runtime.
pub fn discover(cfg: &Config) -> Result<Config, DnsSrvError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DnsSrvError::ResolverConfig(e.to_string()))?;
            rt.block_on(discover_with_retries(cfg))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(DnsSrvError::ResolverConfig(
                "DNS SRV discovery panicked".into(),
            ))
        })
    })
}

async fn discover_with_retries(cfg: &Config) -> Result<Config, DnsSrvError> {
    let sets = record_sets(&cfg.discovery_srv, &cfg.discovery_srv_name);
    let notifier = Notifier::from_env();
    let deadline = Instant::now() + DISCOVERY_WINDOW;
    let mut last_logged: Option<DnsSrvError> = None;
    loop {
        let result = discover_once(cfg, &sets).await;
        let err = match result {
            Ok(found) => {
                for e in &found.entries {
                    tracing::info!(node = %e, "got bootstrap from DNS for etcd-server");
                }
                let mut cfg = cfg.clone();
                cfg.initial_cluster = found.cluster;
                return Ok(cfg);
            }
            Err(e) => e,
        };
        if Instant::now() + RETRY_INTERVAL >= deadline {
            tracing::warn!(error = %err, "failed to resolve during SRV discovery");
            return Err(err);
        }
        if last_logged.as_ref() != Some(&err) {
            tracing::warn!(
                error = %err,
                records = %format!("{}, {}", sets[0].record, sets[1].record),
                "waiting for DNS SRV records that list this member; retrying for up to {}s",
                DISCOVERY_WINDOW.as_secs()
            );
            notifier.status(&format!(
                "waiting for DNS SRV records {} or {} to list this member: {}",
                sets[0].record,
                sets[1].record,
                short(&err)
            ));
            last_logged = Some(err);
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// A one-line reason for `STATUS=`.
fn short(e: &DnsSrvError) -> String {
    match e {
        DnsSrvError::NoRecords(_) => "no records yet".into(),
        DnsSrvError::LocalMemberNotFound { .. } => "this member is not among them yet".into(),
        other => other.to_string(),
    }
}

async fn discover_once(cfg: &Config, sets: &[RecordSet; 2]) -> Result<Discovered, DnsSrvError> {
    let advertised = resolve_advertised(&cfg.initial_advertise_peer_urls).await?;
    // A fresh resolver each time: /etc/resolv.conf re-read, no cached negative answers.
    let mut builder =
        TokioResolver::builder_tokio().map_err(|e| DnsSrvError::ResolverConfig(e.to_string()))?;
    builder.options_mut().timeout = QUERY_TIMEOUT;
    builder.options_mut().cache_size = 0;
    let resolver = builder
        .build()
        .map_err(|e| DnsSrvError::ResolverConfig(e.to_string()))?;
    let mut answers = Vec::new();
    for set in sets {
        let answer = lookup_set(&resolver, set).await?;
        match &answer {
            Ok(t) => tracing::info!(
                record = %set.record,
                targets = %t.iter().map(describe_target).collect::<Vec<_>>().join(", "),
                "get cluster for {} SRV",
                if set.scheme == "https" { "etcd-server-ssl" } else { "etcd-server" }
            ),
            Err(e) => tracing::debug!(record = %set.record, error = %e, "no SRV answer"),
        }
        answers.push((set.clone(), answer));
    }
    assemble(&cfg.name, &advertised, &answers)
}

/// The set's targets, each resolved. A missing record set is an `Ok(Err)`: the other
/// set may still do; a target that does not resolve is an error of its own.
async fn lookup_set(resolver: &TokioResolver, set: &RecordSet) -> Result<SetAnswer, DnsSrvError> {
    let lookup = match resolver.srv_lookup(format!("{}.", set.record)).await {
        Ok(l) => l,
        Err(e) => return Ok(Err(format!("{}: {e}", set.record))),
    };
    let mut records: Vec<(u16, u16, String, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((
                s.priority,
                s.weight,
                s.target.to_utf8().trim_end_matches('.').to_string(),
                s.port,
            )),
            _ => None,
        })
        .collect();
    // Lowest priority first, as clients would try them; names follow this order.
    records.sort_by(|a, b| {
        (a.0, std::cmp::Reverse(a.1), &a.2, a.3).cmp(&(b.0, std::cmp::Reverse(b.1), &b.2, b.3))
    });
    records.dedup_by(|a, b| a.2 == b.2 && a.3 == b.3);
    let mut targets = Vec::new();
    for (_, _, host, port) in records {
        let resolved = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>());
        let addrs = match resolved {
            Ok(a) => a,
            Err(e) => {
                return Err(DnsSrvError::UnresolvableTarget {
                    record: set.record.clone(),
                    target: host,
                    port,
                    error: e.to_string(),
                });
            }
        };
        targets.push(Target { host, port, addrs });
    }
    Ok(Ok(targets))
}

async fn resolve_advertised(urls: &[Url]) -> Result<Vec<Advertised>, DnsSrvError> {
    let mut out = Vec::new();
    for url in urls {
        let port = url.port_or_known_default().unwrap_or(0);
        let addrs = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(url::Host::Domain(host)) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| DnsSrvError::UnresolvableAdvertiseUrl {
                    url: url_string(url),
                    error: e.to_string(),
                })?
                .collect(),
            None => Vec::new(),
        };
        out.push(Advertised {
            url: url.clone(),
            addrs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::member_id;

    fn target(host: &str, port: u16, ip: &str) -> Target {
        Target {
            host: host.into(),
            port,
            addrs: vec![ip.parse().unwrap()],
        }
    }

    fn advertised(url: &str, addr: &str) -> Advertised {
        Advertised {
            url: Url::parse(url).unwrap(),
            addrs: vec![addr.parse().unwrap()],
        }
    }

    fn seed_targets(port: u16) -> Vec<Target> {
        (0..3)
            .map(|i| {
                target(
                    &format!("infra{i}.example.com"),
                    port,
                    &format!("10.0.1.1{i}"),
                )
            })
            .collect()
    }

    #[test]
    fn record_names_follow_etcd() {
        let [ssl, plain] = record_sets("example.com", "foo");
        assert_eq!(ssl.record, "_etcd-server-ssl-foo._tcp.example.com");
        assert_eq!(plain.record, "_etcd-server-foo._tcp.example.com");
        let [ssl, plain] = record_sets("example.com.", "");
        assert_eq!(
            (ssl.scheme, ssl.service.as_str()),
            ("https", "etcd-server-ssl")
        );
        assert_eq!(plain.record, "_etcd-server._tcp.example.com");
    }

    #[test]
    fn self_is_matched_by_address_and_port_and_ids_hash_the_srv_urls() {
        let [ssl, plain] = record_sets("example.com", "");
        let me = [advertised("http://10.0.1.11:2380", "10.0.1.11:2380")];
        let found = assemble(
            "infra1",
            &me,
            &[
                (ssl, Err("no such record".into())),
                (plain, Ok(seed_targets(2380))),
            ],
        )
        .unwrap();
        assert_eq!(
            found.entries,
            [
                "0=http://infra0.example.com:2380",
                "infra1=http://infra1.example.com:2380",
                "1=http://infra2.example.com:2380",
            ]
        );
        let own = found.cluster.get("infra1").unwrap();
        assert_eq!(
            format!("{:x}", member_id(own, "etcd-cluster-1", None)),
            format!(
                "{:x}",
                member_id(
                    &[Url::parse("http://infra1.example.com:2380").unwrap()],
                    "etcd-cluster-1",
                    None
                )
            )
        );
        // The same address on another port is not this member.
        let other_port = [advertised("http://10.0.1.11:2381", "10.0.1.11:2381")];
        let [ssl, plain] = record_sets("example.com", "");
        let e = assemble(
            "infra1",
            &other_port,
            &[(ssl, Ok(vec![])), (plain, Ok(seed_targets(2380)))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("error setting up initial cluster: cannot find local etcd member \"infra1\" in SRV records ("),
            "{e}"
        );
        assert!(
            e.contains("_etcd-server._tcp.example.com lists infra0.example.com:2380 (10.0.1.10)"),
            "{e}"
        );
    }

    #[test]
    fn both_record_sets_listing_the_same_hosts_are_refused() {
        let [ssl, plain] = record_sets("example.com", "");
        let me = [advertised("https://10.0.1.10:2380", "10.0.1.10:2380")];
        let e = assemble(
            "infra0",
            &me,
            &[
                (ssl, Ok(seed_targets(2380))),
                (plain, Ok(seed_targets(2380))),
            ],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DNS SRV records _etcd-server-ssl._tcp.example.com and _etcd-server._tcp.example.com both list infra0.example.com, infra1.example.com, infra2.example.com: every member would derive different member IDs and the cluster would never form. Publish one of them: _etcd-server-ssl._tcp.example.com for https:// peers, or _etcd-server._tcp.example.com for http:// peers"
        );
    }

    #[test]
    fn a_scheme_mismatch_is_named() {
        let [ssl, plain] = record_sets("example.com", "");
        let me = [advertised("http://10.0.1.10:2380", "10.0.1.10:2380")];
        let e = assemble(
            "infra0",
            &me,
            &[(ssl, Ok(seed_targets(2380))), (plain, Err("gone".into()))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot find local etcd member \"infra0\" in SRV records (bootstrap at https://infra0.example.com:2380 from DNS for etcd-server-ssl has scheme mismatch with expected peer http://10.0.1.10:2380"), "{e}");
    }

    #[test]
    fn no_records_names_both_sets() {
        let [ssl, plain] = record_sets("example.com", "x");
        let me = [advertised("http://10.0.1.10:2380", "10.0.1.10:2380")];
        let e = assemble(
            "infra0",
            &me,
            &[
                (
                    ssl,
                    Err("_etcd-server-ssl-x._tcp.example.com: no record found".into()),
                ),
                (plain, Ok(vec![])),
            ],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "error querying DNS SRV records for _etcd-server-ssl-x _etcd-server-ssl-x._tcp.example.com: no record found; error querying DNS SRV records for _etcd-server-x _etcd-server-x._tcp.example.com: no records"
        );
    }
}
