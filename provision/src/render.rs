//! What goes into each file: the member's `ETCD_*` environment, the systemd drop-in,
//! and the operator's `etcdctl.env`; each env file checked by the daemon's own
//! `Config` before anything is written.
//!
//! Rules the rendering keeps:
//! - listen URLs are IPs (a name would make the listener depend on DNS at boot);
//! - advertised URLs are the member's address, never localhost, since other members
//!   and clients dial them;
//! - `ETCD_INITIAL_CLUSTER` is the same text on every host, in inventory order;
//! - with `bootstrap = "dns"` there is no `ETCD_INITIAL_CLUSTER`: `ETCD_DISCOVERY_SRV`
//!   names the domain, and the advertised peer URL is the member's hostname, written
//!   exactly as the SRV records give it (`<scheme>://<target>:<port>`), so the member
//!   finds itself in the records and every member hashes the same URLs into IDs;
//! - with `bootstrap = "discovery"` there is no `ETCD_INITIAL_CLUSTER` either:
//!   `ETCD_DISCOVERY_TOKEN` and `ETCD_DISCOVERY_ENDPOINTS` (v3) or `ETCD_DISCOVERY` (v2)
//!   name the token, and each member registers its own advertised peer URL.

use std::net::{IpAddr, SocketAddr};

use qetcd::config::{Config, Parsed};

use crate::bundle::{SERVICE_GROUP, layout};
use crate::inventory::{Bootstrap, DEFAULT_DATA_DIR, EtcdDiscovery, Inventory, Member, TlsMode};
use qetcd::config::InitialCluster;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The daemon would refuse (or warn about) what we rendered: a bug here, or an
    /// inventory value the daemon does not accept.
    #[error("{member}: the rendered configuration fails qetcd's own validation: {message}")]
    Rejected { member: String, message: String },
}

fn url(scheme: &str, ip: IpAddr, port: u16) -> String {
    format!("{scheme}://{}", SocketAddr::new(ip, port))
}

pub fn client_url(inv: &Inventory, m: &Member) -> String {
    url(inv.tls.scheme(), m.address, inv.client_port)
}

fn listen_peer_url(inv: &Inventory, m: &Member) -> String {
    url(inv.tls.scheme(), m.address, inv.peer_port)
}

/// The peer URL `m` advertises: its address, or with DNS SRV discovery the target of
/// its SRV record (its hostname, which validation made mandatory there).
pub fn advertised_peer_url(inv: &Inventory, m: &Member) -> String {
    match (inv.srv(), &m.hostname) {
        (Some(_), Some(host)) => format!("{}://{host}:{}", inv.tls.scheme(), inv.peer_port),
        _ => listen_peer_url(inv, m),
    }
}

/// `name=peer-url,...` for the bootstrap members (those not added later with
/// `provision member add`, removed ones included: this is what they started with),
/// identical on every bootstrap host. With DNS SRV discovery it is not rendered, but
/// it is what the members will read from the records (under their real names), so
/// validation checks against it.
pub fn initial_cluster(inv: &Inventory) -> String {
    cluster_list(inv, inv.all_members.iter().filter(|m| m.joined.is_none()))
}

