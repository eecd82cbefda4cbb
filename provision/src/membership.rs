//! Runtime membership changes: `provision member add` and `provision member remove`.
//!
//! Both edit the inventory text in place, leaving every other byte of the file as the
//! operator wrote it: an added member is appended as a new `[[member]]` table carrying
//! `joined` (the members it joins, so its bundle starts with
//! `ETCD_INITIAL_CLUSTER_STATE=existing` and the list `etcdctl member add` prints); a
//! removed one gets `removed = true` and stays in the file, so that the initial cluster
//! lists of the other members — and with them their bundles — do not change. Both
//! are idempotent, and both print the plan an operator runs against the live cluster:
//! the inventory describes the cluster, it does not change it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::bundle::layout;
use crate::inventory::{Inventory, InventoryError, Member};
use crate::render;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The request contradicts the inventory.
    #[error("{0}")]
    Conflict(String),
    /// The change is possible but unsafe; `--force` overrides.
    #[error("{0}")]
    Refused(String),
}

/// The inventory text after a change, and whether it differs from before.
#[derive(Debug)]
pub struct Edited {
    pub text: String,
    pub changed: bool,
}

/// A name or hostname as it may be written between TOML quotes without escaping.
fn plain(what: &str, v: &str) -> Result<(), MembershipError> {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(MembershipError::Conflict(format!(
            "{what} {v:?} may only hold letters, digits and . _ -"
        )))
    }
}

/// Appends member `name` to the inventory `text` (read from `file`), joining the
/// members the inventory lists as running. Adding a member that is already there with
/// the same address and hostname changes nothing.
pub fn add(
    file: &str,
    text: &str,
    name: &str,
    address: IpAddr,
    hostname: &str,
) -> Result<Edited, MembershipError> {
    plain("member name", name)?;
    plain("hostname", hostname)?;
    let inv = Inventory::parse(file, text)?;
    if let Some(m) = inv.all_members.iter().find(|m| m.name == name) {
        if m.removed {
            return Err(MembershipError::Conflict(format!(
                "{name} was removed from the cluster (removed = true in {file}); a removed member does not come back under its old name: choose another name, or delete its [[member]] table and its bundle first"
            )));
        }
        if m.joined.is_none() {
            return Err(MembershipError::Conflict(format!(
                "{name} is one of the members {file} bootstraps the cluster with, not one added to it; nothing to add"
            )));
        }
        let same_host = m.hostname.as_deref() == Some(&hostname.to_ascii_lowercase());
        if m.address != address || !same_host {
            return Err(MembershipError::Conflict(format!(
                "{name} is already in {file} with address {} and hostname {}, not {address} and {hostname}: remove it first (`provision member remove {name}`) or choose another name",
                m.address,
                m.hostname.as_deref().unwrap_or("(none)"),
            )));
        }
        return Ok(Edited {
            text: text.to_string(),
            changed: false,
        });
    }
    let joined: Vec<String> = inv
        .members
        .iter()
        .map(|m| format!("{:?}", m.name))
        .collect();
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = write!(
        out,
        "\n[[member]]\n\
         # Added to the running cluster by `provision member add`: it starts with\n\
         # ETCD_INITIAL_CLUSTER_STATE=existing and the members it joined.\n\
         name = \"{name}\"\n\
         address = \"{address}\"\n\
         hostname = \"{hostname}\"\n\
         joined = [{}]\n",
        joined.join(", ")
    );
    // Whatever the new table clashes with (an address or hostname already taken) is
    // reported by the inventory's own checks, against the new file's lines.
    Inventory::parse(file, &out)?;
    Ok(Edited {
        text: out,
        changed: true,
    })
}

