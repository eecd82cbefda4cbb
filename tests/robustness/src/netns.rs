//! Running the recorder's clients on a host of their own: the threads of a tokio
//! runtime enter a network namespace as they start ([`enter`] from `on_thread_start`),
//! so every socket they open is in it. The rest of the test process stays where it is.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Moves the calling thread into network namespace `name` (made by `ip netns add`).
pub fn enter(name: &str) -> std::io::Result<()> {
    let ns = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on a file descriptor we own; it changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A multi-threaded tokio runtime whose threads all run in network namespace `name`.
pub fn runtime_in(name: &str, worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    // Fail here, not on a worker thread, if the namespace is not there.
    File::open(format!("/run/netns/{name}"))?;
    let name = name.to_string();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .on_thread_start(move || {
            enter(&name).unwrap_or_else(|e| panic!("enter network namespace {name}: {e}"))
        })
        .build()
}

/// A cut between two groups of hosts on one bridge: every host of one group gets a
/// blackhole route to each address of the other (`ip route add blackhole <addr>/32`),
/// so nothing passes either way between them while both still reach every other host
/// (the clients' host, say). Healed by [`Cut::heal`] or on drop.
pub struct Cut {
    /// (namespace, address it can no longer reach).
    routes: Vec<(String, String)>,
}

impl Cut {
    /// Cuts `a` from `b`, each a list of (namespace, address).
    pub fn between(a: &[(&str, &str)], b: &[(&str, &str)]) -> std::io::Result<Cut> {
        let mut cut = Cut { routes: Vec::new() };
        for (from, to) in [(a, b), (b, a)] {
            for (ns, _) in from {
                for (_, addr) in to {
                    ip_route(ns, "add", addr)?;
                    cut.routes.push((ns.to_string(), addr.to_string()));
                }
            }
        }
        Ok(cut)
    }

    /// Removes the routes; an error names the first one that would not go.
    pub fn heal(mut self) -> std::io::Result<()> {
        for (ns, addr) in std::mem::take(&mut self.routes) {
            ip_route(&ns, "del", &addr)?;
        }
        Ok(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for (ns, addr) in std::mem::take(&mut self.routes) {
            let _ = ip_route(&ns, "del", &addr);
        }
    }
}

fn ip_route(ns: &str, verb: &str, addr: &str) -> std::io::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "route", verb, "blackhole", &format!("{addr}/32")])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip -n {ns} route {verb} blackhole {addr}/32: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
