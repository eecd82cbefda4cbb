//! `provision check --dns`: the records a `bootstrap = "dns"` inventory renders, looked
//! up through this machine's resolver (`/etc/resolv.conf`, as the daemon looks them
//! up), so a record that was never published, was mistyped or went stale is named
//! before a member sits waiting for it.
//!
//! The lookups are separate from the comparison ([`compare`]), which is what decides
//! and words the findings, so it is tested without a DNS server.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::{Finding, Findings};
use crate::dns::{self, Kind, RecordSet};
use crate::inventory::Inventory;

/// One query's timeout: an unreachable resolver fails the check in seconds.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a lookup of one name and type gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The values served (addresses, or SRV `target:port`).
    Values(BTreeSet<String>),
    /// The name does not exist, or has no record of the type.
    NoRecords,
    /// The lookup itself failed (no answer from the resolver, a refusal, ...).
    Failed(String),
}

/// The live records of `inv`, compared with the rendered ones.
pub fn check(inv: &Inventory) -> Vec<Finding> {
    let Some(srv) = inv.srv() else {
        return vec![Finding {
            severity: super::Severity::Error,
            message: "--dns: the inventory bootstraps statically (cluster.bootstrap); only bootstrap = \"dns\" has records to check".into(),
        }];
    };
    let expected = dns::records(inv);
    let conflicting = RecordSet {
        name: dns::conflicting_server_record(inv, srv),
        kind: Kind::Srv,
        values: BTreeSet::new(),
    };
    let queries: Vec<&RecordSet> = expected.iter().chain([&conflicting]).collect();
    let answers = match lookup_all(&queries) {
        Ok(a) => a,
        Err(e) => {
            return vec![Finding {
                severity: super::Severity::Error,
                message: format!("DNS: cannot set up the system resolver: {e}"),
            }];
        }
    };
    let (mine, other) = answers.split_at(expected.len());
    compare(inv, &expected, mine, (&conflicting, &other[0]))
}

/// Findings for `expected` against what was served (`answers`, in the same order),
/// and for the other server record set, which must not list the members.
pub fn compare(
    inv: &Inventory,
    expected: &[RecordSet],
    answers: &[Answer],
    (conflicting, conflicting_answer): (&RecordSet, &Answer),
) -> Vec<Finding> {
    let mut f = Findings::default();
    for (want, have) in expected.iter().zip(answers) {
        let listed = want.values.iter().cloned().collect::<Vec<_>>().join(", ");
        match have {
            Answer::Failed(e) => f.error(format!("DNS: {want}: lookup failed: {e}")),
            Answer::NoRecords => f.error(format!(
                "DNS: {want}: missing (the inventory gives {listed})"
            )),
            Answer::Values(v) if v == &want.values => {}
            Answer::Values(v) => {
                let absent: Vec<&str> = want.values.difference(v).map(String::as_str).collect();
                let extra: Vec<&str> = v.difference(&want.values).map(String::as_str).collect();
                let mut parts = Vec::new();
                if !absent.is_empty() {
                    parts.push(format!("missing {}", absent.join(", ")));
                }
                if !extra.is_empty() {
                    parts.push(format!("not in the inventory: {}", extra.join(", ")));
                }
                f.error(format!(
                    "DNS: {want}: differs from the inventory: {} (the inventory gives {listed})",
                    parts.join("; ")
                ));
            }
        }
    }
    if let Answer::Values(v) = conflicting_answer {
        let hosts: BTreeSet<&str> = inv
            .members
            .iter()
            .filter_map(|m| m.hostname.as_deref())
            .collect();
        let shared: Vec<&str> = v
            .iter()
            .map(|t| t.rsplit_once(':').map_or(t.as_str(), |(h, _)| h))
            .filter(|h| hosts.contains(h))
            .collect();
        if !shared.is_empty() {
            f.error(format!(
                "DNS: {conflicting} also lists {}: members refuse to start when both server record sets list the same hosts; remove it ({} peers use {})",
                shared.join(", "),
                inv.tls.scheme(),
                expected
                    .iter()
                    .find(|r| r.kind == Kind::Srv)
                    .map_or(String::new(), |r| r.name.clone())
            ));
        }
    }
    f.0
}

/// Looks every query up, in order, on a runtime of its own.
fn lookup_all(queries: &[&RecordSet]) -> Result<Vec<Answer>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
        builder.options_mut().timeout = QUERY_TIMEOUT;
        // Each answer as served now, not as remembered.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for q in queries {
            out.push(lookup(&resolver, q).await);
        }
        Ok(out)
    })
}