/// Marks member `name` removed in the inventory `text`. Refused, unless `force`, when
/// the members left would be an even number or fewer than a majority of the current
/// ones (the removal of a member that is down could not be committed); never allowed
/// for the last member. Removing a removed member changes nothing.
pub fn remove(file: &str, text: &str, name: &str, force: bool) -> Result<Edited, MembershipError> {
    let inv = Inventory::parse(file, text)?;
    let Some(index) = inv.all_members.iter().position(|m| m.name == name) else {
        return Err(MembershipError::Conflict(format!(
            "{file} has no member {name:?}"
        )));
    };
    if inv.all_members[index].removed {
        return Ok(Edited {
            text: text.to_string(),
            changed: false,
        });
    }
    let n = inv.members.len();
    let left = n - 1;
    if left == 0 {
        return Err(MembershipError::Refused(format!(
            "{name} is the cluster's only member; removing it would leave no cluster"
        )));
    }
    if !force {
        if left < n / 2 + 1 {
            return Err(MembershipError::Refused(format!(
                "removing {name} would leave {left} of {n} members, fewer than the {} a removal needs to be committed if {name} is down: the cluster would lose quorum (--force to remove it anyway)",
                n / 2 + 1
            )));
        }
        if left.is_multiple_of(2) {
            return Err(MembershipError::Refused(format!(
                "removing {name} would leave {left} members, an even count that tolerates no more failures than {} members (--force to remove it anyway; better add a member first, or remove two)",
                left - 1
            )));
        }
    }

    // The `[[member]]` headers, in file order, are the members in file order.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            t.strip_prefix("[[")
                .and_then(|h| h.split("]]").next())
                .is_some_and(|h| h.trim() == "member")
        })
        .map(|(i, _)| i)
        .collect();
    if headers.len() != inv.all_members.len() {
        return Err(MembershipError::Conflict(format!(
            "{file} does not write each member as a [[member]] table; add `removed = true` to {name}'s entry by hand"
        )));
    }
    let start = headers[index];
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.trim_start().starts_with('['))
        .map_or(lines.len(), |(i, _)| i);
    // After the table's last value: comments and blank lines before the next table
    // belong to what follows.
    let last = (start..end)
        .rev()
        .find(|&i| {
            let t = lines[i].trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .unwrap_or(start);
    let mut out = String::with_capacity(text.len() + 200);
    for (i, l) in lines.iter().enumerate() {
        out.push_str(l);
        if i == last {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(
                "# Removed from the running cluster by `provision member remove`; kept so that\n\
                 # the initial cluster the other members were rendered with stays as it was.\n\
                 removed = true\n",
            );
        }
    }
    let after = Inventory::parse(file, &out)?;
    if !after
        .all_members
        .iter()
        .any(|m| m.name == name && m.removed)
    {
        return Err(MembershipError::Conflict(format!(
            "could not mark {name} removed in {file}; add `removed = true` to its entry by hand"
        )));
    }
    Ok(Edited {
        text: out,
        changed: true,
    })
}

/// Prints the etcdctl endpoints of `members`, for plans that must not dial the member
/// being added or removed.
fn endpoints(inv: &Inventory, members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| render::client_url(inv, m))
        .collect::<Vec<_>>()
        .join(",")
}

/// `awk` that finds a member's hex ID in `etcdctl member list` by its peer URL (a
/// learner that never started has no name there yet).
fn id_lookup(peer_url: &str) -> String {
    format!("ID=$(etcdctl member list | awk -F', ' '$4 == \"{peer_url}\" {{print $1}}')")
}

fn where_to(m: &Member) -> String {
    m.hostname.clone().unwrap_or_else(|| m.address.to_string())
}

