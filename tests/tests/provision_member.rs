//! `provision member add` on a running cluster, as an operator runs it: three hosts of
//! our own (network + mount namespaces, 10.0.1.10–12) start from the shipped example's
//! bundles; `provision member add infra3` edits the inventory and renders infra3's
//! bundle; the printed `etcdctl member add` runs against the three; infra3 starts from
//! nothing but its bundle on a fourth host (10.0.1.13), joins as a learner, and the
//! printed promotion makes it a voter.

use std::time::Duration;

use qetcd_tests::member::Binary;
use qetcd_tests::netns::{self, HostProcess, Hosts};
use qetcd_tests::provision::{
    self, MountPoints, etcdctl, etcdctl_after, provision, render, start_member, start_members,
};
use qetcd_tests::wait_until;

const ADDRESSES: [&str; 4] = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"];

/// The line of the printed plan that starts with `prefix` (leading blanks ignored).
fn plan_line<'a>(plan: &'a str, prefix: &str) -> &'a str {
    plan.lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in the plan:\n{plan}"))
}

#[test]
fn a_fourth_member_joins_from_the_bundle_member_add_renders() {
    if !netns::required() {
        return;
    }
    assert!(Binary::Qetcd.available(), "build qetcd first");
    let _mount_points = MountPoints::ensure();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let inventory = work.path().join("inventory.toml");
    std::fs::copy(provision::example("inventory.toml"), &inventory).unwrap();
    render(&inventory, &out);

    let hosts = Hosts::create(&ADDRESSES);
    let mut members: Vec<HostProcess> = start_members(&hosts, 3, &out, work.path());
    let logs = |members: &[HostProcess]| {
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
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&members)));
    let put = etcdctl(&hosts, 0, &out, "put before-the-fourth yes");
    assert_eq!(put.code, Some(0), "{}", put.stderr);

    let env_before: Vec<String> = (0..3)
        .map(|i| {
            std::fs::read_to_string(out.join(format!("infra{i}/etc/qetcd/qetcd.env"))).unwrap()
        })
        .collect();
    let args = [
        "member",
        "add",
        "infra3",
        "--address",
        "10.0.1.13",
        "--hostname",
        "infra3.example.com",
        "--inventory",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let add = provision(&args);
    assert_eq!(add.code, Some(0), "{}{}", add.stdout, add.stderr);
    for (i, before) in env_before.iter().enumerate() {
        let env =
            std::fs::read_to_string(out.join(format!("infra{i}/etc/qetcd/qetcd.env"))).unwrap();
        assert_eq!(&env, before, "infra{i}'s bundle changed");
    }
    let env3 = std::fs::read_to_string(out.join("infra3/etc/qetcd/qetcd.env")).unwrap();
    assert!(
        env3.contains("ETCD_INITIAL_CLUSTER_STATE=existing\n"),
        "{env3}"
    );
    // Again: nothing changes, the same plan is printed.
    let again = provision(&args);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let plan_of = |s: &str| s[s.find("Plan:").unwrap()..].to_string();
    assert_eq!(plan_of(&again.stdout), plan_of(&add.stdout));

    // The plan, step by step.
    let plan = plan_of(&add.stdout);
    let endpoints = plan_line(&plan, ". admin/etcdctl.env && export ETCDCTL_ENDPOINTS=")
        .trim_start_matches(". admin/etcdctl.env && ");
    let member_add = plan_line(&plan, "etcdctl member add infra3 ");
    assert!(member_add.ends_with(" --learner"), "{member_add}");
    let added = etcdctl_after(
        &hosts,
        0,
        &out,
        endpoints,
        member_add.trim_start_matches("etcdctl "),
    );
    assert_eq!(added.code, Some(0), "{}{}", added.stdout, added.stderr);
    assert!(
        added
            .stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        added.stdout
    );

    members.push(start_member(&hosts, 3, "infra3", &out, work.path()));
    let id_lookup = plan_line(&plan, "ID=$(etcdctl member list");
    wait_until(
        "infra3 to catch up and be promoted",
        Duration::from_secs(60),
        || {
            let r = etcdctl_after(
                &hosts,
                0,
                &out,
                &format!("{endpoints} && {id_lookup} && test -n \"$ID\""),
                "member promote \"$ID\"",
            );
            (r.code == Some(0)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&members)));

    wait_until("four started voters", Duration::from_secs(30), || {
        let list = etcdctl(&hosts, 3, &out, "member list");
        let rows: Vec<&str> = list.stdout.lines().collect();
        (rows.len() == 4
            && rows
                .iter()
                .all(|r| r.contains(", started, ") && r.ends_with(", false")))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&members)));
    let got = etcdctl(&hosts, 3, &out, "get before-the-fourth --print-value-only");
    assert_eq!(got.stdout.trim(), "yes", "{}", got.stderr);
}
