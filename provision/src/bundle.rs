//! The output directory: where each file goes, with which mode and owner, and writing
//! it idempotently.
//!
//! Each host's folder is laid out as that host's filesystem, so it can be copied onto
//! `/` as it is. A file whose contents and mode already match is not touched (its
//! mtime stays), so a second render of an unchanged inventory changes nothing and
//! configuration management sees no spurious change.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths inside the output directory.
pub mod layout {
    use std::path::PathBuf;

    /// Where the unit reads its environment (`EnvironmentFile=`).
    pub const ENV_FILE: &str = "/etc/qetcd/qetcd.env";
    /// The member's TLS material on the host.
    pub const PKI_DIR: &str = "/etc/qetcd/pki";
    pub const DROPIN: &str = "/etc/systemd/system/qetcd.service.d/10-provision.conf";

    /// `path` (absolute, on the host) inside host `name`'s folder.
    pub fn on_host(name: &str, path: &str) -> PathBuf {
        PathBuf::from(name).join(path.trim_start_matches('/'))
    }

    pub fn host_pki(name: &str) -> PathBuf {
        on_host(name, PKI_DIR)
    }

    /// CA keys and certificates; never copied to a host.
    pub fn ca_dir() -> PathBuf {
        PathBuf::from("ca")
    }

    pub fn ca_cert(which: &str) -> PathBuf {
        ca_dir().join(format!("{which}-ca.crt"))
    }

    pub fn ca_key(which: &str) -> PathBuf {
        ca_dir().join(format!("{which}-ca.key"))
    }

    /// The operator's etcdctl credentials.
    pub fn admin() -> PathBuf {
        PathBuf::from("admin")
    }

    /// The client certificates of `[auth]`'s users, for the operator to hand out.
    pub fn users_dir() -> PathBuf {
        admin().join("users")
    }

    pub fn user_cert(name: &str) -> PathBuf {
        users_dir().join(format!("{name}.crt"))
    }

    pub fn user_key(name: &str) -> PathBuf {
        users_dir().join(format!("{name}.key"))
    }

    pub const MANIFEST: &str = "manifest.txt";

    /// The DNS records of a `bootstrap = "dns"` cluster; for the DNS server, not a host.
    pub fn dns_dir() -> PathBuf {
        PathBuf::from("dns")
    }

    /// A BIND zone fragment (`$INCLUDE`).
    pub fn bind_zone() -> PathBuf {
        dns_dir().join("bind.zone")
    }

    /// A dnsmasq configuration fragment.
    pub fn dnsmasq_conf() -> PathBuf {
        dns_dir().join("dnsmasq.conf")
    }
}

/// The group the qetcd service runs as; it reads the member's keys.
pub const SERVICE_GROUP: &str = "qetcd";

/// Who a file is meant to belong to once installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// root:root
    Root,
    /// root:qetcd: readable by the service through its group.
    RootService,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Root => f.write_str("root:root"),
            Owner::RootService => write!(f, "root:{SERVICE_GROUP}"),
        }
    }
}

/// One directory or file to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the output directory.
    pub path: PathBuf,
    /// `None` for a directory.
    pub contents: Option<Vec<u8>>,
    pub mode: u32,
    pub owner: Owner,
}

/// Everything to render, directories before what they contain.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub entries: Vec<Entry>,
}

impl Plan {
    /// Adds a directory, after whichever of its parents are not planned yet (0755).
    pub fn dir(&mut self, path: impl Into<PathBuf>, mode: u32, owner: Owner) {
        let path = path.into();
        self.parents(&path);
        if !self.entries.iter().any(|e| e.path == path) {
            self.entries.push(Entry {
                path,
                contents: None,
                mode,
                owner,
            });
        }
    }

    /// Adds a file, after whichever of its parent directories are not planned yet
    /// (0755).
    pub fn file(
        &mut self,
        path: impl Into<PathBuf>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        owner: Owner,
    ) {
        let path = path.into();
        self.parents(&path);
        self.entries.push(Entry {
            path,
            contents: Some(contents.into()),
            mode,
            owner,
        });
    }

    fn parents(&mut self, path: &Path) {
        let parents: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for p in parents.into_iter().rev() {
            if !self.entries.iter().any(|e| e.path == p) {
                self.entries.push(Entry {
                    path: p,
                    contents: None,
                    mode: 0o755,
                    owner: Owner::Root,
                });
            }
        }
    }

    /// `manifest.txt`: the mode and owner every entry is meant to have once installed,
    /// since copying the tree may not keep owners (and the rendering machine may not
    /// have the service group at all).
    pub fn add_manifest(&mut self) {
        let mut text = String::from(
            "# mode owner:group path (relative to this directory), as each rendered entry is meant\n\
             # to be installed. Directories end in /.\n",
        );
        for e in &self.entries {
            let slash = if e.contents.is_none() { "/" } else { "" };
            text.push_str(&format!(
                "{:04o} {} {}{slash}\n",
                e.mode,
                e.owner,
                e.path.display()
            ));
        }
        self.file(layout::MANIFEST, text, 0o644, Owner::Root);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    /// Same contents; only mode or group fixed.
    Permissions,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Permissions => "permissions",
        })
    }
}

