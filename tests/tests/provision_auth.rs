//! `provision auth apply` on a running cluster, as an operator runs it: the shipped
//! example inventory plus an `[auth]` section is rendered (a client certificate per
//! user), three hosts of our own (network + mount namespaces, 10.0.1.10–12) start from
//! the bundles, and `provision auth apply` creates root, the roles, their permissions
//! and the users, then enables authentication. Run again, it changes nothing. Then
//! alice's certificate writes inside her prefix and is refused outside it, bob logs in
//! with the password from his password file, and the admin certificate (CN root)
//! still administers.

use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, HostProcess, Hosts};
use qetcd_tests::provision::{
    self, MountPoints, etcdctl, etcdctl_after, provision_on, render, start_members,
};
use qetcd_tests::wait_until;

const ADDRESSES: [&str; 3] = ["10.0.1.10", "10.0.1.11", "10.0.1.12"];

const AUTH_SECTION: &str = r#"
[[auth.role]]
name = "app"
permissions = [
  { prefix = "app/", access = "readwrite" },
  { key = "config", access = "read" },
]

[[auth.role]]
name = "reader"
permissions = [{ key = "app/", range_end = "app0", access = "read" }]

[[auth.user]]
name = "alice"
roles = ["app"]

[[auth.user]]
name = "bob"
roles = ["reader"]
password_file = "bob.pw"
"#;

#[test]
fn auth_apply_sets_up_users_roles_and_certificates_idempotently() {
    if !netns::required() {
        return;
    }
    assert!(Binary::Qetcd.available(), "build qetcd first");
    let _mount_points = MountPoints::ensure();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let inventory = work.path().join("inventory.toml");
    let mut text = std::fs::read_to_string(provision::example("inventory.toml")).unwrap();
    text.push_str(AUTH_SECTION);
    std::fs::write(&inventory, text).unwrap();
    std::fs::write(work.path().join("bob.pw"), "bobs-secret\n").unwrap();
    let rendered = render(&inventory, &out);
    for user in ["alice", "bob"] {
        assert!(
            rendered
                .stdout
                .contains(&format!("admin/users/{user}.crt: issued")),
            "{}",
            rendered.stdout
        );
    }
    // The password stays in the operator's file: nothing rendered carries it.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "bobs-secret"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );

    let hosts = Hosts::create(&ADDRESSES);
    let members: Vec<HostProcess> = start_members(&hosts, 3, &out, work.path());
    let logs = || {
        members
            .iter()
            .map(HostProcess::logs)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    wait_until(
        "the rendered cluster to be healthy",
        Duration::from_secs(30),
        || (etcdctl(&hosts, 0, &out, "endpoint health").code == Some(0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let put = etcdctl(&hosts, 0, &out, "put config v1");
    assert_eq!(put.code, Some(0), "{}", put.stderr);

    let args = [
        "auth",
        "apply",
        "--inventory",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = provision_on(&hosts, 0, &args);
    assert_eq!(first.code, Some(0), "{}{}", first.stdout, first.stderr);
    for line in [
        "added user root (no password: the admin certificate logs in as root)",
        "granted role root to user root",
        "added role app",
        "granted readwrite on prefix \"app/\" to role app",
        "granted read on key \"config\" to role app",
        "granted read on prefix \"app/\" to role reader",
        "added user alice (certificate only)",
        "granted role app to user alice",
        "added user bob (password and certificate)",
        "enabled authentication",
    ] {
        assert!(
            first.stdout.contains(line),
            "missing {line:?} in:\n{}",
            first.stdout
        );
    }
    assert!(
        first
            .stdout
            .ends_with("enabled authentication\n12 changes applied to the cluster\n"),
        "{}",
        first.stdout
    );
    let again = provision_on(&hosts, 0, &args);
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.starts_with("nothing changed"),
        "the second run changed something:\n{}",
        again.stdout
    );

    // etcdctl with a user's certificate instead of the admin's.
    let as_user = |user: &str, args: &str| {
        etcdctl_after(
            &hosts,
            1,
            &out,
            &format!(
                "export ETCDCTL_CERT=\"$PWD/admin/users/{user}.crt\" ETCDCTL_KEY=\"$PWD/admin/users/{user}.key\""
            ),
            args,
        )
    };
    let inside = as_user("alice", "put app/a 1");
    assert_eq!(inside.code, Some(0), "{}", inside.stderr);
    let outside = as_user("alice", "put elsewhere 1");
    assert!(
        outside.code != Some(0) && outside.stderr.contains("etcdserver: permission denied"),
        "{}",
        outside.stderr
    );
    let config = as_user("alice", "get config --print-value-only");
    assert_eq!(config.stdout.trim(), "v1", "{}", config.stderr);
    let not_admin = as_user("alice", "user list");
    assert!(
        not_admin.stderr.contains("etcdserver: permission denied"),
        "{}",
        not_admin.stderr
    );
    // bob reads app/ with his password (and the admin certificate's TLS, whose CN the
    // token overrides), and may not write there.
    let bob = etcdctl(
        &hosts,
        2,
        &out,
        "--user bob:bobs-secret get app/a --print-value-only",
    );
    assert_eq!(bob.stdout.trim(), "1", "{}", bob.stderr);
    let bob_writes = etcdctl(&hosts, 2, &out, "--user bob:bobs-secret put app/b 2");
    assert!(
        bob_writes.stderr.contains("etcdserver: permission denied"),
        "{}",
        bob_writes.stderr
    );
    // The admin certificate is root once authentication is on.
    let users = etcdctl(&hosts, 0, &out, "user list");
    assert_eq!(users.stdout, "alice\nbob\nroot\n", "{}", users.stderr);
    let secret = etcdctl(&hosts, 0, &out, "put elsewhere root-may");
    assert_eq!(secret.code, Some(0), "{}", secret.stderr);

    // --prune takes away what the inventory no longer lists, and nothing else.
    let grant = etcdctl(&hosts, 0, &out, "role grant-permission app write extra");
    assert_eq!(grant.code, Some(0), "{}", grant.stderr);
    let kept = provision_on(&hosts, 0, &args);
    assert!(
        kept.stdout.starts_with("nothing changed"),
        "{}",
        kept.stdout
    );
    let mut prune_args = args.to_vec();
    prune_args.push("--prune");
    let pruned = provision_on(&hosts, 0, &prune_args);
    assert_eq!(pruned.code, Some(0), "{}{}", pruned.stdout, pruned.stderr);
    assert!(
        pruned
            .stdout
            .contains("revoked write on key \"extra\" from role app\n1 change applied"),
        "{}",
        pruned.stdout
    );
    drop(members);
}
