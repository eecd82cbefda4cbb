use super::*;

use crate::bundle::{Change, layout};
use crate::check::{Severity, check};

fn inventory(extra_sans_of_infra1: &str) -> Inventory {
    let text = format!(
        "[cluster]\nname = \"infra\"\ntoken = \"etcd-cluster-1\"\ntls = \"self-signed\"\n\
         [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
         [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\nhostname = \"infra1.example.com\"\n{extra_sans_of_infra1}\n\
         [[member]]\nname = \"infra2\"\naddress = \"10.0.1.12\"\nhostname = \"infra2.example.com\"\n"
    );
    Inventory::parse("inv.toml", &text).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn read(out: &Path, rel: impl AsRef<Path>) -> String {
    std::fs::read_to_string(out.join(rel)).unwrap()
}

fn facts(out: &Path, rel: impl AsRef<Path>) -> CertFacts {
    CertFacts::from_pem(&read(out, rel)).unwrap()
}

#[test]
fn certificates_say_what_each_side_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    crate::render(&inventory(""), out, false).unwrap();

    let peer = facts(out, member_file("infra1", "peer.crt"));
    assert_eq!(peer.common_name.as_deref(), Some("infra1"));
    assert_eq!(
        peer.sans,
        [
            San::Ip("10.0.1.11".parse().unwrap()),
            San::Dns("infra1.example.com".into())
        ]
    );
    assert!(peer.server_auth && peer.client_auth && !peer.is_ca);
    let peer_ca = facts(out, layout::ca_cert("peer"));
    assert!(peer_ca.is_ca);
    assert_eq!(peer.authority_key_id, peer_ca.subject_key_id);

    let server = facts(out, member_file("infra1", "server.crt"));
    assert!(server.covers("10.0.1.11") && server.covers("infra1.example.com"));
    assert!(server.covers("127.0.0.1") && server.covers("localhost"));
    assert!(!server.covers("10.0.1.10"));
    assert!(server.server_auth && server.client_auth);
    let client_ca = facts(out, layout::ca_cert("client"));
    assert_eq!(server.authority_key_id, client_ca.subject_key_id);
    assert_ne!(client_ca.subject_key_id, peer_ca.subject_key_id);
    assert!(server.days_left(now()) >= 364);

    let admin = facts(out, layout::admin().join("admin.crt"));
    assert_eq!(admin.common_name.as_deref(), Some("root"));
    assert!(admin.client_auth && !admin.server_auth);
    assert_eq!(admin.authority_key_id, client_ca.subject_key_id);

    let key = read(out, member_file("infra1", "server.key"));
    assert_eq!(key_public_bits(&key).unwrap(), server.public_key);
}

#[test]
fn rendering_again_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let first = crate::render(&inventory(""), out, false).unwrap();
    assert!(!first.rendered.issued.is_empty());
    let second = crate::render(&inventory(""), out, false).unwrap();
    assert!(
        second.rendered.issued.is_empty(),
        "{:?}",
        second.rendered.issued
    );
    assert!(
        second.report.changes.is_empty(),
        "{:?}",
        second.report.changes
    );
    assert!(second.report.stale.is_empty());
}

#[test]
fn a_new_san_reissues_only_that_members_certificates_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    crate::render(&inventory(""), out, false).unwrap();
    let keys_before = read(out, member_file("infra1", "peer.key"));

    let with_san = inventory("extra_sans = [\"etcd.example.com\"]");
    let dry = crate::render(&with_san, out, true).unwrap();
    let r = crate::render(&with_san, out, false).unwrap();
    let changed: Vec<String> = r
        .report
        .changes
        .iter()
        .map(|(p, c)| {
            assert_eq!(*c, Change::Updated);
            p.display().to_string()
        })
        .collect();
    assert_eq!(
        changed,
        [
            "infra1/etc/qetcd/pki/peer.crt",
            "infra1/etc/qetcd/pki/server.crt"
        ]
    );
    assert_eq!(dry.report.changes, r.report.changes);
    assert_eq!(
        r.rendered.issued,
        [
            "infra1/etc/qetcd/pki/peer.crt: re-issued: SANs changed (+etcd.example.com)",
            "infra1/etc/qetcd/pki/server.crt: re-issued: SANs changed (+etcd.example.com)",
        ]
    );
    assert_eq!(read(out, member_file("infra1", "peer.key")), keys_before);
    assert!(facts(out, member_file("infra1", "server.crt")).covers("etcd.example.com"));
}