/// What applying a plan did (or, in a dry run, would do).
#[derive(Debug, Default)]
pub struct Report {
    pub changes: Vec<(PathBuf, Change)>,
    pub unchanged: usize,
    /// Directories created (not listed in `changes`).
    pub created_dirs: usize,
    /// Files in the output directory that this plan no longer renders; left in place.
    pub stale: Vec<PathBuf>,
    /// Why owners could not be set, when they could not.
    pub owner_note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The service group's id on this machine, from /etc/group.
pub fn service_gid() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == SERVICE_GROUP)
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Whether this process may give files away: `/proc/self` belongs to our effective uid.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Writes `plan` under `out`, touching only what differs. With `dry_run`, reports
/// the same changes and writes nothing. Files meant for the service group get it when
/// this machine has that group and we are root; otherwise the report says so.
pub fn apply(out: &Path, plan: &Plan, dry_run: bool) -> Result<Report, BundleError> {
    let (gid, note) = match (service_gid(), running_as_root()) {
        (Some(g), true) => (Some(g), None),
        (None, _) => (
            None,
            Some(format!(
                "group {SERVICE_GROUP:?} does not exist on this machine: modes are set, owners are not; {} lists the intended owners",
                layout::MANIFEST
            )),
        ),
        (Some(_), false) => (
            None,
            Some(format!(
                "not running as root: modes are set, owners are not; {} lists the intended owners",
                layout::MANIFEST
            )),
        ),
    };
    let mut report = apply_with_group(out, plan, dry_run, gid)?;
    report.owner_note = report.owner_note.or(note);
    Ok(report)
}

