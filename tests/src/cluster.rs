//! Several members started as one cluster with `--initial-cluster`.

use std::time::Duration;

use crate::etcdctl::{Etcdctl, Output};
use crate::member::{Binary, Member, MemberSpec};
use crate::wait::wait_until;

pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// Specs for `n` members named `<prefix>0..`, each on its own loopback address.
    pub fn specs(prefix: &str, n: usize, token: &str) -> Vec<MemberSpec> {
        Self::specs_with(prefix, n, token, |_| {})
    }

    /// As [`Cluster::specs`], with `shape` applied to each spec before the initial
    /// cluster is written down (so that it sees, say, an `https` peer scheme).
    pub fn specs_with(
        prefix: &str,
        n: usize,
        token: &str,
        shape: impl Fn(&mut MemberSpec),
    ) -> Vec<MemberSpec> {
        let mut specs: Vec<MemberSpec> = (0..n)
            .map(|i| {
                let mut s = MemberSpec::new(&format!("{prefix}{i}"));
                s.token = Some(token.to_string());
                shape(&mut s);
                s
            })
            .collect();
        let cluster = specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for s in &mut specs {
            s.initial_cluster = Some(cluster.clone());
        }
        specs
    }

    /// Starts the members together and waits until every one is healthy.
    pub fn start(binary: Binary, specs: Vec<MemberSpec>) -> Cluster {
        let members: Vec<Member> = specs
            .into_iter()
            .map(|s| Member::spawn(binary, s))
            .collect();
        for m in &members {
            m.wait_healthy();
        }
        Cluster { members }
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl against every member's endpoint.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.endpoints()).with_args(&self.members[0].spec.etcdctl_args)
    }

    /// Index of the member the given running members agree leads, once they agree.
    pub fn wait_for_leader(&self, among: &[usize]) -> usize {
        wait_until(
            "the members to agree on a leader",
            Duration::from_secs(30),
            || {
                let mut leaders = among.iter().map(|&i| {
                    let out = self.members[i]
                        .etcdctl()
                        .run(&["endpoint", "status", "-w", "json"]);
                    if !out.success {
                        return None;
                    }
                    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
                    v[0]["Status"]["leader"].as_u64().filter(|l| *l != 0)
                });
                let first = leaders.next()??;
                if leaders.all(|l| l == Some(first)) {
                    self.index_of(first)
                } else {
                    None
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `etcdctl member add <name> --peer-urls=<url> [--learner]` on member `via`, and
    /// the spec of a member started with exactly the `ETCD_*` lines it printed (as
    /// environment variables) on a fresh address. Returns the etcdctl output too.
    pub fn add_member(&self, via: usize, name: &str, learner: bool) -> (Output, MemberSpec) {
        let mut spec = MemberSpec::new(name);
        spec.token = None;
        spec.etcdctl_args = self.members[via].spec.etcdctl_args.clone();
        // The same schemes as the cluster; TLS flags are the caller's to add.
        spec.client_scheme = self.members[via].spec.client_scheme.clone();
        spec.peer_scheme = self.members[via].spec.peer_scheme.clone();
        let peer_urls = format!("--peer-urls={}", spec.peer_url());
        let mut args = vec!["member", "add", name, &peer_urls];
        if learner {
            args.push("--learner");
        }
        let out = self.members[via].etcdctl().run_reconfig(&args);
        if out.success {
            spec.env = printed_env(&out.stdout);
        }
        (out, spec)
    }

    /// Starts a member from [`Cluster::add_member`]'s spec; it is the next index.
    pub fn join(&mut self, spec: MemberSpec) -> usize {
        self.members.push(Member::spawn(Binary::Qetcd, spec));
        self.members.len() - 1
    }

    /// Index of the member with this ID.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| {
            m.etcdctl()
                .run(&["endpoint", "status", "-w", "json"])
                .stdout
                .contains(&format!("\"member_id\":{id},"))
        })
    }

    pub fn member_id(&self, i: usize) -> u64 {
        let v = self.members[i]
            .etcdctl()
            .run(&["endpoint", "status", "-w", "json"])
            .json();
        v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member id")
    }
}

/// The `ETCD_X="v"` lines etcdctl printed, as environment variables.
pub fn printed_env(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.starts_with("ETCD_")
                .then(|| (k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}
