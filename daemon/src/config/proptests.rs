//! Property tests of the flag and `ETCD_*` parser and of the URL and initial-cluster
//! parsers: whatever the input, an answer or an error that names the culprit, never a
//! panic. Case counts are proptest's default (256 per property; `PROPTEST_CASES`
//! raises them).

use proptest::prelude::*;

use super::*;

/// Any text, weighted towards what these parsers split on.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9:/=,.\\[\\]@%?#-]{0,40}",
        "(https?|unixs?|ftp)://[a-z0-9.:\\[\\]]{0,20}(/[a-z]{0,3})?",
    ]
}

fn flag_name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(FLAGS.iter().map(|f| f.name).collect::<Vec<_>>())
}

/// Whether `msg` names flag `name`: as written (`log-level`), or in the words of
/// etcd's own message for it (`unknown log level`), which qetcd keeps letter for letter.
fn names_flag(msg: &str, name: &str) -> bool {
    msg.contains(name) || msg.contains(&name.replace('-', " "))
}

/// Parse, then validate as a new member would be; every error is returned.
fn parse_and_validate(args: Vec<String>, env: &[(String, String)]) -> Result<(), ConfigError> {
    let mut full = vec!["qetcd".to_string()];
    full.extend(args);
    if let Parsed::Run { config, .. } = Config::parse(full, env)? {
        config.validate()?;
        config.validate_new_cluster()?;
    }
    Ok(())
}

proptest! {
    /// A known flag with any value: parsed, or refused with a message naming the flag.
    #[test]
    fn any_value_of_a_flag_is_parsed_or_refused_by_name(name in flag_name(), value in text()) {
        let mut full = vec!["qetcd".to_string(), format!("--{name}={value}")];
        let parsed = Config::parse(std::mem::take(&mut full), &[]);
        if let Err(e) = &parsed {
            let msg = e.to_string();
            prop_assert!(names_flag(&msg, name), "{msg:?} does not name --{name}");
        }
        let _ = parse_and_validate(vec![format!("--{name}={value}")], &[]);
    }

    /// The same through the environment: parsed, or refused naming the variable.
    #[test]
    fn any_value_of_an_etcd_variable_is_parsed_or_refused_by_name(name in flag_name(), value in text()) {
        let var = env_name(name);
        let env = vec![(var.clone(), value)];
        if let Err(e) = Config::parse(["qetcd"], &env) {
            let msg = e.to_string();
            prop_assert!(msg.contains(&var) || names_flag(&msg, name), "{msg:?} does not name {var}");
        }
        let _ = parse_and_validate(Vec::new(), &env);
    }

    /// Any command line and any `ETCD_*`-looking environment: no panic.
    #[test]
    fn any_command_line_is_answered(
        args in proptest::collection::vec(prop_oneof![text(), flag_name().prop_map(|n| format!("--{n}"))], 0..6),
        env in proptest::collection::vec(("ETCD_[A-Z_]{0,20}", text()), 0..4),
    ) {
        let _ = parse_and_validate(args, &env);
    }

    /// URL lists: any text is a list or an error quoting the offending URL.
    #[test]
    fn any_url_list_is_parsed_or_refused_quoting_it(value in text()) {
        match parse_url_list(&value) {
            Ok(urls) => {
                // What comes out parses again to the same list.
                let again = urls.iter().map(url_string).collect::<Vec<_>>().join(",");
                let reparsed = parse_url_list(&again).map(|u| u.iter().map(url_string).collect::<Vec<_>>());
                prop_assert_eq!(reparsed, Ok(urls.iter().map(url_string).collect::<Vec<_>>()));
            }
            Err(e) => {
                let culprit = value.split(',').map(str::trim).find(|u| !u.is_empty() && (e.contains(u) || e.contains(&format!("{u:?}"))));
                prop_assert!(culprit.is_some(), "{e:?} quotes none of {value:?}");
            }
        }
    }

    /// `--initial-cluster`: any text parses or is refused; what parses prints back to
    /// a value that parses to the same cluster.
    #[test]
    fn any_initial_cluster_parses_or_is_refused(value in prop_oneof![
        text(),
        proptest::collection::vec(("[a-z]{1,5}", 1u16..65535), 0..5)
            .prop_map(|ms| ms.iter().map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")),
    ]) {
        if let Ok(cluster) = InitialCluster::parse(&value) {
            prop_assert_eq!(InitialCluster::parse(&cluster.to_string()), Ok(cluster));
        }
    }
}

/// Regression (found by `any_initial_cluster_parses_or_is_refused`): a member with an
/// empty URL was accepted as a member without peer URLs; etcd 3.4 refuses it with
/// "error setting up initial cluster: URL scheme must be http, https, unix, or unixs: ".
#[test]
fn a_member_without_a_url_is_refused_as_etcd_does() {
    for value in ["default=", "=", "default=http://localhost:2380,x= "] {
        assert_eq!(
            InitialCluster::parse(value),
            Err("URL scheme must be http, https, unix, or unixs: ".to_string()),
            "{value:?}"
        );
    }
}
