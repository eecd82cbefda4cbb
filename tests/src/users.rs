//! The users and role most auth tests share, set up through etcdctl as an operator
//! would, so each test file need not spell out the same session.

use crate::Etcdctl;

/// `root` (password `rootpw`, role root) and `alice` (password `alicepw`, role `app`:
/// readwrite on the prefix `app/`); `keys` are put before auth is enabled, last.
pub fn enable_auth_with_alice(ctl: &Etcdctl, keys: &[(&str, &str)]) {
    let setup: &[&[&str]] = &[
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "app",
            "readwrite",
            "app/",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "app"],
    ];
    for args in setup {
        ctl.run(args).ok();
    }
    for (key, value) in keys {
        ctl.run(&["put", key, value]).ok();
    }
    ctl.run(&["auth", "enable"]).ok();
}
