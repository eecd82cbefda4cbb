//! provision: one inventory.toml in, one bundle per qetcd host out.
//!
//! - [`inventory`]: the TOML schema, defaults and validation (errors name file, line
//!   and field);
//! - [`pki`]: CAs and certificates for `tls = "self-signed"`, kept across renders;
//! - [`render`]: the text of each file, checked by the daemon's own `Config`;
//! - [`dns`]: the SRV and address records a `bootstrap = "dns"` cluster needs;
//! - [`discovery`]: discovery tokens for `bootstrap = "discovery"` (made fresh, never
//!   reused);
//! - [`membership`]: `member add` / `member remove` on the inventory of a running
//!   cluster, and the etcdctl plan that goes with each;
//! - [`auth`]: `provision auth apply`, the inventory's `[auth]` users, roles and
//!   permissions made real on a running cluster;
//! - [`bundle`]: where files go, their modes and owners, idempotent writing;
//! - [`check`]: verifying an inventory and what was rendered from it, and with
//!   `--dns` ([`check::dns`]) the records a DNS server actually serves.

pub mod auth;
pub mod bundle;
pub mod check;
pub mod discovery;
pub mod dns;
pub mod inventory;
pub mod membership;
pub mod pki;
pub mod render;

use std::path::Path;

use time::OffsetDateTime;

use bundle::{Owner, Plan, Report, layout};
use inventory::{Inventory, InventoryError, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
}

/// Everything a render would write, and what happened to the TLS material on the way.
pub struct Rendered {
    pub plan: Plan,
    /// Certificates and keys issued, with the reason.
    pub issued: Vec<String>,
    pub warnings: Vec<String>,
}

/// Builds the whole output in memory, reading the CAs, keys and certificates already
/// in `out` so they are kept. Nothing is written.
pub fn build(inv: &Inventory, out: &Path, now: OffsetDateTime) -> Result<Rendered, Error> {
    let mut plan = Plan::default();
    // Every env file is validated before anything else happens, so a rejected
    // configuration never leaves half an output behind.
    for m in &inv.members {
        render::validate(inv, &m.name, &render::env_vars(inv, m))?;
    }
    for m in &inv.members {
        plan.file(
            layout::on_host(&m.name, layout::ENV_FILE),
            render::env_file(inv, m),
            0o644,
            Owner::Root,
        );
        plan.file(
            layout::on_host(&m.name, layout::DROPIN),
            render::dropin(inv, m),
            0o644,
            Owner::Root,
        );
    }
    if let (Some(zone), Some(conf)) = (dns::bind_zone(inv), dns::dnsmasq_conf(inv)) {
        plan.file(layout::bind_zone(), zone, 0o644, Owner::Root);
        plan.file(layout::dnsmasq_conf(), conf, 0o644, Owner::Root);
    }
    // The admin directory holds the operator's key.
    plan.dir(layout::admin(), 0o700, Owner::Root);
    plan.file(
        layout::admin().join("etcdctl.env"),
        render::etcdctl_env(inv),
        0o644,
        Owner::Root,
    );
    let mut issued = Vec::new();
    let mut warnings = Vec::new();
    if inv.tls == TlsMode::SelfSigned {
        let pki = pki::prepare(inv, out, now)?;
        plan.dir(layout::ca_dir(), 0o700, Owner::Root);
        for (which, pair) in [("peer", &pki.peer_ca), ("client", &pki.client_ca)] {
            plan.file(
                layout::ca_cert(which),
                pair.cert_pem.as_str(),
                0o644,
                Owner::Root,
            );
            plan.file(
                layout::ca_key(which),
                pair.key_pem.as_str(),
                0o600,
                Owner::Root,
            );
        }
        for (name, certs) in &pki.members {
            let dir = layout::host_pki(name);
            // The service reads its keys through the group; nobody else gets in.
            plan.dir(&dir, 0o750, Owner::RootService);
            // Certificates world-readable, keys for the service group only.
            for (name, pem, mode) in [
                ("peer-ca.crt", pki.peer_ca.cert_pem.as_str(), 0o644),
                ("client-ca.crt", pki.client_ca.cert_pem.as_str(), 0o644),
                ("peer.crt", certs.peer.cert_pem.as_str(), 0o644),
                ("peer.key", certs.peer.key_pem.as_str(), 0o640),
                ("server.crt", certs.server.cert_pem.as_str(), 0o644),
                ("server.key", certs.server.key_pem.as_str(), 0o640),
            ] {
                plan.file(dir.join(name), pem, mode, Owner::RootService);
            }
        }
        let admin = layout::admin();
        plan.file(
            admin.join("client-ca.crt"),
            pki.client_ca.cert_pem.as_str(),
            0o644,
            Owner::Root,
        );
        plan.file(
            admin.join("peer-ca.crt"),
            pki.peer_ca.cert_pem.as_str(),
            0o644,
            Owner::Root,
        );
        plan.file(
            admin.join("admin.crt"),
            pki.admin.cert_pem.as_str(),
            0o644,
            Owner::Root,
        );
        plan.file(
            admin.join("admin.key"),
            pki.admin.key_pem.as_str(),
            0o600,
            Owner::Root,
        );
        if !pki.users.is_empty() {
            plan.dir(layout::users_dir(), 0o700, Owner::Root);
        }
        for (name, pair) in &pki.users {
            plan.file(
                layout::user_cert(name),
                pair.cert_pem.as_str(),
                0o644,
                Owner::Root,
            );
            plan.file(
                layout::user_key(name),
                pair.key_pem.as_str(),
                0o600,
                Owner::Root,
            );
        }
        issued = pki.notes;
        warnings = pki.warnings;
    }
    plan.add_manifest();
    Ok(Rendered {
        plan,
        issued,
        warnings,
    })
}

