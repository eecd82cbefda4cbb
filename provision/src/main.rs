//! The `provision` command line: parse, call the library, print, exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use provision::bundle::Change;
use provision::check::Severity;
use provision::inventory::Inventory;

/// Turn one inventory.toml into everything each qetcd host needs.
///
/// An inventory describes a cluster once: its name and token, how it bootstraps, how
/// its traffic is protected, and its members. `provision render` turns it into one
/// bundle per host — the ETCD_* env file, a systemd drop-in and the host's TLS
/// material — laid out as that host's filesystem, plus the operator's etcdctl
/// credentials and, for DNS SRV discovery, the records to publish. `provision check` verifies an inventory and the bundles rendered from
/// it.
#[derive(Parser)]
#[command(name = "provision", version, propagate_version = true)]
#[command(after_help = "\
Typical use:
  provision render inventory.toml --out bundles
  rsync -rlp --chown=root:root bundles/infra0/ root@infra0:/     # likewise for each host,
  ssh root@infra0 'chgrp -R qetcd /etc/qetcd/pki && systemctl start qetcd'  # owners as in manifest.txt
  provision check inventory.toml --out bundles
  cd bundles && . admin/etcdctl.env && etcdctl endpoint health

See examples/inventory.toml for every setting, with its default.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Render(RenderArgs),
    Check(CheckArgs),
    /// Discovery tokens for bootstrap = "discovery".
    #[command(subcommand)]
    Discovery(DiscoveryCommand),
    /// Add members to or remove them from a running cluster.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Users, roles and permissions ([auth]) on a running cluster.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Subcommand)]
enum AuthCommand {
    Apply(AuthApplyArgs),
}

/// Make the running cluster's users, roles and permissions what [auth] says, then
/// enable authentication.
///
/// Talks to the cluster's members (the inventory's client URLs) with the admin
/// certificate from the output directory (CN root). Creates what is missing: the root
/// user with the root role (no password: the admin certificate is root), every role
/// and its permissions, every user (with the password in its password_file, else
/// certificate-only) and the roles granted to it; enables authentication last.
/// Nothing is deleted; with --prune, permissions of listed roles and roles of listed
/// users that the inventory does not name are revoked. Running it again changes
/// nothing. Users log in with the certificates `provision render` issued them in
/// DIR/admin/users/ (CN = user name; members run with --client-cert-auth).
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Example:
  provision render inventory.toml --out bundles     # issues admin/users/<name>.{crt,key}
  provision auth apply --inventory inventory.toml --out bundles")]
struct AuthApplyArgs {
    /// The inventory (TOML) with the [auth] section.
    #[arg(short, long, value_name = "FILE")]
    inventory: PathBuf,
    /// The directory `provision render` rendered the cluster into (for admin/).
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Also revoke permissions and role grants the inventory does not list.
    #[arg(long)]
    prune: bool,
}

#[derive(Subcommand)]
enum MemberCommand {
    Add(MemberAddArgs),
    Remove(MemberRemoveArgs),
}

/// Add a member to the running cluster: inventory, certificates, bundle and plan.
///
/// Appends a [[member]] table for it to the inventory (the rest of the file is left
/// as it is), with `joined` naming the members it joins. Its bundle is rendered with
/// ETCD_INITIAL_CLUSTER_STATE=existing and ETCD_INITIAL_CLUSTER listing those members
/// and itself — the values `etcdctl member add` prints — and with certificates from
/// the cluster's CAs. The other members' bundles do not change.
///
/// Nothing is done to the cluster itself: the command prints the plan to run, adding
/// the member as a learner, installing and starting it, and promoting it once it has
/// caught up (with --voter, adding it as a voter straight away).
///
/// Running it again for the same name, address and hostname changes nothing and
/// prints the plan again; the same name with another address is an error.
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Example:
  provision member add infra3 --address 10.0.1.13 --hostname infra3.example.com \\
      --inventory inventory.toml --out bundles")]
struct MemberAddArgs {
    /// The new member's name (its ETCD_NAME and bundle directory).
    name: String,
    /// The IP address it listens on and advertises.
    #[arg(long)]
    address: std::net::IpAddr,
    /// Its DNS name (in its certificates).
    #[arg(long)]
    hostname: String,
    /// Add it as a voter at once instead of as a learner promoted after catching up.
    #[arg(long)]
    voter: bool,
    /// The inventory (TOML) describing the cluster; edited in place.
    #[arg(short, long, value_name = "FILE")]
    inventory: PathBuf,
    /// The directory `provision render` renders the cluster into.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
}