/// The steps that bring the added member `name` into the running cluster. `out` is
/// the directory its bundle was rendered into.
pub fn add_plan(inv: &Inventory, name: &str, out: &Path, voter: bool) -> String {
    let m = inv
        .members
        .iter()
        .find(|m| m.name == name)
        .expect("the member was just added");
    let peer = render::advertised_peer_url(inv, m);
    let others: Vec<&Member> = inv.members.iter().filter(|o| o.name != name).collect();
    let host = where_to(m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Plan: add {name} ({peer}) to cluster {} as a {}. Run from {}:",
        inv.name,
        if voter {
            "voter"
        } else {
            "learner, then promote it"
        },
        out.display()
    );
    let _ = writeln!(
        s,
        "\n  # 1. Announce it to the running members (admin credentials; only the members already running):\n\
         \x20 . admin/etcdctl.env && export ETCDCTL_ENDPOINTS={}\n\
         \x20 etcdctl member add {name} --peer-urls={peer}{}",
        endpoints(inv, &others),
        if voter { "" } else { " --learner" }
    );
    let _ = writeln!(
        s,
        "  # The ETCD_* values it prints are those in {} already\n\
         \x20 # (ETCD_INITIAL_CLUSTER_STATE=existing).",
        layout::on_host(&m.name, layout::ENV_FILE).display()
    );
    if voter {
        let _ = writeln!(
            s,
            "  # A voter counts towards the quorum from now on, before it has started: start it promptly."
        );
    }
    let mut step = 2;
    if inv.srv().is_some() {
        let _ = writeln!(
            s,
            "\n  # {step}. Publish the updated DNS records ({} or {}) so {host} resolves.",
            layout::bind_zone().display(),
            layout::dnsmasq_conf().display()
        );
        step += 1;
    }
    let _ = writeln!(
        s,
        "\n  # {step}. Install the bundle on {host} (with an empty data dir) and start it:\n\
         \x20 rsync -rlp --chown=root:root {name}/ root@{host}:/\n\
         \x20 ssh root@{host} 'chgrp -R qetcd /etc/qetcd/pki && systemctl start qetcd'"
    );
    step += 1;
    if !voter {
        let _ = writeln!(
            s,
            "\n  # {step}. Wait until it has caught up, then promote it to a voter (promote is refused\n\
             \x20 #    until the learner is in sync with the leader):\n\
             \x20 {}\n\
             \x20 until etcdctl member promote \"$ID\"; do sleep 5; done",
            id_lookup(&peer)
        );
        step += 1;
    }
    let _ = writeln!(
        s,
        "\n  # {step}. Check: {name} is listed as started{}.\n\
         \x20 . admin/etcdctl.env && etcdctl member list && etcdctl endpoint health",
        if voter { "" } else { ", not as a learner" }
    );
    s
}

/// The steps that take member `name` out of the running cluster.
pub fn remove_plan(inv: &Inventory, name: &str, out: &Path) -> String {
    let m = inv
        .all_members
        .iter()
        .find(|m| m.name == name)
        .expect("the member is in the inventory");
    let peer = render::advertised_peer_url(inv, m);
    let left: Vec<&Member> = inv.members.iter().filter(|o| o.name != name).collect();
    let host = where_to(m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Plan: remove {name} ({peer}) from cluster {}, leaving {} members. Run from {}:",
        inv.name,
        left.len(),
        out.display()
    );
    let _ = writeln!(
        s,
        "\n  # 1. Remove it from the cluster (admin credentials; only the members that stay):\n\
         \x20 . admin/etcdctl.env && export ETCDCTL_ENDPOINTS={}\n\
         \x20 {}\n\
         \x20 etcdctl member remove \"$ID\"",
        endpoints(inv, &left),
        id_lookup(&peer)
    );
    let _ = writeln!(
        s,
        "\n  # 2. Stop it for good; its data dir belongs to a removed member and must never be reused:\n\
         \x20 ssh root@{host} 'systemctl disable --now qetcd && rm -rf {}/*'",
        inv.data_dir.display()
    );
    let _ = writeln!(
        s,
        "\n  # 3. Its bundle {name}/ is no longer rendered: delete it once the host is gone.\n\
         \x20 . admin/etcdctl.env && etcdctl member list && etcdctl endpoint health"
    );
    s
}

#[cfg(test)]
mod tests;
