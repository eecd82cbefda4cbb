use std::path::Path;

use super::*;
use crate::bundle::Change;
use crate::render::{env_vars, initial_cluster};

const THREE: &str = "# the cluster\n[cluster]\nname = \"c\"\ntoken = \"t-1\"\ntls = \"self-signed\"\n\n\
                     [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\n\
                     [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\nhostname = \"infra1.example.com\"\n\
                     extra_sans = [\n  \"etcd.example.com\",\n]\n# about the next one\n\n\
                     [[member]]\nname = \"infra2\"\naddress = \"10.0.1.12\"\nhostname = \"infra2.example.com\"\n# trailing";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn get(vars: &[(String, String)], k: &str) -> String {
    vars.iter().find(|(n, _)| n == k).unwrap().1.clone()
}

fn add3(text: &str) -> Edited {
    add(
        "inv.toml",
        text,
        "infra3",
        ip("10.0.1.13"),
        "infra3.example.com",
    )
    .unwrap()
}

#[test]
fn add_appends_a_table_and_keeps_every_byte_before_it() {
    let e = add3(THREE);
    assert!(e.changed);
    assert!(e.text.starts_with(THREE), "{}", e.text);
    assert!(
        e.text.ends_with(
            "name = \"infra3\"\naddress = \"10.0.1.13\"\nhostname = \"infra3.example.com\"\n\
             joined = [\"infra0\", \"infra1\", \"infra2\"]\n"
        ),
        "{}",
        e.text
    );
    let inv = Inventory::parse("inv.toml", &e.text).unwrap();
    assert_eq!(inv.members.len(), 4);
    let before = Inventory::parse("inv.toml", THREE).unwrap();
    // The bootstrap members render exactly as before.
    for (old, new) in before.members.iter().zip(&inv.members) {
        assert_eq!(env_vars(&before, old), env_vars(&inv, new));
    }
    let new = &inv.members[3];
    let vars = env_vars(&inv, new);
    assert_eq!(get(&vars, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    assert_eq!(
        get(&vars, "ETCD_INITIAL_CLUSTER"),
        format!("{},infra3=https://10.0.1.13:2380", initial_cluster(&before))
    );
    render::validate(&inv, "infra3", &vars).unwrap();
}

#[test]
fn add_is_idempotent_and_names_a_conflicting_address() {
    let once = add3(THREE);
    let twice = add3(&once.text);
    assert!(!twice.changed);
    assert_eq!(twice.text, once.text);

    let e = add(
        "inv.toml",
        &once.text,
        "infra3",
        ip("10.0.1.14"),
        "infra3.example.com",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("infra3 is already in inv.toml with address 10.0.1.13"),
        "{e}"
    );
    assert!(e.contains("not 10.0.1.14"), "{e}");

    // Another name on a taken address: the inventory's own check, with its line.
    let e = add(
        "inv.toml",
        THREE,
        "infra9",
        ip("10.0.1.11"),
        "infra9.example.com",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("member[3].address: \"10.0.1.11\" is already the address of member[1]"),
        "{e}"
    );
    // A bootstrap member is not added again.
    let e = add(
        "inv.toml",
        THREE,
        "infra1",
        ip("10.0.1.11"),
        "infra1.example.com",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bootstraps the cluster with"), "{e}");
    // Nothing that could escape the TOML string.
    let e = add(
        "inv.toml",
        THREE,
        "x\"\nremoved = true",
        ip("10.0.1.19"),
        "x.example.com",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("may only hold"), "{e}");
}

#[test]
fn remove_marks_the_table_and_keeps_the_others_rendering() {
    let four = add3(THREE).text;
    let e = remove("inv.toml", &four, "infra1", false).unwrap();
    assert!(e.changed);
    // Inserted after the member's last value (the multi-line array), before the
    // comment that belongs to the next table; nothing else changes.
    let marker = "# Removed from the running cluster by `provision member remove`; kept so that\n\
                  # the initial cluster the other members were rendered with stays as it was.\n\
                  removed = true\n";
    assert_eq!(
        e.text,
        four.replacen(
            "  \"etcd.example.com\",\n]\n",
            &format!("  \"etcd.example.com\",\n]\n{marker}"),
            1
        )
    );
    let before = Inventory::parse("inv.toml", &four).unwrap();
    let after = Inventory::parse("inv.toml", &e.text).unwrap();
    assert_eq!(
        after
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["infra0", "infra2", "infra3"]
    );
    for m in &after.members {
        let old = before.members.iter().find(|o| o.name == m.name).unwrap();
        assert_eq!(env_vars(&before, old), env_vars(&after, m), "{}", m.name);
    }
    // Again: nothing to do.
    let again = remove("inv.toml", &e.text, "infra1", false).unwrap();
    assert!(!again.changed);
    assert_eq!(again.text, e.text);
    // A member added now joins the three that run.
    let five = add(
        "inv.toml",
        &e.text,
        "infra4",
        ip("10.0.1.14"),
        "infra4.example.com",
    )
    .unwrap();
    assert!(
        five.text
            .ends_with("joined = [\"infra0\", \"infra2\", \"infra3\"]\n"),
        "{}",
        five.text
    );
    // The removed name does not come back.
    let err = add(
        "inv.toml",
        &e.text,
        "infra1",
        ip("10.0.1.11"),
        "infra1.example.com",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("was removed from the cluster"), "{err}");
    // The last line of a file without a final newline.
    let last = remove("inv.toml", THREE, "infra2", true).unwrap();
    assert!(
        last.text.ends_with(
            "hostname = \"infra2.example.com\"\n# Removed from the running cluster by `provision member remove`; kept so that\n\
             # the initial cluster the other members were rendered with stays as it was.\nremoved = true\n# trailing"
        ),
        "{}",
        last.text
    );
}

#[test]
fn remove_refuses_even_or_quorum_losing_counts_without_force() {
    // 3 → 2: even.
    let e = remove("inv.toml", THREE, "infra0", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("would leave 2 members, an even count"), "{e}");
    // With --force it goes ahead; then 2 → 1 would lose the quorum.
    let two = remove("inv.toml", THREE, "infra0", true).unwrap().text;
    let e = remove("inv.toml", &two, "infra1", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lose quorum"), "{e}");
    let one = remove("inv.toml", &two, "infra1", true).unwrap().text;
    // The last member, never.
    let e = remove("inv.toml", &one, "infra2", true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("only member"), "{e}");
    // 4 → 3 is fine.
    assert!(
        remove("inv.toml", &add3(THREE).text, "infra0", false)
            .unwrap()
            .changed
    );
    let e = remove("inv.toml", THREE, "nope", false)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "inv.toml has no member \"nope\"");
}

#[test]
fn the_plans_name_the_member_and_the_running_endpoints() {
    let inv = Inventory::parse("inv.toml", &add3(THREE).text).unwrap();
    let learner = add_plan(&inv, "infra3", Path::new("bundles"), false);
    assert!(
        learner.contains(
            "export ETCDCTL_ENDPOINTS=https://10.0.1.10:2379,https://10.0.1.11:2379,https://10.0.1.12:2379\n"
        ),
        "{learner}"
    );
    assert!(
        learner
            .contains("etcdctl member add infra3 --peer-urls=https://10.0.1.13:2380 --learner\n"),
        "{learner}"
    );
    assert!(learner.contains("systemctl start qetcd"), "{learner}");
    assert!(
        learner.contains("until etcdctl member promote \"$ID\""),
        "{learner}"
    );
    let voter = add_plan(&inv, "infra3", Path::new("bundles"), true);
    assert!(
        voter.contains("etcdctl member add infra3 --peer-urls=https://10.0.1.13:2380\n"),
        "{voter}"
    );
    assert!(!voter.contains("promote"), "{voter}");

    let after = Inventory::parse(
        "inv.toml",
        &remove("inv.toml", &add3(THREE).text, "infra1", false)
            .unwrap()
            .text,
    )
    .unwrap();
    let plan = remove_plan(&after, "infra1", Path::new("bundles"));
    assert!(
        plan.contains(
            "export ETCDCTL_ENDPOINTS=https://10.0.1.10:2379,https://10.0.1.12:2379,https://10.0.1.13:2379\n"
        ),
        "{plan}"
    );
    assert!(
        plan.contains("awk -F', ' '$4 == \"https://10.0.1.11:2380\" {print $1}'"),
        "{plan}"
    );
    assert!(plan.contains("etcdctl member remove \"$ID\""), "{plan}");
}

#[test]
fn member_add_leaves_the_other_bundles_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let three = Inventory::parse("inv.toml", THREE).unwrap();
    crate::render_members(&three, dir.path()).unwrap();
    let four = Inventory::parse("inv.toml", &add3(THREE).text).unwrap();
    let out = crate::render_members(&four, dir.path()).unwrap();
    for (path, change) in &out.report.changes {
        let first = path.iter().next().unwrap().to_str().unwrap();
        assert!(
            matches!(first, "infra3" | "admin" | "manifest.txt"),
            "{} {change:?}",
            path.display()
        );
    }
    assert!(
        out.report
            .changes
            .contains(&(layout::on_host("infra3", layout::ENV_FILE), Change::Created))
    );
    // Its certificates chain to the cluster's CAs and cover its address.
    let findings = crate::check::check(&four, Some(dir.path()), time::OffsetDateTime::now_utc());
    assert!(
        findings
            .iter()
            .all(|f| f.severity == crate::check::Severity::Warning),
        "{findings:?}"
    );
    // Removing a member changes no other member's bundle either.
    let removed = remove("inv.toml", &add3(THREE).text, "infra0", false).unwrap();
    let three = Inventory::parse("inv.toml", &removed.text).unwrap();
    let out = crate::render_members(&three, dir.path()).unwrap();
    for (path, _) in &out.report.changes {
        let first = path.iter().next().unwrap().to_str().unwrap();
        assert!(
            matches!(first, "admin" | "manifest.txt"),
            "{}",
            path.display()
        );
    }
    assert!(
        out.report
            .stale
            .contains(&layout::on_host("infra0", layout::ENV_FILE))
    );
}
