//! The DNS records a `bootstrap = "dns"` cluster depends on, derived from the inventory,
//! and their texts for BIND and dnsmasq.
//!
//! SRV discovery only forms a cluster when the records agree with the env files: every
//! target is a member's advertised peer host, on the peer port, in the record set of the
//! peers' scheme, and resolves to the member's address. Writing the records by hand
//! from the same facts is where that agreement gets lost, so they are rendered from the
//! inventory like everything else, and `provision check --dns` compares the live ones
//! with the same list.
//!
//! Records (`<suffix>` is `-<srv_name>` when set):
//! - an A (AAAA for IPv6) record per member hostname;
//! - `_etcd-server-ssl<suffix>._tcp` (https peers) or `_etcd-server<suffix>._tcp` (http),
//!   one SRV per member, the name the daemon queries (its own `record_sets`);
//! - `_etcd-client-ssl<suffix>._tcp` or `_etcd-client<suffix>._tcp`, one SRV per member,
//!   for `etcdctl --discovery-srv` and other clients.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use qetcd::bootstrap::dns_srv::record_sets;

use crate::inventory::{Inventory, SrvDiscovery};

/// Time to live of every rendered record: members read them once, at their first
/// start, so short enough that a corrected record is seen on the next attempt.
pub const TTL: u32 = 300;

/// The record types rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    A,
    Aaaa,
    Srv,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::A => "A",
            Kind::Aaaa => "AAAA",
            Kind::Srv => "SRV",
        })
    }
}

/// All records of one name and type: addresses, or SRV `target:port` (priority and
/// weight are always 0 and not compared: operators may tune them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Without the trailing dot.
    pub name: String,
    pub kind: Kind,
    pub values: BTreeSet<String>,
}

impl fmt::Display for RecordSet {
    /// `SRV _etcd-server-ssl._tcp.example.com`: how messages name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

fn suffix(srv: &SrvDiscovery) -> String {
    srv.srv_name
        .as_ref()
        .map(|n| format!("-{n}"))
        .unwrap_or_default()
}

/// The server record set members query, for the peers' scheme.
pub fn server_record(inv: &Inventory, srv: &SrvDiscovery) -> String {
    let scheme = inv.tls.scheme();
    record_sets(&srv.domain, srv.srv_name.as_deref().unwrap_or(""))
        .into_iter()
        .find(|s| s.scheme == scheme)
        .map(|s| s.record)
        .expect("record sets exist for http and https")
}

/// The other server record set: the daemon refuses to start when both list the same
/// hosts, so it must stay empty of them.
pub fn conflicting_server_record(inv: &Inventory, srv: &SrvDiscovery) -> String {
    let scheme = inv.tls.scheme();
    record_sets(&srv.domain, srv.srv_name.as_deref().unwrap_or(""))
        .into_iter()
        .find(|s| s.scheme != scheme)
        .map(|s| s.record)
        .expect("record sets exist for http and https")
}

/// The client record set, for the client URLs' scheme (etcd-clustering §5.3).
pub fn client_record(inv: &Inventory, srv: &SrvDiscovery) -> String {
    let ssl = if inv.tls.scheme() == "https" {
        "-ssl"
    } else {
        ""
    };
    format!("_etcd-client{ssl}{}._tcp.{}", suffix(srv), srv.domain)
}

/// Every record set the inventory needs, in rendering order: addresses in member
/// order, then the server and client SRV sets. Empty for a static cluster.
pub fn records(inv: &Inventory) -> Vec<RecordSet> {
    let Some(srv) = inv.srv() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in &inv.members {
        let Some(host) = &m.hostname else { continue };
        out.push(RecordSet {
            name: host.clone(),
            kind: match m.address {
                IpAddr::V4(_) => Kind::A,
                IpAddr::V6(_) => Kind::Aaaa,
            },
            values: BTreeSet::from([m.address.to_string()]),
        });
    }
    for (name, port) in [
        (server_record(inv, srv), inv.peer_port),
        (client_record(inv, srv), inv.client_port),
    ] {
        out.push(RecordSet {
            name,
            kind: Kind::Srv,
            values: srv_targets(inv, port)
                .map(|(t, p)| format!("{t}:{p}"))
                .collect(),
        });
    }
    out
}

/// `(hostname, port)` of each member, in inventory order.
fn srv_targets(inv: &Inventory, port: u16) -> impl Iterator<Item = (&str, u16)> {
    inv.members
        .iter()
        .filter_map(move |m| Some((m.hostname.as_deref()?, port)))
}

/// The SRV sets with their targets in inventory order (a `RecordSet` sorts them).
fn srv_lines<'a>(inv: &'a Inventory, srv: &SrvDiscovery) -> Vec<(String, &'a str, u16)> {
    let mut out = Vec::new();
    for (name, port) in [
        (server_record(inv, srv), inv.peer_port),
        (client_record(inv, srv), inv.client_port),
    ] {
        for (target, port) in srv_targets(inv, port) {
            out.push((name.clone(), target, port));
        }
    }
    out
}

/// A BIND zone-file fragment for `$INCLUDE` in the domain's zone. Names are absolute,
/// so it does not depend on the zone's `$ORIGIN`, and every record carries its TTL,
/// so it does not depend on the zone's `$TTL`. `None` for a static cluster.
pub fn bind_zone(inv: &Inventory) -> Option<String> {
    let srv = inv.srv()?;
    let mut s = format!(
        "; DNS SRV discovery records of qetcd cluster {} (bootstrap = \"dns\"), rendered by\n\
         ; `provision render`. Include it in the zone of {} with `$INCLUDE <path>`;\n\
         ; the names are absolute. `provision check <inventory> --dns` verifies what is served.\n",
        inv.name, srv.domain
    );
    for m in &inv.members {
        let Some(host) = &m.hostname else { continue };
        let kind = match m.address {
            IpAddr::V4(_) => "A",
            IpAddr::V6(_) => "AAAA",
        };
        s.push_str(&format!("{host}.\t{TTL}\tIN\t{kind}\t{}\n", m.address));
    }
    for (name, target, port) in srv_lines(inv, srv) {
        s.push_str(&format!("{name}.\t{TTL}\tIN\tSRV\t0 0 {port} {target}.\n"));
    }
    Some(s)
}