/// What `render` did.
pub struct Outcome {
    pub rendered: Rendered,
    pub report: Report,
}

/// Renders `inv` into `out` (or, with `dry_run`, only reports what would change).
///
/// A discovery token is checked with its service first: one that members already
/// registered under is refused (tokens are single-use).
pub fn render(inv: &Inventory, out: &Path, dry_run: bool) -> Result<Outcome, Error> {
    let note = match inv.discovery() {
        Some(d) => discovery::check_token(d)?,
        None => None,
    };
    let mut rendered = build(inv, out, OffsetDateTime::now_utc())?;
    rendered.warnings.extend(note);
    let report = bundle::apply(out, &rendered.plan, dry_run)?;
    Ok(Outcome { rendered, report })
}

/// Renders `inv` into `out` after a membership change: like [`render`], without
/// asking a discovery service about the bootstrap token (a running cluster used it
/// long ago; members added later do not use it).
pub fn render_members(inv: &Inventory, out: &Path) -> Result<Outcome, Error> {
    let rendered = build(inv, out, OffsetDateTime::now_utc())?;
    let report = bundle::apply(out, &rendered.plan, false)?;
    Ok(Outcome { rendered, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_inventory_renders_its_records_checks_clean_and_renders_again_unchanged() {
        let text = "[cluster]\nname = \"c\"\ntoken = \"t\"\nbootstrap = \"dns\"\ndomain = \"example.com\"\n\
                    tls = \"self-signed\"\n\
                    [[member]]\nname = \"infra0\"\naddress = \"10.0.1.10\"\nhostname = \"infra0.example.com\"\n\
                    [[member]]\nname = \"infra1\"\naddress = \"10.0.1.11\"\nhostname = \"infra1.example.com\"\n\
                    [[member]]\nname = \"infra2\"\naddress = \"10.0.1.12\"\nhostname = \"infra2.example.com\"\n";
        let inv = Inventory::parse("inv.toml", text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let first = render(&inv, dir.path(), false).unwrap();
        for path in [layout::bind_zone(), layout::dnsmasq_conf()] {
            assert!(
                first
                    .report
                    .changes
                    .contains(&(path.clone(), bundle::Change::Created)),
                "{}",
                path.display()
            );
        }
        let env =
            std::fs::read_to_string(dir.path().join(layout::on_host("infra1", layout::ENV_FILE)))
                .unwrap();
        assert!(env.contains("ETCD_DISCOVERY_SRV=example.com\n"), "{env}");
        assert!(!env.contains("ETCD_INITIAL_CLUSTER="), "{env}");
        // The peer certificate covers the SRV target the member advertises.
        let findings = check::check(&inv, Some(dir.path()), OffsetDateTime::now_utc());
        assert!(findings.is_empty(), "{findings:?}");
        let again = render(&inv, dir.path(), false).unwrap();
        assert!(
            again.report.changes.is_empty(),
            "{:?}",
            again.report.changes
        );
        assert!(again.rendered.issued.is_empty());
        // A hand-edited record is caught.
        let conf = dir.path().join(layout::dnsmasq_conf());
        let edited = std::fs::read_to_string(&conf).unwrap().replace(
            "infra1.example.com,10.0.1.11",
            "infra1.example.com,10.0.1.99",
        );
        std::fs::write(&conf, edited).unwrap();
        let findings = check::check(&inv, Some(dir.path()), OffsetDateTime::now_utc());
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].message.starts_with("dns/dnsmasq.conf: differs"),
            "{findings:?}"
        );
    }
}
