//! The optional `[auth]` section: etcd users and roles the cluster should have.
//!
//! ```toml
//! [[auth.role]]
//! name = "app"
//! permissions = [
//!   { prefix = "app/", access = "readwrite" },
//!   { key = "config", access = "read" },
//!   { key = "a", range_end = "c", access = "write" },
//! ]
//!
//! [[auth.user]]
//! name = "alice"
//! roles = ["app"]
//! # password_file = "secrets/alice.pw"   # optional, relative to the inventory
//! ```
//!
//! Users log in with the client certificate `provision render` issues them (CN = the
//! user name, etcd's `--client-cert-auth` rule); a password is optional and never
//! written into the inventory or the bundles: `password_file` names a file the
//! operator keeps, read only by `provision auth apply`. `root` and its role are not
//! listed: `provision auth apply` makes `root` (no password; the admin certificate's
//! CN is `root`) before it turns authentication on.

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, is_simple_name};

/// What a permission allows, as etcd's `read`, `write` and `readwrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }
}

/// One key-range permission of a role, in etcd's terms: `range_end` empty for the key
/// alone, `"\0"` for every key from `key` on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub access: Access,
}

impl Permission {
    /// How etcdctl would name it.
    pub fn describe(&self) -> String {
        let key = String::from_utf8_lossy(&self.key);
        let what = if self.range_end.is_empty() {
            format!("key {key:?}")
        } else if self.range_end == [0] {
            format!("keys from {key:?} on")
        } else if self.range_end == prefix_end(&self.key) {
            format!("prefix {key:?}")
        } else {
            format!(
                "range [{key:?}, {:?})",
                String::from_utf8_lossy(&self.range_end)
            )
        };
        format!("{} on {what}", self.access.as_str())
    }
}

/// etcd's end of the range of keys starting with `prefix` (`etcdctl --prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or an empty prefix): all keys from it on.
    vec![0]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRole {
    pub name: String,
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub name: String,
    pub roles: Vec<String>,
    /// The file holding the user's password (first line), as written in the inventory:
    /// relative paths are taken from the inventory's directory.
    pub password_file: Option<PathBuf>,
}

/// The users and roles `provision auth apply` makes sure the cluster has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthSpec {
    pub roles: Vec<AuthRole>,
    pub users: Vec<AuthUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    role: Vec<Spanned<RawRole>>,
    #[serde(default)]
    user: Vec<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: Option<Spanned<String>>,
    #[serde(default)]
    permissions: Vec<Spanned<RawPermission>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermission {
    key: Option<String>,
    prefix: Option<String>,
    range_end: Option<String>,
    from_key: Option<bool>,
    access: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Option<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

/// A user or role name: it becomes a certificate CN and a file name.
fn check_name(c: &mut Checker<'_>, span: &Range<usize>, field: &str, name: &str) -> bool {
    if !is_simple_name(name) {
        c.error(
            span,
            field,
            format!(
                "{name:?} must be letters, digits, '.', '_' or '-', starting with a letter or digit (it names a certificate file)"
            ),
        );
        return false;
    }
    if name == "root" {
        c.error(
            span,
            field,
            "\"root\" is made by `provision auth apply` itself: the root user (no password; the admin certificate logs in as root) with etcd's built-in root role",
        );
        return false;
    }
    true
}

fn check_permission(
    c: &mut Checker<'_>,
    raw: &Spanned<RawPermission>,
    field: &str,
) -> Option<Permission> {
    let span = raw.span();
    let p = raw.get_ref();
    let access = match p.access.as_deref() {
        Some("read") => Some(Access::Read),
        Some("write") => Some(Access::Write),
        Some("readwrite") => Some(Access::ReadWrite),
        Some(other) => {
            c.error(
                &span,
                &format!("{field}.access"),
                format!("{other:?} is not \"read\", \"write\" or \"readwrite\""),
            );
            None
        }
        None => {
            c.error(
                &span,
                &format!("{field}.access"),
                "missing: \"read\", \"write\" or \"readwrite\"",
            );
            None
        }
    };
    let range = match (&p.key, &p.prefix) {
        (Some(_), Some(_)) | (None, None) => {
            c.error(
                &span,
                field,
                "give either key (with optional range_end or from_key = true) or prefix",
            );
            None
        }
        (None, Some(prefix)) => {
            if p.range_end.is_some() || p.from_key.is_some() {
                c.error(
                    &span,
                    field,
                    "a prefix is its own range: range_end and from_key go with key",
                );
                None
            } else {
                Some((prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes())))
            }
        }
        (Some(key), None) => match (&p.range_end, p.from_key) {
            (Some(_), Some(true)) => {
                c.error(&span, field, "give range_end or from_key = true, not both");
                None
            }
            (Some(end), _) if end.as_str() <= key.as_str() => {
                c.error(
                    &span,
                    &format!("{field}.range_end"),
                    format!("{end:?} must sort after key {key:?}: the range is [key, range_end)"),
                );
                None
            }
            (Some(end), _) => Some((key.as_bytes().to_vec(), end.as_bytes().to_vec())),
            (None, Some(true)) => Some((key.as_bytes().to_vec(), vec![0])),
            (None, _) if key.is_empty() => {
                c.error(
                    &span,
                    &format!("{field}.key"),
                    "empty: etcd refuses an empty key (use prefix = \"\" for every key)",
                );
                None
            }
            (None, _) => Some((key.as_bytes().to_vec(), Vec::new())),
        },
    };
    let (key, range_end) = range?;
    Some(Permission {
        key,
        range_end,
        access: access?,
    })
}