/// A dnsmasq configuration fragment (`/etc/dnsmasq.d/`, or `conf-file=`), for a dnsmasq
/// that answers for the domain. `None` for a static cluster.
pub fn dnsmasq_conf(inv: &Inventory) -> Option<String> {
    let srv = inv.srv()?;
    let mut s = format!(
        "# DNS SRV discovery records of qetcd cluster {} (bootstrap = \"dns\"), rendered by\n\
         # `provision render`. Load it into the dnsmasq that answers for {} (e.g. copy it\n\
         # to /etc/dnsmasq.d/) and restart dnsmasq, which reads srv-host= only at start.\n\
         # `provision check <inventory> --dns` verifies what is served.\n",
        inv.name, srv.domain
    );
    for m in &inv.members {
        let Some(host) = &m.hostname else { continue };
        s.push_str(&format!("host-record={host},{},{TTL}\n", m.address));
    }
    for (name, target, port) in srv_lines(inv, srv) {
        s.push_str(&format!("srv-host={name},{target},{port},0,0\n"));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(cluster: &str) -> Inventory {
        let text = format!(
            "[cluster]\nname = \"c\"\ntoken = \"t\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\n{cluster}\n\
             [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
             [[member]]\nname = \"infra1\"\naddress = \"fd00::11\"\nhostname = \"infra1.example.com\"\n\
             [[member]]\nname = \"infra2\"\naddress = \"10.0.1.12\"\nhostname = \"infra2.example.com\"\n"
        );
        Inventory::parse("inv.toml", &text).unwrap()
    }

    #[test]
    fn record_names_follow_the_scheme_and_the_srv_name() {
        let tls = inventory("tls = \"self-signed\"");
        let srv = tls.srv().unwrap();
        assert_eq!(
            server_record(&tls, srv),
            "_etcd-server-ssl._tcp.example.com"
        );
        assert_eq!(
            client_record(&tls, srv),
            "_etcd-client-ssl._tcp.example.com"
        );
        assert_eq!(
            conflicting_server_record(&tls, srv),
            "_etcd-server._tcp.example.com"
        );
        let plain = inventory("tls = \"none\"\nsrv_name = \"dev\"");
        let srv = plain.srv().unwrap();
        assert_eq!(
            server_record(&plain, srv),
            "_etcd-server-dev._tcp.example.com"
        );
        assert_eq!(
            client_record(&plain, srv),
            "_etcd-client-dev._tcp.example.com"
        );
    }

    #[test]
    fn records_cover_every_member() {
        let inv = inventory("tls = \"auto\"\npeer_port = 7001");
        let r = records(&inv);
        let names: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "A infra0.example.com",
                "AAAA infra1.example.com",
                "A infra2.example.com",
                "SRV _etcd-server-ssl._tcp.example.com",
                "SRV _etcd-client-ssl._tcp.example.com",
            ]
        );
        assert_eq!(r[1].values, BTreeSet::from(["fd00::11".to_string()]));
        assert_eq!(
            r[3].values,
            [
                "infra0.example.com:7001",
                "infra1.example.com:7001",
                "infra2.example.com:7001"
            ]
            .map(String::from)
            .into()
        );
        assert!(r[4].values.contains("infra2.example.com:2379"));
    }

    #[test]
    fn bind_and_dnsmasq_texts() {
        let inv = inventory("tls = \"self-signed\"\nsrv_name = \"dev\"");
        let zone = bind_zone(&inv).unwrap();
        for line in [
            "infra0.example.com.\t300\tIN\tA\t10.0.1.10\n",
            "infra1.example.com.\t300\tIN\tAAAA\tfd00::11\n",
            "_etcd-server-ssl-dev._tcp.example.com.\t300\tIN\tSRV\t0 0 2380 infra2.example.com.\n",
            "_etcd-client-ssl-dev._tcp.example.com.\t300\tIN\tSRV\t0 0 2379 infra0.example.com.\n",
        ] {
            assert!(zone.contains(line), "{line:?} missing from\n{zone}");
        }
        assert_eq!(zone.lines().filter(|l| !l.starts_with(';')).count(), 9);
        let conf = dnsmasq_conf(&inv).unwrap();
        for line in [
            "host-record=infra1.example.com,fd00::11,300\n",
            "srv-host=_etcd-server-ssl-dev._tcp.example.com,infra0.example.com,2380,0,0\n",
            "srv-host=_etcd-client-ssl-dev._tcp.example.com,infra2.example.com,2379,0,0\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing from\n{conf}");
        }
        assert_eq!(conf.lines().filter(|l| !l.starts_with('#')).count(), 9);
    }

    #[test]
    fn a_static_cluster_has_no_records() {
        let text = "[cluster]\nname = \"c\"\ntoken = \"t\"\ntls = \"none\"\n\
                    [[member]]\nname = \"a\"\naddress = \"10.0.0.1\"\nhostname = \"a.example.com\"\n";
        let inv = Inventory::parse("inv.toml", text).unwrap();
        assert!(records(&inv).is_empty());
        assert!(bind_zone(&inv).is_none() && dnsmasq_conf(&inv).is_none());
    }
}