/// [`apply`], giving service-group entries to root:`gid` when `gid` is given.
pub fn apply_with_group(
    out: &Path,
    plan: &Plan,
    dry_run: bool,
    gid: Option<u32>,
) -> Result<Report, BundleError> {
    let mut report = Report::default();
    let mut chown_ok = true;
    if !dry_run {
        std::fs::create_dir_all(out).map_err(io(out))?;
    }
    for e in &plan.entries {
        let path = out.join(&e.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => Some(m),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(io(&path)(err)),
        };
        let want_gid = match e.owner {
            Owner::RootService => gid,
            Owner::Root => None,
        };
        let perms_differ = |m: &std::fs::Metadata| {
            m.permissions().mode() & 0o7777 != e.mode
                || (chown_ok && want_gid.is_some_and(|g| m.gid() != g))
        };
        let change = match (&e.contents, &meta) {
            (None, Some(m)) if m.is_dir() => perms_differ(m).then_some(Change::Permissions),
            (None, _) => Some(Change::Created),
            (Some(want), Some(m)) if m.is_file() => {
                let have = std::fs::read(&path).map_err(io(&path))?;
                if &have != want {
                    Some(Change::Updated)
                } else {
                    perms_differ(m).then_some(Change::Permissions)
                }
            }
            (Some(_), Some(_)) => Some(Change::Updated),
            (Some(_), None) => Some(Change::Created),
        };
        let Some(change) = change else {
            report.unchanged += 1;
            continue;
        };
        // A new directory shows through the files created in it.
        if e.contents.is_some() || change == Change::Permissions {
            report.changes.push((e.path.clone(), change));
        } else {
            report.created_dirs += 1;
        }
        if dry_run {
            continue;
        }
        match &e.contents {
            None => {
                if meta.is_none() {
                    std::fs::create_dir(&path).map_err(io(&path))?;
                }
            }
            Some(bytes) if change != Change::Permissions => write_new(&path, bytes, e.mode)?,
            Some(_) => {}
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .map_err(io(&path))?;
        if let (Some(g), true) = (want_gid, chown_ok)
            && let Err(err) = std::os::unix::fs::chown(&path, Some(0), Some(g))
        {
            chown_ok = false;
            report.owner_note = Some(format!(
                "cannot give files to root:{SERVICE_GROUP} ({err}): modes are set, owners are not; {} lists the intended owners",
                layout::MANIFEST
            ));
        }
    }
    report.stale = stale_files(out, plan)?;
    Ok(report)
}

/// Writes through a temporary file created with the final mode, so a key is never
/// readable by others, not even for a moment, and a reader never sees half a file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Regular files under `out` that `plan` does not render.
fn stale_files(out: &Path, plan: &Plan) -> Result<Vec<PathBuf>, BundleError> {
    let planned: BTreeSet<&Path> = plan.entries.iter().map(|e| e.path.as_path()).collect();
    let mut stale = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = out.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io(&dir)(err)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let child = rel.join(entry.file_name());
            let ty = entry.file_type().map_err(io(&dir))?;
            if ty.is_dir() {
                stack.push(child);
            } else if !planned.contains(child.as_path()) {
                stale.push(child);
            }
        }
    }
    stale.sort();
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let mut p = Plan::default();
        p.dir("h/etc/qetcd/pki", 0o750, Owner::RootService);
        p.file("h/etc/qetcd/qetcd.env", "A=1\n", 0o644, Owner::Root);
        p.file("h/etc/qetcd/pki/x.key", "secret", 0o640, Owner::RootService);
        p.add_manifest();
        p
    }

    fn mtimes(out: &Path, plan: &Plan) -> Vec<(PathBuf, i64, i64)> {
        plan.entries
            .iter()
            .filter(|e| e.contents.is_some())
            .map(|e| {
                let m = std::fs::metadata(out.join(&e.path)).unwrap();
                (e.path.clone(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    }

    #[test]
    fn a_second_apply_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan();
        let first = apply(dir.path(), &p, false).unwrap();
        assert!(first.changes.iter().all(|(_, c)| *c == Change::Created));
        let key = std::fs::metadata(dir.path().join("h/etc/qetcd/pki/x.key")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o640);
        let pki = std::fs::metadata(dir.path().join("h/etc/qetcd/pki")).unwrap();
        assert_eq!(pki.permissions().mode() & 0o777, 0o750);
        let before = mtimes(dir.path(), &p);

        let second = apply(dir.path(), &p, false).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
        assert_eq!(second.unchanged, p.entries.len());
        assert_eq!(second.created_dirs, 0);
        assert_eq!(before, mtimes(dir.path(), &p));
    }

    #[test]
    fn service_group_files_get_the_group_and_keep_it() {
        if !running_as_root() {
            eprintln!("SKIPPED: giving files away needs root");
            return;
        }
        // Any gid does for chown as root; one that is surely not ours.
        let gid = 54_321;
        let dir = tempfile::tempdir().unwrap();
        let p = plan();
        apply_with_group(dir.path(), &p, false, Some(gid)).unwrap();
        let key = dir.path().join("h/etc/qetcd/pki/x.key");
        let env = dir.path().join("h/etc/qetcd/qetcd.env");
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        assert_eq!((meta(&key).uid(), meta(&key).gid()), (0, gid));
        assert_eq!(meta(&dir.path().join("h/etc/qetcd/pki")).gid(), gid);
        assert_ne!(meta(&env).gid(), gid);
        assert!(
            apply_with_group(dir.path(), &p, false, Some(gid))
                .unwrap()
                .changes
                .is_empty()
        );
        // A copy that lost its group is repaired without rewriting the file.
        std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
        let mtime = (meta(&key).mtime(), meta(&key).mtime_nsec());
        let r = apply_with_group(dir.path(), &p, false, Some(gid)).unwrap();
        assert_eq!(
            r.changes,
            [(PathBuf::from("h/etc/qetcd/pki/x.key"), Change::Permissions)]
        );
        assert_eq!(meta(&key).gid(), gid);
        assert_eq!((meta(&key).mtime(), meta(&key).mtime_nsec()), mtime);
    }

    #[test]
    fn changes_are_reported_and_dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dry = apply(dir.path(), &plan(), true).unwrap();
        assert!(!dry.changes.is_empty());
        assert!(!dir.path().join("h").exists());

        apply(dir.path(), &plan(), false).unwrap();
        let mut p = plan();
        for e in &mut p.entries {
            if e.path.ends_with("qetcd.env") {
                e.contents = Some(b"A=2\n".to_vec());
            }
        }
        std::fs::write(dir.path().join("h/leftover"), "x").unwrap();
        std::fs::set_permissions(
            dir.path().join("h/etc/qetcd/pki/x.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let dry = apply(dir.path(), &p, true).unwrap();
        let expect = vec![
            (PathBuf::from("h/etc/qetcd/qetcd.env"), Change::Updated),
            (PathBuf::from("h/etc/qetcd/pki/x.key"), Change::Permissions),
        ];
        assert_eq!(dry.changes, expect);
        assert_eq!(dry.stale, [PathBuf::from("h/leftover")]);
        assert_eq!(
            std::fs::read(dir.path().join("h/etc/qetcd/qetcd.env")).unwrap(),
            b"A=1\n"
        );
        let real = apply(dir.path(), &p, false).unwrap();
        assert_eq!(real.changes, expect);
        let key = std::fs::metadata(dir.path().join("h/etc/qetcd/pki/x.key")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o640);
        assert!(apply(dir.path(), &p, false).unwrap().changes.is_empty());
    }
}
