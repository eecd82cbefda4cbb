//! `provision check`: an inventory, and the bundles already rendered from it, looked at
//! the way the hosts will see them.
//!
//! The bundles are read as files, not re-derived from the inventory, so hand edits and
//! half-copied output are caught: every env file passes qetcd's validation and matches
//! the inventory; the cluster-wide variables agree across hosts; every certificate an
//! env file names exists, belongs to its key, chains to the CA the env file trusts,
//! covers every host name of every URL it serves, and is not about to expire.

pub mod dns;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::bundle::layout;
use crate::dns as records;
use crate::inventory::{Inventory, TlsMode};
use crate::pki::{CertFacts, RENEW_BEFORE_DAYS, key_public_bits};
use crate::render;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}", self.message)
    }
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, m: impl Into<String>) {
        self.0.push(Finding {
            severity: Severity::Error,
            message: m.into(),
        });
    }
    fn warn(&mut self, m: impl Into<String>) {
        self.0.push(Finding {
            severity: Severity::Warning,
            message: m.into(),
        });
    }
}

/// Variables that must be the same text on every host.
const CLUSTER_WIDE: [&str; 8] = [
    "ETCD_INITIAL_CLUSTER",
    "ETCD_DISCOVERY",
    "ETCD_DISCOVERY_TOKEN",
    "ETCD_DISCOVERY_ENDPOINTS",
    "ETCD_DISCOVERY_SRV",
    "ETCD_DISCOVERY_SRV_NAME",
    "ETCD_INITIAL_CLUSTER_TOKEN",
    "ETCD_INITIAL_CLUSTER_STATE",
];

/// Everything wrong with `inv` and, with `out`, with the bundles in it.
pub fn check(inv: &Inventory, out: Option<&Path>, now: OffsetDateTime) -> Vec<Finding> {
    let mut f = Findings::default();
    for w in &inv.warnings {
        f.warn(w.to_string());
    }
    for m in &inv.members {
        if let Err(e) = render::validate(inv, &m.name, &render::env_vars(inv, m)) {
            f.error(e.to_string());
        }
    }
    if let Some(out) = out {
        check_output(inv, out, now, &mut f);
    }
    f.0
}

fn rel(path: &Path) -> String {
    path.display().to_string()
}

