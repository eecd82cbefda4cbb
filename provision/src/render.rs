//! What goes into each file: the member's `ETCD_*` environment, the systemd drop-in,
//! and the operator's `etcdctl.env`; each env file checked by the daemon's own
//! `Config` before anything is written.
//!
//! Rules the rendering keeps:
//! - listen URLs are IPs (a name would make the listener depend on DNS at boot);
//! - advertised URLs are the member's address, never localhost, since other members
//!   and clients dial them;
//! - `ETCD_INITIAL_CLUSTER` is the same text on every host, in inventory order.

use std::net::{IpAddr, SocketAddr};

use qetcd::config::{Config, Parsed};

use crate::bundle::{SERVICE_GROUP, layout};
use crate::inventory::{DEFAULT_DATA_DIR, Inventory, Member, TlsMode};

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

fn client_url(inv: &Inventory, m: &Member) -> String {
    url(inv.tls.scheme(), m.address, inv.client_port)
}

fn peer_url(inv: &Inventory, m: &Member) -> String {
    url(inv.tls.scheme(), m.address, inv.peer_port)
}

/// `name=peer-url,...` for all members, identical on every host.
pub fn initial_cluster(inv: &Inventory) -> String {
    inv.members
        .iter()
        .map(|m| format!("{}={}", m.name, peer_url(inv, m)))
        .collect::<Vec<_>>()
        .join(",")
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
        ("ETCD_LISTEN_PEER_URLS", peer_url(inv, m)),
        ("ETCD_LISTEN_CLIENT_URLS", listen_client.join(",")),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer_url(inv, m)),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url(inv, m)),
        ("ETCD_INITIAL_CLUSTER", initial_cluster(inv)),
        ("ETCD_INITIAL_CLUSTER_TOKEN", inv.token.clone()),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".into()),
    ];
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
pub fn validate(member: &str, vars: &[(String, String)]) -> Result<(), RenderError> {
    let rejected = |message: String| RenderError::Rejected {
        member: member.to_string(),
        message,
    };
    let config = match Config::parse(["qetcd"], vars).map_err(|e| rejected(e.to_string()))? {
        Parsed::Run { config, warnings } => {
            if !warnings.is_empty() {
                return Err(rejected(warnings.join("; ")));
            }
            config
        }
        Parsed::Help(_) | Parsed::Version => {
            return Err(rejected("parsed as a --help or --version request".into()));
        }
    };
    config.validate().map_err(|e| rejected(e.to_string()))?;
    config
        .validate_new_cluster()
        .map_err(|e| rejected(e.to_string()))
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
            validate(&m.name, &vars).unwrap();
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
            validate("a", &vars).unwrap();
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
        let e = validate("infra0", &vars).unwrap_err().to_string();
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
}