/// Remove a member from the running cluster: inventory and plan.
///
/// Marks its [[member]] table `removed = true` (kept, so that the initial cluster the
/// other members were rendered with stays as it was), renders the output directory
/// again (the member's bundle is no longer rendered; nobody else's changes), and
/// prints the plan: `etcdctl member remove`, then stop the host and wipe its data.
///
/// Refused without --force when the members left would be an even number, or too few
/// to commit the removal while the member is down (a two-member cluster); removing
/// the last member is always refused. Removing a removed member again changes nothing
/// and prints the plan again.
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Example:
  provision member remove infra3 --inventory inventory.toml --out bundles")]
struct MemberRemoveArgs {
    /// The member to remove.
    name: String,
    /// Remove it even if that leaves an even member count or risks the quorum.
    #[arg(long)]
    force: bool,
    /// The inventory (TOML) describing the cluster; edited in place.
    #[arg(short, long, value_name = "FILE")]
    inventory: PathBuf,
    /// The directory `provision render` renders the cluster into.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum DiscoveryCommand {
    New(DiscoveryNewArgs),
}

/// Create a fresh discovery token on a running cluster and print the inventory lines
/// that use it.
///
/// The cluster is any running etcd or qetcd: with the v3 protocol (the default, as etcd
/// 3.6) the token's size key /_etcd/registry/<token>/_config/size is written through
/// the v3 API; with --v2 it is written through the v2 keys API (etcd ≤ 3.5 or qetcd,
/// started with --enable-v2) and the token is a URL. The key is created only if absent.
/// A token is single-use: make a new one for every bootstrap, even after a failed one.
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Examples:
  provision discovery new --size 3 --endpoints http://10.0.0.5:2379
  provision discovery new --size 3 --endpoints http://10.0.0.5:2379 --v2")]
struct DiscoveryNewArgs {
    /// How many members will bootstrap with the token.
    #[arg(long)]
    size: u32,
    /// Client URLs of the cluster that holds the token (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Use etcd's v2 discovery protocol (ETCD_DISCOVERY) instead of v3.
    #[arg(long)]
    v2: bool,
}

/// Render every host's bundle into an output directory.
///
/// For each member, DIR/<name>/ holds what that host needs, at the paths it needs it,
/// so it can be copied onto the host's / as it is:
///
///   etc/qetcd/qetcd.env              ETCD_* variables (EnvironmentFile= of qetcd.service)
///   etc/qetcd/pki/                   peer.{crt,key}, server.{crt,key}, peer-ca.crt,
///                                    client-ca.crt (tls = "self-signed")
///   etc/systemd/system/qetcd.service.d/10-provision.conf
///                                    drop-in (e.g. for a data dir outside /var/lib/qetcd)
///
/// DIR/admin/ holds the operator's client certificate and etcdctl.env (source it from
/// DIR), DIR/ca/ the CA keys (keep them safe; never copy them to a host), and
/// DIR/manifest.txt the mode and owner each file is meant to have once installed.
/// With bootstrap = "dns", DIR/dns/ holds the records to publish: bind.zone (a zone
/// fragment for $INCLUDE) and dnsmasq.conf (for dnsmasq's conf-dir).
///
/// Every env file is checked with qetcd's own configuration validation before
/// anything is written. Rendering again is safe: CA and keys are kept, certificates
/// are re-issued only when their names change or they near expiry, unchanged files
/// are left untouched, and every change is listed.
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Examples:
  provision render examples/inventory.toml --out bundles
  provision render examples/inventory.toml --out bundles --dry-run")]