/// Validates `[auth]`; `None` only when there were errors.
pub(super) fn check_auth(
    c: &mut Checker<'_>,
    raw: &Spanned<RawAuth>,
    tls_self_signed: bool,
) -> Option<AuthSpec> {
    let before = c.errors.len();
    if !tls_self_signed {
        c.error(
            &raw.span(),
            "auth",
            "needs tls = \"self-signed\": users get client certificates from the cluster's client CA, and `provision auth apply` logs in as root with the admin certificate",
        );
    }
    let raw = raw.get_ref();
    let mut spec = AuthSpec::default();
    for (i, r) in raw.role.iter().enumerate() {
        let field = format!("auth.role[{i}]");
        let Some(name) = &r.get_ref().name else {
            c.error(&r.span(), &format!("{field}.name"), "missing");
            continue;
        };
        if !check_name(c, &name.span(), &format!("{field}.name"), name.get_ref()) {
            continue;
        }
        if spec.roles.iter().any(|x| &x.name == name.get_ref()) {
            c.error(
                &name.span(),
                &format!("{field}.name"),
                format!("role {:?} is listed twice", name.get_ref()),
            );
            continue;
        }
        let mut permissions = Vec::new();
        for (j, p) in r.get_ref().permissions.iter().enumerate() {
            if let Some(p) = check_permission(c, p, &format!("{field}.permissions[{j}]"))
                && !permissions.contains(&p)
            {
                permissions.push(p);
            }
        }
        spec.roles.push(AuthRole {
            name: name.get_ref().clone(),
            permissions,
        });
    }
    for (i, u) in raw.user.iter().enumerate() {
        let field = format!("auth.user[{i}]");
        let user = u.get_ref();
        let Some(name) = &user.name else {
            c.error(&u.span(), &format!("{field}.name"), "missing");
            continue;
        };
        if !check_name(c, &name.span(), &format!("{field}.name"), name.get_ref()) {
            continue;
        }
        if spec.users.iter().any(|x| &x.name == name.get_ref()) {
            c.error(
                &name.span(),
                &format!("{field}.name"),
                format!("user {:?} is listed twice", name.get_ref()),
            );
            continue;
        }
        let mut roles: Vec<String> = Vec::new();
        for role in &user.roles {
            let r = role.get_ref();
            if !raw
                .role
                .iter()
                .any(|x| x.get_ref().name.as_ref().is_some_and(|n| n.get_ref() == r))
            {
                c.error(
                    &role.span(),
                    &format!("{field}.roles"),
                    format!("no [[auth.role]] is named {r:?}"),
                );
            } else if !roles.contains(r) {
                roles.push(r.clone());
            }
        }
        let password_file = match &user.password_file {
            Some(p) if p.get_ref().is_empty() => {
                c.error(
                    &p.span(),
                    &format!("{field}.password_file"),
                    "empty: leave it out for a user who logs in with the certificate only",
                );
                None
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        };
        spec.users.push(AuthUser {
            name: name.get_ref().clone(),
            roles,
            password_file,
        });
    }
    (c.errors.len() == before).then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"app/"), b"app0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }
}