fn cluster_list<'a>(inv: &Inventory, members: impl Iterator<Item = &'a Member>) -> String {
    members
        .map(|m| format!("{}={}", m.name, advertised_peer_url(inv, m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `ETCD_INITIAL_CLUSTER` of a member added to the running cluster: the members it
/// joined and itself, in inventory order — what `etcdctl member add` prints.
pub fn joined_cluster(inv: &Inventory, m: &Member, joined: &[String]) -> String {
    cluster_list(
        inv,
        inv.all_members
            .iter()
            .filter(|o| o.name == m.name || joined.contains(&o.name)),
    )
}

/// Member `m`'s environment, in file order.
pub fn env_vars(inv: &Inventory, m: &Member) -> Vec<(String, String)> {
    let mut listen_client = vec![client_url(inv, m)];
    if inv.listen_localhost {
        listen_client.push(url(
            inv.tls.scheme(),
            IpAddr::from([127, 0, 0, 1]),
            inv.client_port,
        ));
    }
    let mut v: Vec<(&str, String)> = vec![
        ("ETCD_NAME", m.name.clone()),
        ("ETCD_DATA_DIR", inv.data_dir.display().to_string()),
        ("ETCD_LISTEN_PEER_URLS", listen_peer_url(inv, m)),
        ("ETCD_LISTEN_CLIENT_URLS", listen_client.join(",")),
        (
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            advertised_peer_url(inv, m),
        ),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url(inv, m)),
    ];
    // A member added to the running cluster finds it through the members it joined,
    // whatever the bootstrap mode was.
    let bootstrap = match &m.joined {
        Some(_) => &Bootstrap::Static,
        None => &inv.bootstrap,
    };
    match bootstrap {
        Bootstrap::Static => v.push((
            "ETCD_INITIAL_CLUSTER",
            match &m.joined {
                Some(joined) => joined_cluster(inv, m, joined),
                None => initial_cluster(inv),
            },
        )),
        Bootstrap::Dns(srv) => {
            v.push(("ETCD_DISCOVERY_SRV", srv.domain.clone()));
            if let Some(name) = &srv.srv_name {
                v.push(("ETCD_DISCOVERY_SRV_NAME", name.clone()));
            }
        }
        Bootstrap::Discovery(EtcdDiscovery::V3 { token, endpoints }) => {
            v.push(("ETCD_DISCOVERY_TOKEN", token.clone()));
            v.push(("ETCD_DISCOVERY_ENDPOINTS", endpoints.join(",")));
        }
        Bootstrap::Discovery(EtcdDiscovery::V2 { url }) => {
            v.push(("ETCD_DISCOVERY", url.clone()));
        }
    }
    v.extend([
        ("ETCD_INITIAL_CLUSTER_TOKEN", inv.token.clone()),
        (
            "ETCD_INITIAL_CLUSTER_STATE",
            if m.joined.is_some() {
                "existing"
            } else {
                "new"
            }
            .into(),
        ),
    ]);
    let pki = |f: &str| format!("{}/{f}", layout::PKI_DIR);
    match inv.tls {
        TlsMode::None => {}
        TlsMode::SelfSigned => v.extend([
            ("ETCD_CERT_FILE", pki("server.crt")),
            ("ETCD_KEY_FILE", pki("server.key")),
            ("ETCD_TRUSTED_CA_FILE", pki("client-ca.crt")),
            ("ETCD_CLIENT_CERT_AUTH", "true".into()),
            ("ETCD_PEER_CERT_FILE", pki("peer.crt")),
            ("ETCD_PEER_KEY_FILE", pki("peer.key")),
            ("ETCD_PEER_TRUSTED_CA_FILE", pki("peer-ca.crt")),
            ("ETCD_PEER_CLIENT_CERT_AUTH", "true".into()),
        ]),
        TlsMode::Auto => v.extend([
            ("ETCD_AUTO_TLS", "true".into()),
            ("ETCD_PEER_AUTO_TLS", "true".into()),
        ]),
    }
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The env file: `KEY=value` lines that both systemd's `EnvironmentFile=` and
/// `sh`'s `.` read the same way (values never need quoting: the inventory admits
/// only characters that are safe unquoted).
pub fn env_file(inv: &Inventory, m: &Member) -> String {
    let mut s = format!(
        "# qetcd member {} of cluster {}: read by qetcd.service (EnvironmentFile={}).\n\
         # Rendered by `provision render`; change the inventory and render again rather\n\
         # than editing here.\n",
        m.name,
        inv.name,
        layout::ENV_FILE
    );
    for (k, v) in env_vars(inv, m) {
        s.push_str(&format!("{k}={v}\n"));
    }
    s
}

/// Parses an env file back into variables (comments and blank lines skipped).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Checks `vars` the way qetcd will at start-up, including what it checks before
/// bootstrapping a new member. Any warning counts as an error: an unknown variable
/// in a rendered file is a bug. Touches no files and resolves no names (every URL is
/// an IP, and the member's own entry is written exactly as advertised).
///
/// With `ETCD_DISCOVERY_SRV`, the initial cluster qetcd would check comes from DNS at
/// start-up; here it is the one `inv`'s rendered records give ([`initial_cluster`]).
pub fn validate(
    inv: &Inventory,
    member: &str,
    vars: &[(String, String)],
) -> Result<(), RenderError> {
    let rejected = |message: String| RenderError::Rejected {
        member: member.to_string(),
        message,
    };
    let mut config = daemon_config(vars).map_err(rejected)?;
    config.validate().map_err(|e| rejected(e.to_string()))?;
    if !config.discovery_srv.is_empty()
        || !config.discovery.is_empty()
        || !config.discovery_token.is_empty()
    {
        config.initial_cluster = InitialCluster::parse(&initial_cluster(inv))
            .map_err(|e| rejected(format!("discovery would give {e}")))?;
    }
    config
        .validate_new_cluster()
        .map_err(|e| rejected(e.to_string()))
}

/// The daemon's `Config` from `vars`; a warning (such as an unknown variable) is an
/// error.
fn daemon_config(vars: &[(String, String)]) -> Result<Box<Config>, String> {
    let config = match Config::parse(["qetcd"], vars).map_err(|e| e.to_string())? {
        Parsed::Run { config, warnings } => {
            if !warnings.is_empty() {
                return Err(warnings.join("; "));
            }
            config
        }
        Parsed::Help(_) | Parsed::Version => {
            return Err("parsed as a --help or --version request".into());
        }
    };
    Ok(config)
}

/// The domain the daemon will verify this member's peers as, if any: DNS SRV
/// discovery with https peers and no peer CA (etcd-clustering §5.2), decided by the
/// daemon's own rule on `vars`, so peer certificates name the bare domain exactly
/// when the daemon needs it. None of today's TLS modes needs it (`self-signed` gives
/// peers a CA, `auto` is never verified), but a mode without a peer CA would.
pub fn peers_verified_as_domain(vars: &[(String, String)]) -> Option<String> {
    let config = daemon_config(vars).ok()?;
    qetcd::tls::srv_domain::forced_server_name(&config).map(str::to_string)
}

/// The systemd drop-in. The unit already runs qetcd with its data in
/// `StateDirectory=qetcd`; a data dir elsewhere has to be created for the service user
/// and opened up in the sandbox.
pub fn dropin(inv: &Inventory, m: &Member) -> String {
    let mut s = format!(
        "# qetcd member {} of cluster {}: rendered by `provision render`; render again\n\
         # rather than editing here.\n\
         [Service]\n",
        m.name, inv.name
    );
    let dir = inv.data_dir.display();
    if inv.data_dir.as_os_str() == DEFAULT_DATA_DIR {
        s.push_str(&format!(
            "# The data dir is {dir}, the unit's own StateDirectory: nothing to add.\n"
        ));
    } else {
        s.push_str(&format!(
            "# The data dir {dir} is not the unit's StateDirectory ({DEFAULT_DATA_DIR}): create it\n\
             # for the service user before start ('+' runs this outside the sandbox), and let\n\
             # the sandbox write there.\n\
             ExecStartPre=+/usr/bin/install -d -m 0700 -o {SERVICE_GROUP} -g {SERVICE_GROUP} {dir}\n\
             ReadWritePaths={dir}\n"
        ));
    }
    s
}

/// `admin/etcdctl.env`, sourced from the output directory. Paths are made absolute
/// from `$PWD` when sourced, so the file works wherever the output directory is
/// moved, and a later `cd` does not break them.
pub fn etcdctl_env(inv: &Inventory) -> String {
    let endpoints: Vec<String> = inv.members.iter().map(|m| client_url(inv, m)).collect();
    let mut s = format!(
        "# etcdctl for cluster {}. Source it from the provision output directory:\n\
         #   cd <out> && . admin/etcdctl.env && etcdctl endpoint health\n\
         # The certificate paths are taken relative to the directory it is sourced from.\n\
         [ -f admin/etcdctl.env ] || echo \"etcdctl.env: source this file from the provision output directory\" >&2\n\
         export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS={}\n",
        inv.name,
        endpoints.join(",")
    );
    match inv.tls {
        TlsMode::None => {}
        TlsMode::SelfSigned => s.push_str(
            "export ETCDCTL_CACERT=\"$PWD/admin/client-ca.crt\"\n\
             export ETCDCTL_CERT=\"$PWD/admin/admin.crt\"\n\
             export ETCDCTL_KEY=\"$PWD/admin/admin.key\"\n",
        ),
        TlsMode::Auto => s.push_str(
            "# Auto TLS: every member signs its own certificate, so there is nothing to verify\n\
             # it against. Traffic is encrypted, the server is not authenticated. etcdctl 3.4\n\
             # only speaks TLS without a CA file when told not to use plain transport.\n\
             export ETCDCTL_INSECURE_TRANSPORT=false\n\
             export ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true\n",
        ),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(extra: &str) -> Inventory {
        let text = format!(
            "[cluster]\nname = \"c\"\ntoken = \"t-1\"\ntls = \"self-signed\"\n{extra}\n\
             [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
             [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\n\
             [[member]]\nname = \"infra2\"\naddress = \"fd00::12\"\n"
        );
        Inventory::parse("inv.toml", &text).unwrap()
    }

    #[test]
    fn every_member_gets_the_same_initial_cluster_and_its_own_urls() {
        let inv = inventory("");
        let cluster = "infra0=https://10.0.1.10:2380,infra1=https://10.0.1.11:2380,infra2=https://[fd00::12]:2380";
        for m in &inv.members {
            let vars = env_vars(&inv, m);
            let get = |k: &str| vars.iter().find(|(n, _)| n == k).unwrap().1.clone();
            assert_eq!(get("ETCD_INITIAL_CLUSTER"), cluster);
            assert!(!get("ETCD_ADVERTISE_CLIENT_URLS").contains("127.0.0.1"));
            validate(&inv, &m.name, &vars).unwrap();
            assert_eq!(parse_env_file(&env_file(&inv, m)), vars);
        }
        let vars = env_vars(&inv, &inv.members[2]);
        assert!(vars.contains(&(
            "ETCD_LISTEN_CLIENT_URLS".into(),
            "https://[fd00::12]:2379,https://127.0.0.1:2379".into()
        )));
    }

    #[test]
    fn each_tls_mode_renders_a_configuration_qetcd_accepts() {
        for mode in ["none", "self-signed", "auto"] {
            let text = format!(
                "[cluster]\nname = \"c\"\ntoken = \"t\"\ntls = \"{mode}\"\nlisten_localhost = false\n\
                 [[member]]\nname = \"a\"\naddress = \"10.0.0.1\"\n"
            );
            let inv = Inventory::parse("x.toml", &text).unwrap();
            let vars = env_vars(&inv, &inv.members[0]);
            validate(&inv, "a", &vars).unwrap();
            let scheme = if mode == "none" {
                "http://"
            } else {
                "https://"
            };
            assert!(
                vars.iter()
                    .filter(|(k, _)| k.ends_with("_URLS"))
                    .all(|(_, v)| v.starts_with(scheme) && !v.contains("127.0.0.1"))
            );
        }
    }

    #[test]
    fn an_unknown_variable_is_an_error() {
        let inv = inventory("");
        let mut vars = env_vars(&inv, &inv.members[0]);
        vars.push(("ETCD_NO_SUCH_THING".into(), "1".into()));
        let e = validate(&inv, "infra0", &vars).unwrap_err().to_string();
        assert!(e.contains("ETCD_NO_SUCH_THING"), "{e}");
    }

    #[test]
    fn dropin_opens_a_non_default_data_dir() {
        let inv = inventory("data_dir = \"/srv/qetcd\"");
        let d = dropin(&inv, &inv.members[0]);
        assert!(d.contains("ReadWritePaths=/srv/qetcd\n"), "{d}");
        assert!(d.contains("install -d -m 0700 -o qetcd -g qetcd /srv/qetcd"));
        let inv = inventory("");
        assert!(!dropin(&inv, &inv.members[0]).contains("ReadWritePaths"));
    }

    fn dns_inventory(extra: &str) -> Inventory {
        let text = format!(
            "[cluster]\nname = \"c\"\ntoken = \"t-1\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\n{extra}\n\
             [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
             [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\nhostname = \"infra1.example.com\"\n\
             [[member]]\nname = \"infra2\"\naddress = \"fd00::12\"\nhostname = \"infra2.example.com\"\n"
        );
        Inventory::parse("inv.toml", &text).unwrap()
    }

    #[test]
    fn dns_bootstrap_names_the_domain_instead_of_the_cluster() {
        for (tls, scheme) in [
            ("self-signed", "https"),
            ("auto", "https"),
            ("none", "http"),
        ] {
            let inv = dns_inventory(&format!("tls = \"{tls}\"\nsrv_name = \"dev\""));
            for (i, m) in inv.members.iter().enumerate() {
                let vars = env_vars(&inv, m);
                let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                assert_eq!(get("ETCD_INITIAL_CLUSTER"), None);
                assert_eq!(get("ETCD_DISCOVERY_SRV"), Some("example.com"));
                assert_eq!(get("ETCD_DISCOVERY_SRV_NAME"), Some("dev"));
                // Advertised as the SRV target, listening on the address.
                assert_eq!(
                    get("ETCD_INITIAL_ADVERTISE_PEER_URLS").unwrap(),
                    format!("{scheme}://infra{i}.example.com:2380")
                );
                assert!(
                    !get("ETCD_LISTEN_PEER_URLS")
                        .unwrap()
                        .contains("example.com"),
                    "{vars:?}"
                );
                assert_eq!(get("ETCD_INITIAL_CLUSTER_TOKEN"), Some("t-1"));
                validate(&inv, &m.name, &vars).unwrap();
                assert_eq!(parse_env_file(&env_file(&inv, m)), vars);
            }
        }
        let inv = dns_inventory("tls = \"none\"");
        let vars = env_vars(&inv, &inv.members[0]);
        assert!(!vars.iter().any(|(k, _)| k == "ETCD_DISCOVERY_SRV_NAME"));
    }

    #[test]
    fn a_dns_env_whose_member_the_records_do_not_list_is_rejected() {
        let inv = dns_inventory("tls = \"none\"");
        let mut vars = env_vars(&inv, &inv.members[0]);
        for (k, v) in &mut vars {
            if k == "ETCD_INITIAL_ADVERTISE_PEER_URLS" {
                *v = "http://10.0.1.10:2380".into();
            }
        }
        // Comparing an IP with the records' host name would need a lookup: refused
        // either way, never resolved here.
        let e = validate(&inv, "infra0", &vars).unwrap_err().to_string();
        assert!(
            e.contains("missing from --initial-advertise-peer-urls"),
            "{e}"
        );
    }

    #[test]
    fn peer_certificates_name_the_domain_only_when_peers_have_no_ca() {
        let inv = dns_inventory("tls = \"self-signed\"");
        let vars = env_vars(&inv, &inv.members[0]);
        assert_eq!(peers_verified_as_domain(&vars), None);
        let without_ca: Vec<(String, String)> = vars
            .iter()
            .filter(|(k, _)| k != "ETCD_PEER_TRUSTED_CA_FILE")
            .cloned()
            .collect();
        assert_eq!(
            peers_verified_as_domain(&without_ca).as_deref(),
            Some("example.com")
        );
        let auto = dns_inventory("tls = \"auto\"");
        assert_eq!(
            peers_verified_as_domain(&env_vars(&auto, &auto.members[0])),
            None
        );
        let static_inv = inventory("");
        assert_eq!(
            peers_verified_as_domain(&env_vars(&static_inv, &static_inv.members[0])),
            None
        );
    }

    #[test]
    fn discovery_bootstrap_names_the_token_instead_of_the_cluster() {
        let v3 = inventory(
            "bootstrap = \"discovery\"\ndiscovery_token = \"abc\"\ndiscovery_endpoints = [\"http://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]",
        );
        for m in &v3.members {
            let vars = env_vars(&v3, m);
            let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("ETCD_INITIAL_CLUSTER"), None);
            assert_eq!(get("ETCD_DISCOVERY_TOKEN"), Some("abc"));
            assert_eq!(
                get("ETCD_DISCOVERY_ENDPOINTS"),
                Some("http://10.0.0.5:2379,http://10.0.0.6:2379")
            );
            validate(&v3, &m.name, &vars).unwrap();
        }
        let v2 = inventory(
            "bootstrap = \"discovery\"\ndiscovery_url = \"http://10.0.0.5:2379/v2/keys/_etcd/registry/abc\"",
        );
        let vars = env_vars(&v2, &v2.members[0]);
        assert!(vars.contains(&(
            "ETCD_DISCOVERY".into(),
            "http://10.0.0.5:2379/v2/keys/_etcd/registry/abc".into()
        )));
        assert!(!vars.iter().any(|(k, _)| k == "ETCD_INITIAL_CLUSTER"));
        validate(&v2, "infra0", &vars).unwrap();
    }
}