async fn lookup(resolver: &TokioResolver, q: &RecordSet) -> Answer {
    let rtype = match q.kind {
        Kind::A => RecordType::A,
        Kind::Aaaa => RecordType::AAAA,
        Kind::Srv => RecordType::SRV,
    };
    // Fully qualified: no search domains from resolv.conf.
    match resolver.lookup(format!("{}.", q.name), rtype).await {
        Ok(lookup) => {
            let values: BTreeSet<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) if q.kind == Kind::A => Some(IpAddr::from(a.0).to_string()),
                    RData::AAAA(a) if q.kind == Kind::Aaaa => Some(IpAddr::from(a.0).to_string()),
                    RData::SRV(s) if q.kind == Kind::Srv => Some(format!(
                        "{}:{}",
                        s.target
                            .to_utf8()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                        s.port
                    )),
                    _ => None,
                })
                .collect();
            if values.is_empty() {
                Answer::NoRecords
            } else {
                Answer::Values(values)
            }
        }
        Err(e) if e.is_no_records_found() => Answer::NoRecords,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let text = "[cluster]\nname = \"c\"\ntoken = \"t\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\ntls = \"self-signed\"\n\
             [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
             [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\nhostname = \"infra1.example.com\"\n\
             [[member]]\nname = \"infra2\"\naddress = \"10.0.1.12\"\nhostname = \"infra2.example.com\"\n";
        Inventory::parse("inv.toml", text).unwrap()
    }

    fn conflicting() -> RecordSet {
        RecordSet {
            name: "_etcd-server._tcp.example.com".into(),
            kind: Kind::Srv,
            values: BTreeSet::new(),
        }
    }

    fn served(expected: &[RecordSet]) -> Vec<Answer> {
        expected
            .iter()
            .map(|r| Answer::Values(r.values.clone()))
            .collect()
    }

    fn messages(f: Vec<Finding>) -> Vec<String> {
        f.into_iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn records_as_rendered_pass() {
        let inv = inventory();
        let want = dns::records(&inv);
        let f = compare(
            &inv,
            &want,
            &served(&want),
            (&conflicting(), &Answer::NoRecords),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn each_missing_or_differing_record_is_named() {
        let inv = inventory();
        let want = dns::records(&inv);
        let mut have = served(&want);
        have[1] = Answer::NoRecords;
        have[2] = Answer::Values(BTreeSet::from(["10.0.1.99".to_string()]));
        have[3] = Answer::Values(
            [
                "infra0.example.com:2380",
                "infra2.example.com:2380",
                "old.example.com:2380",
            ]
            .map(String::from)
            .into(),
        );
        have[4] = Answer::Failed("request timed out".into());
        assert_eq!(
            messages(compare(
                &inv,
                &want,
                &have,
                (&conflicting(), &Answer::NoRecords)
            )),
            [
                "error: DNS: A infra1.example.com: missing (the inventory gives 10.0.1.11)",
                "error: DNS: A infra2.example.com: differs from the inventory: missing 10.0.1.12; not in the inventory: 10.0.1.99 (the inventory gives 10.0.1.12)",
                "error: DNS: SRV _etcd-server-ssl._tcp.example.com: differs from the inventory: missing infra1.example.com:2380; not in the inventory: old.example.com:2380 (the inventory gives infra0.example.com:2380, infra1.example.com:2380, infra2.example.com:2380)",
                "error: DNS: SRV _etcd-client-ssl._tcp.example.com: lookup failed: request timed out",
            ]
        );
    }

    #[test]
    fn the_other_server_record_set_listing_members_is_an_error() {
        let inv = inventory();
        let want = dns::records(&inv);
        let other = Answer::Values(BTreeSet::from(["infra1.example.com:2380".to_string()]));
        assert_eq!(
            messages(compare(
                &inv,
                &want,
                &served(&want),
                (&conflicting(), &other)
            )),
            [
                "error: DNS: SRV _etcd-server._tcp.example.com also lists infra1.example.com: members refuse to start when both server record sets list the same hosts; remove it (https peers use _etcd-server-ssl._tcp.example.com)"
            ]
        );
        // Another cluster's hosts under that name are none of our business.
        let unrelated = Answer::Values(BTreeSet::from(["other.example.com:2380".to_string()]));
        assert!(compare(&inv, &want, &served(&want), (&conflicting(), &unrelated)).is_empty());
    }

    #[test]
    fn a_static_inventory_has_nothing_to_check() {
        let text = "[cluster]\nname = \"c\"\ntoken = \"t\"\ntls = \"none\"\n\
                    [[member]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
        let inv = Inventory::parse("inv.toml", text).unwrap();
        let f = messages(check(&inv));
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("only bootstrap = \"dns\""), "{f:?}");
    }
}
