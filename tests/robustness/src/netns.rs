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