#[test]
fn near_expiry_certificates_are_renewed_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let inv = inventory("");
    // Render as if 340.5 days ago: the certificates now have 24.5 days left.
    let past = now() - Duration::from_secs(340 * DAY + DAY / 2);
    let plan = crate::build(&inv, out, past).unwrap().plan;
    crate::bundle::apply(out, &plan, false).unwrap();

    let findings = check(&inv, Some(out), now());
    let warnings: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| f.message.as_str())
        .collect();
    assert!(findings.iter().all(|f| f.severity == Severity::Warning));
    assert!(
        warnings.contains(
            &"infra0/etc/qetcd/pki/peer.crt: expires in 24 days (`provision render` renews member and admin certificates)"
        ),
        "{warnings:#?}"
    );

    let r = crate::render(&inv, out, false).unwrap();
    assert!(
        r.rendered.issued.contains(
            &"infra2/etc/qetcd/pki/server.crt: re-issued: expires in 24 days".to_string()
        ),
        "{:?}",
        r.rendered.issued
    );
    assert!(check(&inv, Some(out), now()).is_empty());
}

#[test]
fn check_finds_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let inv = inventory("");
    crate::render(&inv, out, false).unwrap();
    assert_eq!(check(&inv, Some(out), now()), []);

    // infra1 gets infra0's server certificate, a world-readable key and a changed
    // token: each is named.
    std::fs::copy(
        out.join(member_file("infra0", "server.crt")),
        out.join(member_file("infra1", "server.crt")),
    )
    .unwrap();
    std::fs::set_permissions(
        out.join(member_file("infra2", "peer.key")),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let env = out.join(layout::on_host("infra2", layout::ENV_FILE));
    let text = read(out, &env).replace("TOKEN=etcd-cluster-1", "TOKEN=other");
    std::fs::write(&env, text).unwrap();

    let errors: Vec<String> = check(&inv, Some(out), now())
        .into_iter()
        .map(|f| f.to_string())
        .collect();
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    assert!(
        has(
            "error: infra1/etc/qetcd/pki/server.crt: does not cover 10.0.1.11, but infra1 serves https://10.0.1.11:2379 (ETCD_ADVERTISE_CLIENT_URLS)"
        ),
        "{errors:#?}"
    );
    assert!(has(
        "error: infra1/etc/qetcd/pki/server.key: does not belong to infra1/etc/qetcd/pki/server.crt"
    ));
    assert!(has(
        "error: infra2/etc/qetcd/pki/peer.key: mode 0644 gives away a private key (at most 0640)"
    ));
    assert!(has(
        "error: ETCD_INITIAL_CLUSTER_TOKEN differs between hosts: etcd-cluster-1 on infra0, infra1 / other on infra2"
    ));
    assert!(has(
        "error: infra2/etc/qetcd/qetcd.env: differs from the inventory; run `provision render` (ETCD_INITIAL_CLUSTER_TOKEN: has \"other\", inventory gives \"etcd-cluster-1\")"
    ));

    let etcdctl_env = out.join(layout::admin().join("etcdctl.env"));
    let text = read(out, &etcdctl_env).replace("10.0.1.12", "10.0.1.99");
    std::fs::write(&etcdctl_env, text).unwrap();
    let errors: Vec<String> = check(&inv, Some(out), now())
        .into_iter()
        .map(|f| f.to_string())
        .collect();
    assert!(
        errors.contains(
            &"error: admin/etcdctl.env: differs from what the inventory renders; run `provision render`"
                .to_string()
        ),
        "{errors:#?}"
    );

    // Rendering again repairs all of it.
    crate::render(&inv, out, false).unwrap();
    assert_eq!(check(&inv, Some(out), now()), []);
}

#[test]
fn a_replaced_ca_reissues_what_it_signs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let inv = inventory("");
    crate::render(&inv, out, false).unwrap();
    std::fs::remove_file(out.join(layout::ca_key("peer"))).unwrap();
    std::fs::remove_file(out.join(layout::ca_cert("peer"))).unwrap();
    let r = crate::render(&inv, out, false).unwrap();
    let reissued: Vec<&String> = r
        .rendered
        .issued
        .iter()
        .filter(|n| n.contains("re-issued"))
        .collect();
    assert_eq!(reissued.len(), 3, "{reissued:?}");
    assert!(
        reissued
            .iter()
            .all(|n| n.ends_with("peer.crt: re-issued: signed by another CA"))
    );
    assert_eq!(check(&inv, Some(out), now()), []);
}

#[test]
fn an_unreadable_key_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let inv = inventory("");
    crate::render(&inv, out, false).unwrap();
    std::fs::write(out.join(layout::ca_key("client")), "garbage").unwrap();
    let e = crate::render(&inv, out, false).err().unwrap().to_string();
    assert!(
        e.starts_with("ca/client-ca.key: not a usable private key"),
        "{e}"
    );
    assert_eq!(read(out, layout::ca_key("client")), "garbage");
}

#[test]
fn serials_are_random_even_for_a_kept_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    crate::render(&inventory(""), out, false).unwrap();
    let before = read(out, member_file("infra1", "peer.crt"));
    crate::render(&inventory("extra_sans = [\"x.example.com\"]"), out, false).unwrap();
    let after = read(out, member_file("infra1", "peer.crt"));
    let serial = |pem: &str| {
        let der = pem_to_der(pem).unwrap();
        parse(&der).unwrap().raw_serial().to_vec()
    };
    assert_ne!(serial(&before), serial(&after));
}