struct RenderArgs {
    /// The inventory (TOML) describing the cluster.
    inventory: PathBuf,
    /// Output directory; created if missing, and rendered into again on later runs.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Show what would be created or changed, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Check an inventory and, with --out, the bundles rendered from it.
///
/// Without --out, validates the inventory and the configuration it renders. With
/// --out, also reads every host's bundle as that host will:
///
///   - env files pass qetcd's validation, match the inventory, and agree with each
///     other (ETCD_INITIAL_CLUSTER, token, state);
///   - every certificate covers every address its member serves and advertises,
///     chains to the CA its peers trust, matches its key, has the right key usages,
///     and has more than 30 days left (a warning otherwise);
///   - private keys are not readable beyond their owner and the service group.
///
/// With --dns (bootstrap = "dns"), also looks up every record the inventory renders
/// (A/AAAA of each member hostname, the server and client SRV records) through this
/// machine's resolver, and names each one that is missing or differs.
///
/// Exits 1 on any error, 0 when there are at most warnings.
#[derive(Args)]
#[command(verbatim_doc_comment)]
#[command(after_help = "\
Examples:
  provision check examples/inventory.toml
  provision check examples/inventory.toml --out bundles
  provision check examples/inventory-dns.toml --dns")]
struct CheckArgs {
    /// The inventory (TOML) describing the cluster.
    inventory: PathBuf,
    /// A directory `provision render` wrote; its bundles are checked too.
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Look up the cluster's DNS SRV discovery records through the system resolver
    /// and compare them with the inventory.
    #[arg(long)]
    dns: bool,
}

/// `println!` that ignores a closed stdout (`provision render ... | head`): by the time
/// anything is printed the work is done, and a panic would only hide that.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(a) => render(a),
        Command::Check(a) => check(a),
        Command::Discovery(DiscoveryCommand::New(a)) => discovery_new(a),
        Command::Member(MemberCommand::Add(a)) => member_add(a),
        Command::Member(MemberCommand::Remove(a)) => member_remove(a),
        Command::Auth(AuthCommand::Apply(a)) => auth_apply(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provision: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Inventory> {
    let inv = Inventory::load(path)?;
    for w in &inv.warnings {
        eprintln!("warning: {w}");
    }
    Ok(inv)
}

fn render(a: RenderArgs) -> anyhow::Result<ExitCode> {
    let inv = load(&a.inventory)?;
    let out = provision::render(&inv, &a.out, a.dry_run)
        .with_context(|| format!("rendering {}", a.inventory.display()))?;
    say!(
        "cluster {}: {} members, tls {}, into {}{}",
        inv.name,
        inv.members.len(),
        inv.tls.as_str(),
        a.out.display(),
        if a.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    if let Some(d) = inv.discovery() {
        say!(
            "  bootstrap discovery: token {} (single-use; start all members with it, then drop it for the next cluster)",
            d.describe()
        );
    }
    if let Some(srv) = inv.srv() {
        say!(
            "  bootstrap dns: publish {} or {} on the DNS server for {}, then `provision check {} --dns`",
            provision::bundle::layout::bind_zone().display(),
            provision::bundle::layout::dnsmasq_conf().display(),
            srv.domain,
            a.inventory.display()
        );
    }
    for note in &out.rendered.issued {
        let verb = if a.dry_run { "would issue" } else { "issued" };
        say!("  {verb} {note}");
    }
    for (path, change) in &out.report.changes {
        let verb = match (change, a.dry_run) {
            (Change::Created, false) => "created",
            (Change::Created, true) => "would create",
            (Change::Updated, false) => "updated",
            (Change::Updated, true) => "would update",
            (Change::Permissions, false) => "fixed mode/owner of",
            (Change::Permissions, true) => "would fix mode/owner of",
        };
        say!("  {verb} {}", path.display());
    }
    for s in &out.report.stale {
        say!(
            "  left in place, no longer rendered: {} (remove it if it is obsolete)",
            s.display()
        );
    }
    for w in &out.rendered.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(note) = &out.report.owner_note
        && !out.report.changes.is_empty()
    {
        eprintln!("note: {note}");
    }
    if out.report.changes.is_empty() {
        say!(
            "nothing changed: all {} entries are up to date",
            out.report.unchanged
        );
    } else {
        let count = |c: Change| out.report.changes.iter().filter(|(_, x)| *x == c).count();
        say!(
            "{}{} created, {} updated, {} permission fixes, {} unchanged",
            if a.dry_run { "would be: " } else { "" },
            count(Change::Created),
            count(Change::Updated),
            count(Change::Permissions),
            out.report.unchanged
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the edited inventory (when it changed) next to the old one and renames it
/// into place, keeping the file's mode.
fn save_inventory(path: &Path, edited: &provision::membership::Edited) -> anyhow::Result<()> {
    if !edited.changed {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".provision-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &edited.text).with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Loads the edited inventory, renders it and reports what changed in `out`.
fn render_after_edit(
    path: &Path,
    edited: &provision::membership::Edited,
    out: &Path,
) -> anyhow::Result<Inventory> {
    let file = path.display().to_string();
    let inv = Inventory::parse(&file, &edited.text)?;
    // Render first: a configuration the daemon would refuse leaves the inventory alone.
    let outcome = provision::render_members(&inv, out)
        .with_context(|| format!("rendering {file} into {}", out.display()))?;
    save_inventory(path, edited)?;
    if edited.changed {
        say!("updated {file}");
    } else {
        say!("{file} already describes this change: nothing to edit");
    }
    for note in &outcome.rendered.issued {
        say!("  issued {note}");
    }
    for (p, change) in &outcome.report.changes {
        let verb = match change {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Permissions => "fixed mode/owner of",
        };
        say!("  {verb} {}", p.display());
    }
    for s in &outcome.report.stale {
        say!("  left in place, no longer rendered: {}", s.display());
    }
    for w in inv
        .warnings
        .iter()
        .map(ToString::to_string)
        .chain(outcome.rendered.warnings.iter().cloned())
    {
        eprintln!("warning: {w}");
    }
    if let Some(note) = &outcome.report.owner_note
        && !outcome.report.changes.is_empty()
    {
        eprintln!("note: {note}");
    }
    Ok(inv)
}

fn member_add(a: MemberAddArgs) -> anyhow::Result<ExitCode> {
    let file = a.inventory.display().to_string();
    let text = std::fs::read_to_string(&a.inventory).with_context(|| format!("reading {file}"))?;
    let edited = provision::membership::add(&file, &text, &a.name, a.address, &a.hostname)?;
    let inv = render_after_edit(&a.inventory, &edited, &a.out)?;
    say!();
    say!(
        "{}",
        provision::membership::add_plan(&inv, &a.name, &a.out, a.voter).trim_end()
    );
    Ok(ExitCode::SUCCESS)
}

fn member_remove(a: MemberRemoveArgs) -> anyhow::Result<ExitCode> {
    let file = a.inventory.display().to_string();
    let text = std::fs::read_to_string(&a.inventory).with_context(|| format!("reading {file}"))?;
    let edited = provision::membership::remove(&file, &text, &a.name, a.force)?;
    let inv = render_after_edit(&a.inventory, &edited, &a.out)?;
    say!();
    say!(
        "{}",
        provision::membership::remove_plan(&inv, &a.name, &a.out).trim_end()
    );
    Ok(ExitCode::SUCCESS)
}

fn auth_apply(a: AuthApplyArgs) -> anyhow::Result<ExitCode> {
    let inv = load(&a.inventory)?;
    let changes = provision::auth::apply(&inv, &a.out, a.prune)?;
    for c in &changes {
        say!("  {c}");
    }
    if changes.is_empty() {
        say!(
            "nothing changed: the cluster already has the users, roles and permissions of {}",
            a.inventory.display()
        );
    } else {
        say!("{} applied to the cluster", plural(changes.len(), "change"));
    }
    Ok(ExitCode::SUCCESS)
}

fn discovery_new(a: DiscoveryNewArgs) -> anyhow::Result<ExitCode> {
    let d = provision::discovery::new_token(a.size, &a.endpoints, a.v2)?;
    say!(
        "# A fresh discovery token for {} members; put these lines in the inventory's [cluster]:",
        a.size
    );
    say!("{}", provision::discovery::inventory_lines(&d).trim_end());
    Ok(ExitCode::SUCCESS)
}

fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let inv = Inventory::load(&a.inventory)?;
    let mut findings =
        provision::check::check(&inv, a.out.as_deref(), time::OffsetDateTime::now_utc());
    if a.dns {
        findings.extend(provision::check::dns::check(&inv));
    }
    for f in &findings {
        say!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let mut what = match &a.out {
        Some(out) => format!(
            "{} and the {} bundles in {}",
            a.inventory.display(),
            inv.members.len(),
            out.display()
        ),
        None => a.inventory.display().to_string(),
    };
    if a.dns {
        what.push_str(" and its DNS records");
    }
    if errors == 0 {
        say!("ok: {what} ({})", plural(warnings, "warning"));
        Ok(ExitCode::SUCCESS)
    } else {
        say!(
            "{}, {} in {what}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        Ok(ExitCode::FAILURE)
    }
}
