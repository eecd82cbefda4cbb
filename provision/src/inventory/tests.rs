use super::*;

const GOOD: &str = r#"[cluster]
name = "infra"
token = "etcd-cluster-1"
tls = "self-signed"

[[member]]
name = "infra0"
address = "10.0.1.10"
hostname = "infra0.example.com"

[[member]]
name = "infra1"
address = "10.0.1.11"
hostname = "infra1.example.com"

[[member]]
name = "infra2"
address = "10.0.1.12"
hostname = "infra2.example.com"
"#;

/// `GOOD` with line `line` (1-based) replaced by `with` (which may span lines).
fn edit(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = GOOD.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

fn errors(text: &str) -> Vec<String> {
    match Inventory::parse("inv.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(InventoryError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

fn error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

#[test]
fn the_good_inventory_gets_its_defaults() {
    let inv = Inventory::parse("inv.toml", GOOD).unwrap();
    assert_eq!(inv.name, "infra");
    assert_eq!(inv.token, "etcd-cluster-1");
    assert_eq!(inv.bootstrap, Bootstrap::Static);
    assert_eq!(inv.tls, TlsMode::SelfSigned);
    assert_eq!((inv.client_port, inv.peer_port), (2379, 2380));
    assert_eq!(inv.data_dir, Path::new("/var/lib/qetcd"));
    assert!(inv.listen_localhost);
    assert_eq!(inv.cert_validity_days, 365);
    assert_eq!(inv.members.len(), 3);
    assert_eq!(
        inv.members[1].sans(),
        [
            San::Ip("10.0.1.11".parse().unwrap()),
            San::Dns("infra1.example.com".into())
        ]
    );
    assert!(inv.warnings.is_empty());
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.toml");
    let inv = Inventory::load(&path).unwrap();
    assert_eq!(inv.token, "etcd-cluster-1");
    assert_eq!(inv.tls, TlsMode::SelfSigned);
    let names: Vec<_> = inv.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["infra0", "infra1", "infra2"]);
    assert!(inv.warnings.is_empty());
}

#[test]
fn the_shipped_dns_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory-dns.toml");
    let inv = Inventory::load(&path).unwrap();
    assert_eq!(inv.srv().map(|s| s.domain.as_str()), Some("example.com"));
    assert_eq!(inv.tls, TlsMode::SelfSigned);
    assert_eq!(inv.members.len(), 3);
    assert!(inv.warnings.is_empty());
}

#[test]
fn unknown_keys() {
    assert_eq!(
        error(&edit(13, "adress = \"10.0.1.11\"")),
        "inv.toml:13: member[1].adress: unknown field `adress`, expected one of `name`, `address`, `hostname`, `extra_sans`, `joined`, `removed`"
    );
    let e = error(&edit(4, "tls = \"none\"\nclient-port = 2379"));
    assert!(
        e.starts_with(
            "inv.toml:5: cluster.client-port: unknown field `client-port`, expected one of"
        ),
        "{e}"
    );
    let e = error(&(GOOD.to_string() + "[defaults]\nx = 1\n"));
    assert!(
        e.starts_with("inv.toml:20: defaults: unknown field `defaults`"),
        "{e}"
    );
}

#[test]
fn wrong_types() {
    let e = error(&edit(4, "tls = \"none\"\nclient_port = \"2379\""));
    assert!(
        e.starts_with(
            "inv.toml:5: cluster.client_port: invalid type: string \"2379\", expected i64"
        ),
        "{e}"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\npeer_port = 70000")),
        "inv.toml:5: cluster.peer_port: 70000 is not a port (1-65535)"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\npeer_port = 2379")),
        "inv.toml:5: cluster.peer_port: 2379 is also the client port; clients and peers need ports of their own"
    );
}

#[test]
fn duplicates_name_the_first_use() {
    assert_eq!(
        error(&edit(12, "name = \"infra0\"")),
        "inv.toml:12: member[1].name: \"infra0\" is already the name of member[0] (line 7)"
    );
    assert_eq!(
        error(&edit(18, "address = \"10.0.1.11\"")),
        "inv.toml:18: member[2].address: \"10.0.1.11\" is already the address of member[1] (line 13)"
    );
    // Host names compare case-insensitively, as DNS does.
    assert_eq!(
        error(&edit(19, "hostname = \"INFRA0.example.com\"")),
        "inv.toml:19: member[2].hostname: \"infra0.example.com\" is already the hostname of member[0] (line 9)"
    );
}

#[test]
fn addresses_must_be_ips() {
    assert_eq!(
        error(&edit(8, "address = \"10.0.1.300\"")),
        "inv.toml:8: member[0].address: \"10.0.1.300\" is not an IP address"
    );
    assert_eq!(
        error(&edit(8, "address = \"infra0.example.com\"")),
        "inv.toml:8: member[0].address: \"infra0.example.com\" is a hostname, but the member listens on its address, so it must be an IP address (put the name in hostname)"
    );
    assert_eq!(
        error(&edit(8, "address = \"10.0.1.10:2379\"")),
        "inv.toml:8: member[0].address: \"10.0.1.10:2379\" carries a port; give the IP alone (ports are cluster.client_port and cluster.peer_port)"
    );
    let e = error(&edit(8, "address = \"127.0.0.1\""));
    assert!(
        e.starts_with("inv.toml:8: member[0].address: 127.0.0.1 is a loopback address"),
        "{e}"
    );
    let e = error(&edit(8, "address = \"0.0.0.0\""));
    assert!(
        e.starts_with("inv.toml:8: member[0].address: 0.0.0.0 is the unspecified address"),
        "{e}"
    );
    assert_eq!(
        error(&edit(9, "hostname = \"10.0.1.10\"")),
        "inv.toml:9: member[0].hostname: \"10.0.1.10\" is an IP address; hostname is the member's DNS name (its IP belongs in address)"
    );
    assert_eq!(
        error(&edit(9, "hostname = \"infra_0.example.com\"")),
        "inv.toml:9: member[0].hostname: \"infra_0.example.com\" is not a valid DNS name"
    );
    assert_eq!(
        error(&edit(
            9,
            "extra_sans = [\"etcd.example.com\", \"not a name\"]"
        )),
        "inv.toml:9: member[0].extra_sans[1]: \"not a name\" is neither an IP address nor a DNS name"
    );
}

#[test]
fn missing_and_empty_token() {
    assert_eq!(
        error(&edit(3, "")),
        "inv.toml:1: cluster.token: missing: every cluster needs a token of its own (etcd's --initial-cluster-token), so that members of different clusters never join each other"
    );
    assert_eq!(
        error(&edit(3, "token = \"\"")),
        "inv.toml:3: cluster.token: is empty: every cluster needs a token of its own (etcd's --initial-cluster-token)"
    );
    let e = error(&edit(3, "token = \"two words\""));
    assert!(
        e.starts_with("inv.toml:3: cluster.token: \"two words\" may only hold"),
        "{e}"
    );
}

#[test]
fn bootstrap_modes_not_supported_yet() {
    assert_eq!(
        error(&edit(4, "tls = \"none\"\nbootstrap = \"discovery\"")),
        "inv.toml:5: cluster.discovery_token: missing: bootstrap \"discovery\" needs a fresh token (make one with `provision discovery new --size <members> --endpoints <client URLs of a running cluster>`), with discovery_endpoints; or discovery_url for the v2 protocol"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\nbootstrap = \"magic\"")),
        "inv.toml:5: cluster.bootstrap: unknown bootstrap mode \"magic\": expected \"static\", \"dns\" or \"discovery\""
    );
    assert_eq!(
        error(&edit(4, "tls = \"yes\"")),
        "inv.toml:4: cluster.tls: unknown TLS mode \"yes\": expected \"none\", \"self-signed\" or \"auto\""
    );
}