fn check_output(inv: &Inventory, out: &Path, now: OffsetDateTime, f: &mut Findings) {
    let mut envs: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for m in &inv.members {
        let path = layout::on_host(&m.name, layout::ENV_FILE);
        let text = match std::fs::read_to_string(out.join(&path)) {
            Ok(t) => t,
            Err(e) => {
                f.error(format!(
                    "{}: {e} (run `provision render` first)",
                    rel(&path)
                ));
                continue;
            }
        };
        let vars = render::parse_env_file(&text);
        if let Err(e) = render::validate(inv, &m.name, &vars) {
            f.error(format!("{}: {e}", rel(&path)));
        }
        let want = render::env_vars(inv, m);
        let differing: Vec<String> = want
            .iter()
            .map(|(k, _)| k)
            .chain(vars.iter().map(|(k, _)| k))
            .filter(|k| get(&vars, k) != get(&want, k))
            .map(|k| {
                format!(
                    "{k}: has {:?}, inventory gives {:?}",
                    get(&vars, k).unwrap_or("(unset)"),
                    get(&want, k).unwrap_or("(unset)")
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !differing.is_empty() {
            f.error(format!(
                "{}: differs from the inventory; run `provision render` ({})",
                rel(&path),
                differing.join("; ")
            ));
        }
        check_host_tls(&m.name, &vars, out, now, f);
        // A member added later starts with `existing` and the cluster it joined: it
        // agrees with the inventory (above), not with the bootstrap members.
        if m.joined.is_none() {
            envs.insert(&m.name, vars);
        }
    }
    // The other rendered texts are derived from the inventory alone: they must read
    // exactly as a render would write them.
    let mut texts: Vec<(PathBuf, String)> = inv
        .members
        .iter()
        .map(|m| {
            (
                layout::on_host(&m.name, layout::DROPIN),
                render::dropin(inv, m),
            )
        })
        .collect();
    texts.push((
        layout::admin().join("etcdctl.env"),
        render::etcdctl_env(inv),
    ));
    if let (Some(zone), Some(conf)) = (records::bind_zone(inv), records::dnsmasq_conf(inv)) {
        texts.push((layout::bind_zone(), zone));
        texts.push((layout::dnsmasq_conf(), conf));
    }
    for (path, want) in texts {
        match std::fs::read_to_string(out.join(&path)) {
            Err(e) => f.error(format!("{}: {e} (run `provision render`)", rel(&path))),
            Ok(have) if have != want => f.error(format!(
                "{}: differs from what the inventory renders; run `provision render`",
                rel(&path)
            )),
            Ok(_) => {}
        }
    }
    check_consistency(&envs, f);
    if inv.tls == TlsMode::SelfSigned {
        check_admin(out, now, f);
    }
    check_strays(inv, out, f);
}

fn get<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The cluster-wide variables agree, and each member appears in the initial cluster
/// under exactly the peer URLs it advertises.
fn check_consistency(envs: &BTreeMap<&str, Vec<(String, String)>>, f: &mut Findings) {
    for key in CLUSTER_WIDE {
        let mut values: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
        for (name, vars) in envs {
            values.entry(get(vars, key)).or_default().push(name);
        }
        if values.len() > 1 {
            let groups: Vec<String> = values
                .iter()
                .map(|(v, hosts)| format!("{} on {}", v.unwrap_or("(unset)"), hosts.join(", ")))
                .collect();
            f.error(format!(
                "{key} differs between hosts: {}",
                groups.join(" / ")
            ));
        }
    }
    for (name, vars) in envs {
        let (Some(cluster), Some(own)) = (
            get(vars, "ETCD_INITIAL_CLUSTER"),
            get(vars, "ETCD_INITIAL_ADVERTISE_PEER_URLS"),
        ) else {
            continue;
        };
        let mut listed: Vec<&str> = cluster
            .split(',')
            .filter_map(|e| e.split_once('='))
            .filter(|(n, _)| n == name)
            .map(|(_, u)| u)
            .collect();
        let mut advertised: Vec<&str> = own.split(',').collect();
        listed.sort();
        advertised.sort();
        if listed != advertised {
            f.error(format!(
                "{name}: ETCD_INITIAL_CLUSTER lists it as {listed:?}, but it advertises {advertised:?}"
            ));
        }
    }
}

/// Hosts of every URL in `vars[key]`.
fn url_hosts(vars: &[(String, String)], key: &str) -> Vec<(String, String)> {
    let Some(v) = get(vars, key) else {
        return Vec::new();
    };
    qetcd::config::parse_url_list(v)
        .unwrap_or_default()
        .iter()
        .filter(|u| u.scheme() == "https")
        .filter_map(|u| {
            Some((
                u.as_str().trim_end_matches('/').to_string(),
                u.host_str()?.to_string(),
            ))
        })
        .collect()
}

/// A file an env file names, found inside the host's folder.
fn on_host(name: &str, path: &str) -> PathBuf {
    layout::on_host(name, path)
}

struct Side {
    what: &'static str,
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    urls: [&'static str; 2],
}

const SIDES: [Side; 2] = [
    Side {
        what: "client",
        cert: "ETCD_CERT_FILE",
        key: "ETCD_KEY_FILE",
        ca: "ETCD_TRUSTED_CA_FILE",
        urls: ["ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_CLIENT_URLS"],
    },
    Side {
        what: "peer",
        cert: "ETCD_PEER_CERT_FILE",
        key: "ETCD_PEER_KEY_FILE",
        ca: "ETCD_PEER_TRUSTED_CA_FILE",
        urls: ["ETCD_INITIAL_ADVERTISE_PEER_URLS", "ETCD_LISTEN_PEER_URLS"],
    },
];

fn check_host_tls(
    name: &str,
    vars: &[(String, String)],
    out: &Path,
    now: OffsetDateTime,
    f: &mut Findings,
) {
    for side in &SIDES {
        let Some(cert_path) = get(vars, side.cert).filter(|p| !p.is_empty()) else {
            continue;
        };
        let cert_rel = on_host(name, cert_path);
        let Some(cert) = read_cert(out, &cert_rel, f) else {
            continue;
        };
        check_expiry(&cert_rel, &cert, now, f);
        if !(cert.server_auth && cert.client_auth) {
            f.error(format!(
                "{}: needs extended key usages serverAuth and clientAuth (it serves {} connections and qetcd also dials with it)",
                rel(&cert_rel),
                side.what
            ));
        }
        for key in side.urls {
            for (url, host) in url_hosts(vars, key) {
                if !cert.covers(&host) {
                    f.error(format!(
                        "{}: does not cover {host}, but {name} serves {url} ({key}); its SANs are {}",
                        rel(&cert_rel),
                        cert.sans
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        if let Some(key_path) = get(vars, side.key) {
            check_key(out, &on_host(name, key_path), &cert_rel, &cert, 0o640, f);
        }
        if let Some(ca_path) = get(vars, side.ca) {
            let ca_rel = on_host(name, ca_path);
            if let Some(ca) = read_cert(out, &ca_rel, f) {
                check_expiry(&ca_rel, &ca, now, f);
                check_issued_by(&cert_rel, &cert, &ca_rel, &ca, f);
            }
        }
    }
}

fn read_cert(out: &Path, rel_path: &Path, f: &mut Findings) -> Option<CertFacts> {
    match std::fs::read_to_string(out.join(rel_path)) {
        Err(e) => {
            f.error(format!("{}: {e}", rel(rel_path)));
            None
        }
        Ok(pem) => {
            let c = CertFacts::from_pem(&pem);
            if c.is_none() {
                f.error(format!("{}: not a PEM certificate", rel(rel_path)));
            }
            c
        }
    }
}

fn check_expiry(path: &Path, c: &CertFacts, now: OffsetDateTime, f: &mut Findings) {
    let left = c.days_left(now);
    if left < 0 {
        f.error(format!("{}: expired {} days ago", rel(path), -left));
    } else if left < RENEW_BEFORE_DAYS {
        f.warn(format!(
            "{}: expires in {left} days (`provision render` renews member and admin certificates)",
            rel(path)
        ));
    }
}

fn check_issued_by(path: &Path, c: &CertFacts, ca_path: &Path, ca: &CertFacts, f: &mut Findings) {
    if !ca.is_ca {
        f.error(format!("{}: is not a CA certificate", rel(ca_path)));
    } else if ca.subject_key_id.is_none() || c.authority_key_id != ca.subject_key_id {
        f.error(format!(
            "{}: not issued by {} (the CA its peers are told to trust)",
            rel(path),
            rel(ca_path)
        ));
    }
}

/// The key exists, belongs to the certificate, and no one outside `max_mode` reads it.
fn check_key(
    out: &Path,
    key_rel: &Path,
    cert_rel: &Path,
    cert: &CertFacts,
    max_mode: u32,
    f: &mut Findings,
) {
    let path = out.join(key_rel);
    match std::fs::read_to_string(&path) {
        Err(e) => f.error(format!("{}: {e}", rel(key_rel))),
        Ok(pem) => match key_public_bits(&pem) {
            None => f.error(format!("{}: not a usable private key", rel(key_rel))),
            Some(bits) if bits != cert.public_key => f.error(format!(
                "{}: does not belong to {}",
                rel(key_rel),
                rel(cert_rel)
            )),
            Some(_) => {}
        },
    }
    if let Ok(m) = std::fs::metadata(&path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & !max_mode != 0 {
            f.error(format!(
                "{}: mode {mode:04o} gives away a private key (at most {max_mode:04o})",
                rel(key_rel)
            ));
        }
    }
}

fn check_admin(out: &Path, now: OffsetDateTime, f: &mut Findings) {
    let admin = layout::admin();
    let (cert_rel, ca_rel) = (admin.join("admin.crt"), admin.join("client-ca.crt"));
    let (Some(cert), Some(ca)) = (read_cert(out, &cert_rel, f), read_cert(out, &ca_rel, f)) else {
        return;
    };
    check_expiry(&cert_rel, &cert, now, f);
    check_issued_by(&cert_rel, &cert, &ca_rel, &ca, f);
    if !cert.client_auth {
        f.error(format!(
            "{}: needs extended key usage clientAuth",
            rel(&cert_rel)
        ));
    }
    check_key(out, &admin.join("admin.key"), &cert_rel, &cert, 0o600, f);
}

/// Bundles of hosts the inventory no longer lists.
fn check_strays(inv: &Inventory, out: &Path, f: &mut Findings) {
    let Ok(dirs) = std::fs::read_dir(out) else {
        return;
    };
    let mut strays: Vec<String> = dirs
        .filter_map(Result::ok)
        .filter_map(|d| d.file_name().into_string().ok())
        .filter(|n| !inv.members.iter().any(|m| &m.name == n))
        .filter(|n| out.join(layout::on_host(n, layout::ENV_FILE)).exists())
        .collect();
    strays.sort();
    for s in strays {
        f.warn(format!(
            "{s}/: a bundle for a host the inventory does not list (a removed member?)"
        ));
    }
}
