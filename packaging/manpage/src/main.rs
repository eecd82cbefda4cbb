//! Writes the qetcd(8) man page from the daemon's clap definition, so the page lists
//! exactly the flags the binary accepts. Usage: `qetcd-manpage <output dir>`; run by
//! packaging/build-debs.sh before cargo-deb packs the page.

use std::path::PathBuf;
use std::process::ExitCode;

/// What clap does not know: the environment, files, exit codes and the systemd unit.
const EXTRA_SECTIONS: &str = r#".SH ENVIRONMENT
Every flag has an ETCD_* twin: \-\-initial\-cluster\-token is ETCD_INITIAL_CLUSTER_TOKEN.
Giving the same option both ways is an error, as in etcd.
.TP
NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
Set by systemd: qetcd sends READY=1 once it is a serving member of its cluster,
STATUS= lines while it waits for peers or a leader, STOPPING=1 on shutdown and
WATCHDOG=1 pings when the unit sets WatchdogSec=.
.SH FILES
.TP
/etc/qetcd/qetcd.env
The host's ETCD_* settings, read by qetcd.service. The unit does not start until it exists.
.TP
/var/lib/qetcd
The default data directory under systemd. Removing the package, even with purge, leaves it.
.SH EXIT STATUS
.TP
0
Stopped on SIGTERM or SIGINT.
.TP
1
A configuration, storage or listener error (as etcd).
.TP
2
A command line that cannot be parsed (as etcd).
.TP
78
The cluster removed this member. qetcd.service does not restart it
(RestartPreventExitStatus=78): add it again with etcdctl member add and a fresh data directory.
.SH NOTES
Peers talk QUIC: the peer port (2380 by default) is UDP. Client traffic is TCP.
.SH SEE ALSO
etcdctl(1), systemd.service(5)
"#;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: qetcd-manpage <output dir>");
        return ExitCode::from(2);
    };
    let cmd = qetcd::config::command().version(env!("CARGO_PKG_VERSION"));
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("qetcd manual");
    if let Err(e) = man.render(&mut page) {
        eprintln!("qetcd-manpage: {e}");
        return ExitCode::FAILURE;
    }
    page.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    let path = dir.join("qetcd.8");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, page)) {
        Ok(()) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qetcd-manpage: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