#[test]
fn dns_bootstrap_takes_a_domain_and_an_optional_srv_name() {
    let inv = Inventory::parse(
        "inv.toml",
        &edit(
            4,
            "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"Example.COM.\"",
        ),
    )
    .unwrap();
    assert_eq!(
        inv.bootstrap,
        Bootstrap::Dns(SrvDiscovery {
            domain: "example.com".into(),
            srv_name: None
        })
    );
    let inv = Inventory::parse(
        "inv.toml",
        &edit(
            4,
            "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\nsrv_name = \"dev-2\"",
        ),
    )
    .unwrap();
    assert_eq!(inv.srv().unwrap().srv_name.as_deref(), Some("dev-2"));
}

#[test]
fn dns_bootstrap_errors() {
    assert_eq!(
        error(&edit(4, "tls = \"none\"\nbootstrap = \"dns\"")),
        "inv.toml:5: cluster.domain: missing: bootstrap \"dns\" reads the members from this domain's SRV records (etcd's --discovery-srv, e.g. \"example.com\")"
    );
    assert_eq!(
        error(&edit(
            4,
            "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"10.0.1.1\""
        )),
        "inv.toml:6: cluster.domain: \"10.0.1.1\" is not a DNS domain name"
    );
    let e = error(&edit(
        4,
        "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\nsrv_name = \"_x\"",
    ));
    assert!(
        e.starts_with("inv.toml:7: cluster.srv_name: \"_x\" must be letters, digits and '-'"),
        "{e}"
    );
    let long = "a".repeat(47);
    let e = error(&edit(
        4,
        &format!(
            "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\nsrv_name = \"{long}\""
        ),
    ));
    assert!(e.contains("at most 46 characters"), "{e}");
    // Static clusters take neither.
    assert_eq!(
        errors(&edit(
            4,
            "tls = \"none\"\ndomain = \"example.com\"\nsrv_name = \"dev\""
        )),
        [
            "inv.toml:5: cluster.domain: only used with bootstrap = \"dns\" (the members' SRV records); a static cluster lists its members in ETCD_INITIAL_CLUSTER",
            "inv.toml:6: cluster.srv_name: only used with bootstrap = \"dns\" (the members' SRV records); a static cluster lists its members in ETCD_INITIAL_CLUSTER",
        ]
    );
}

#[test]
fn dns_bootstrap_needs_every_hostname_inside_the_domain() {
    let dns = "tls = \"none\"\nbootstrap = \"dns\"\ndomain = \"example.com\"";
    let text = edit(4, dns)
        .replace("hostname = \"infra1.example.com\"\n", "")
        .replace("infra2.example.com", "infra2.example.org");
    assert_eq!(
        errors(&text),
        [
            "inv.toml:13: member[1].hostname: missing: with bootstrap \"dns\" every member needs a hostname in example.com: its SRV records point at it and it is the member's advertised peer URL",
            "inv.toml:20: member[2].hostname: \"infra2.example.org\" is not inside cluster.domain \"example.com\": with bootstrap \"dns\" its A record is published in that domain's zone, next to the SRV records that point at it",
        ]
    );
    // The domain itself is no member's hostname, but a deeper name is.
    let text = edit(4, dns).replace("infra2.example.com", "a.b.example.com");
    assert!(Inventory::parse("inv.toml", &text).is_ok());
    let text = edit(4, dns).replace("infra2.example.com", "example.com");
    assert!(error(&text).contains("is not inside cluster.domain"));
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = edit(8, "address = \"nope!\"").replace("name = \"infra2\"", "name = \"infra1\"");
    assert_eq!(
        errors(&text),
        [
            "inv.toml:8: member[0].address: \"nope!\" is not an IP address",
            "inv.toml:17: member[2].name: \"infra1\" is already the name of member[1] (line 12)",
        ]
    );
}

#[test]
fn members_and_data_dir() {
    let text = GOOD.split("[[member]]").next().unwrap();
    let e = error(text);
    assert!(
        e.ends_with(
            "member: no members: add one [[member]] table per host (name, address, hostname)"
        ),
        "{e}"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\ndata_dir = \"var/lib/qetcd\"")),
        "inv.toml:5: cluster.data_dir: \"var/lib/qetcd\" must be an absolute directory path other than / (letters, digits and . _ - / only)"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\ndata_dir = \"/tmp/qetcd\"")),
        "inv.toml:5: cluster.data_dir: \"/tmp/qetcd\" is inside a temporary directory: qetcd.service has PrivateTmp=yes, so the data would vanish when the service stops"
    );
    assert_eq!(
        error(&edit(4, "tls = \"none\"\ndata_dir = \"/home/etcd\"")),
        "inv.toml:5: cluster.data_dir: \"/home/etcd\" is inside a home directory, which qetcd.service cannot see (ProtectHome=yes)"
    );
    let inv = Inventory::parse(
        "inv.toml",
        &edit(4, "tls = \"none\"\ndata_dir = \"/srv/etcd\""),
    )
    .unwrap();
    assert_eq!(inv.data_dir, Path::new("/srv/etcd"));
    assert_eq!(error(&edit(7, "")), "inv.toml:6: member[0].name: missing");
}

#[test]
fn an_even_member_count_warns_why() {
    let text = GOOD.to_string() + "\n[[member]]\nname = \"infra3\"\naddress = \"10.0.1.13\"\n";
    let inv = Inventory::parse("inv.toml", &text).unwrap();
    let w: Vec<String> = inv.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "inv.toml:6: member: 4 members: an even count tolerates no more failures than 3 members (a majority of 4 is 3, so 1 may fail), while every write waits for one more member; use 3 or 5 members"
        ]
    );
}

#[test]
fn dns_names() {
    for ok in ["a", "infra0.example.com", "x-1.example.com.", "a.b9"] {
        assert!(is_dns_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-a.com",
        "a-.com",
        "a..b",
        "10.0.1.300",
        "a b",
        "a_b.com",
    ] {
        assert!(!is_dns_name(bad), "{bad}");
    }
    assert_eq!(
        San::parse("*.example.com"),
        Ok(San::Dns("*.example.com".into()))
    );
}

#[test]
fn discovery_bootstrap_takes_a_v3_token_or_a_v2_url() {
    let v3 = edit(
        4,
        "tls = \"none\"\nbootstrap = \"discovery\"\ndiscovery_token = \"0a1b\"\ndiscovery_endpoints = [\"http://10.0.0.5:2379\"]",
    );
    let inv = Inventory::parse("inv.toml", &v3).unwrap();
    assert_eq!(
        inv.bootstrap,
        Bootstrap::Discovery(EtcdDiscovery::V3 {
            token: "0a1b".into(),
            endpoints: vec!["http://10.0.0.5:2379".into()],
        })
    );
    let v2 = edit(
        4,
        "tls = \"none\"\nbootstrap = \"discovery\"\ndiscovery_url = \"http://10.0.0.5:2379/v2/keys/_etcd/registry/0a1b\"",
    );
    let inv = Inventory::parse("inv.toml", &v2).unwrap();
    assert!(matches!(inv.discovery(), Some(EtcdDiscovery::V2 { .. })));

    let no_endpoints = edit(
        4,
        "tls = \"none\"\nbootstrap = \"discovery\"\ndiscovery_token = \"0a1b\"",
    );
    assert!(
        error(&no_endpoints).starts_with("inv.toml:6: cluster.discovery_endpoints: missing"),
        "{}",
        error(&no_endpoints)
    );
    let bad_url = edit(
        4,
        "tls = \"none\"\nbootstrap = \"discovery\"\ndiscovery_url = \"10.0.0.5:2379/x\"",
    );
    assert!(
        error(&bad_url).contains("invalid discovery URL"),
        "{}",
        error(&bad_url)
    );
    let static_with_token = edit(4, "tls = \"none\"\ndiscovery_token = \"0a1b\"");
    assert_eq!(
        error(&static_with_token),
        "inv.toml:5: cluster.discovery_token: only used with bootstrap = \"discovery\", not \"static\""
    );
}

/// Property tests: whatever the inventory text (garbage, the good one cut short, a line
/// replaced by something else), an inventory or diagnostics that name the file and a
/// line within it; never a panic. Proptest's default case count (256).
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Values and lines an operator might mistype, in TOML's own syntax.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z_.]{1,12} = \"[a-z0-9.:/\\[\\]-]{0,20}\"",
            "[a-z_.]{1,12} = [0-9-]{1,6}",
            "[a-z_.]{1,12} = (true|false|\\[\\]|\\{\\})",
            "\\[\\[?[a-z_.]{0,10}\\]?\\]",
            Just(String::new()),
        ]
    }

    fn check_answer(text: &str) -> Result<(), TestCaseError> {
        let lines = text.lines().count().max(1) + 1;
        match Inventory::parse("inv.toml", text) {
            Ok(_) => {}
            Err(InventoryError::Invalid(diags)) => {
                prop_assert!(!diags.is_empty());
                for d in &diags {
                    prop_assert_eq!(&d.file, "inv.toml");
                    prop_assert!(
                        d.line >= 1 && d.line <= lines,
                        "line {} of {}: {}",
                        d.line,
                        lines,
                        d
                    );
                    prop_assert!(!d.message.is_empty(), "{d}");
                }
            }
            Err(e) => prop_assert!(false, "not a diagnostic: {e}"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_text_is_an_inventory_or_diagnostics(text in any::<String>()) {
            check_answer(&text)?;
        }

        #[test]
        fn the_good_inventory_cut_anywhere_is_answered(cut in 0..GOOD.len()) {
            check_answer(&GOOD[..cut])?;
        }

        #[test]
        fn the_good_inventory_with_a_line_replaced_is_answered(
            at in 1..=GOOD.lines().count(),
            with in line(),
        ) {
            check_answer(&edit(at, &with))?;
        }

        #[test]
        fn the_good_inventory_with_lines_added_is_answered(
            extra in proptest::collection::vec(line(), 1..4),
            at in 1..=GOOD.lines().count(),
        ) {
            let original = GOOD.lines().nth(at - 1).unwrap_or_default();
            check_answer(&edit(at, &format!("{original}\n{}", extra.join("\n"))))?;
        }
    }
}

#[test]
fn an_auth_section_gives_roles_permissions_and_users() {
    let text = format!(
        "{GOOD}\n[[auth.role]]\nname = \"app\"\npermissions = [\n  {{ prefix = \"app/\", access = \"readwrite\" }},\n  {{ key = \"a\", range_end = \"c\", access = \"write\" }},\n  {{ key = \"z\", from_key = true, access = \"read\" }},\n  {{ key = \"config\", access = \"read\" }},\n]\n\n[[auth.user]]\nname = \"alice\"\nroles = [\"app\"]\npassword_file = \"alice.pw\"\n"
    );
    let inv = Inventory::parse("inv.toml", &text).unwrap();
    let auth = inv.auth.expect("an [auth] section");
    let perms: Vec<String> = auth.roles[0]
        .permissions
        .iter()
        .map(auth::Permission::describe)
        .collect();
    assert_eq!(
        perms,
        [
            "readwrite on prefix \"app/\"",
            "write on range [\"a\", \"c\")",
            "read on keys from \"z\" on",
            "read on key \"config\"",
        ]
    );
    assert_eq!(auth.users[0].roles, ["app"]);
    assert_eq!(
        auth.users[0].password_file.as_deref(),
        Some(Path::new("alice.pw"))
    );
    assert!(Inventory::parse("inv.toml", GOOD).unwrap().auth.is_none());
}

#[test]
fn auth_mistakes_are_named_with_their_lines() {
    let base = GOOD.lines().count();
    let cases = [
        (
            "[[auth.user]]\nname = \"root\"\n",
            base + 3,
            "auth.user[0].name: \"root\" is made by `provision auth apply` itself",
        ),
        (
            "[[auth.user]]\nname = \"bob\"\nroles = [\"nope\"]\n",
            base + 4,
            "auth.user[0].roles: no [[auth.role]] is named \"nope\"",
        ),
        (
            "[[auth.role]]\nname = \"r\"\npermissions = [{ key = \"k\", prefix = \"p\", access = \"read\" }]\n",
            base + 4,
            "auth.role[0].permissions[0]: give either key",
        ),
        (
            "[[auth.role]]\nname = \"r\"\npermissions = [{ key = \"k\", access = \"all\" }]\n",
            base + 4,
            "auth.role[0].permissions[0].access: \"all\" is not \"read\", \"write\" or \"readwrite\"",
        ),
        (
            "[[auth.role]]\nname = \"r\"\npermissions = [{ key = \"b\", range_end = \"a\", access = \"read\" }]\n",
            base + 4,
            "auth.role[0].permissions[0].range_end: \"a\" must sort after key \"b\"",
        ),
        (
            "[[auth.role]]\nname = \"r\"\n[[auth.role]]\nname = \"r\"\n",
            base + 5,
            "auth.role[1].name: role \"r\" is listed twice",
        ),
    ];
    for (section, line, text) in cases {
        let e = error(&format!("{GOOD}\n{section}"));
        let want = format!("inv.toml:{line}: {text}");
        assert!(e.starts_with(&want), "got {e}\nwant {want}");
    }
    let plain = GOOD.replace("tls = \"self-signed\"", "tls = \"none\"");
    let e = error(&format!("{plain}\n[[auth.user]]\nname = \"bob\"\n"));
    assert!(e.contains("auth: needs tls = \"self-signed\""), "{e}");
}
