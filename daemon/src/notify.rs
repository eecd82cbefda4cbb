//! Telling systemd how the member is doing (`sd_notify`), without libsystemd.
//!
//! The protocol is one unix datagram per notification, `KEY=value` lines, sent to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract namespace).
//! That is small enough to speak directly with std's `UnixDatagram`, which keeps a C
//! library and its build out of the daemon. A leaf: what the member's progress is, the
//! member samples itself (`server::progress`); this module only words and sends it.
//!
//! What the member says, and when (see [`track`]):
//! - `STATUS=` while it starts: which of "waiting for peers n/N", "waiting for leader
//!   election", "catching up", "publishing member attributes" holds. An operator reads
//!   it in `systemctl status`; a member of a new cluster can wait there for a long time.
//! - `READY=1` once its attributes are committed through Raft and the client listeners
//!   serve: from then on `systemctl start` has returned and clients may use it.
//! - `WATCHDOG=1` at half of `$WATCHDOG_USEC`, when the unit sets `WatchdogSec=`.
//! - `STOPPING=1` when it begins to shut down.
//!
//! Without `$NOTIFY_SOCKET` (not run by systemd, or `Type=simple`) every call does
//! nothing. A notification that cannot be delivered is logged once and otherwise
//! ignored: systemd's bookkeeping must never stop a member from serving.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `$NOTIFY_SOCKET` names no socket we can send to.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?}: neither an absolute path nor an @abstract name")]
    BadAddress(String),
    #[error("NOTIFY_SOCKET={socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
}

/// A handle on systemd's notification socket; cheap to clone. Disabled when the
/// process was not started with `$NOTIFY_SOCKET`.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for messages.
    name: String,
    /// The last `STATUS=` sent, so that an unchanged state is not re-sent.
    status: Mutex<String>,
    /// A failed send has been logged; later failures are not.
    failed: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// The notifier `$NOTIFY_SOCKET` asks for; disabled (with a warning) when the
    /// variable is set but unusable, since the member can serve without it.
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier::disabled(),
            Some(v) => Notifier::connect(&v).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot notify systemd");
                Notifier::disabled()
            }),
        }
    }

    /// A notifier for this `$NOTIFY_SOCKET` value: `/path` or `@abstract`.
    pub fn connect(value: &OsStr) -> Result<Self, NotifyError> {
        let name = value.to_string_lossy().into_owned();
        let bytes = value.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(value),
            // systemd writes the abstract namespace's leading NUL as '@'.
            Some(b'@') if bytes.len() > 1 => SocketAddr::from_abstract_name(&bytes[1..]),
            _ => return Err(NotifyError::BadAddress(name)),
        }
        .map_err(|source| NotifyError::Io {
            socket: name.clone(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Io {
            socket: name.clone(),
            source,
        })?;
        // A datagram to a live systemd is queued at once; the timeout only bounds a
        // receiver that has stopped reading, so that no task hangs on it.
        let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
        Ok(Notifier {
            target: Some(Arc::new(Target {
                socket,
                addr,
                name,
                status: Mutex::new(String::new()),
                failed: AtomicBool::new(false),
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (`KEY=value` lines) as it is.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.socket
            .send_to_addr(state.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Io {
                socket: t.name.clone(),
                source,
            })
    }

    /// [`send`](Self::send), logging the first failure instead of returning it.
    fn send_logged(&self, state: &str) {
        if let Err(e) = self.send(state)
            && let Some(t) = &self.target
            && !t.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd; carrying on without it");
        }
    }

    /// `STATUS=`, unless it is what was sent last.
    pub fn status(&self, status: &str) {
        let Some(t) = &self.target else {
            return;
        };
        {
            let mut last = t.status.lock().expect("status lock");
            if *last == status {
                return;
            }
            status.clone_into(&mut last);
        }
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }

    /// `READY=1`, together with the status that goes with it.
    pub fn ready(&self, status: &str) {
        if let Some(t) = &self.target {
            status.clone_into(&mut t.status.lock().expect("status lock"));
        }
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`, with what the member does while it stops.
    pub fn stopping(&self, status: &str) {
        if let Some(t) = &self.target {
            status.clone_into(&mut t.status.lock().expect("status lock"));
        }
        self.send_logged(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }
}

/// A status must stay one line: a newline would start another `KEY=value`.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// recommends, and only when `WATCHDOG_PID` is unset or names this process (a
/// variable inherited from a parent that systemd watches is not meant for us).
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = watchdog_pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// [`watchdog_interval`] for this process, from systemd's `WATCHDOG_USEC`/`WATCHDOG_PID`.
pub fn watchdog_from_env() -> Option<Duration> {
    let env = |k| std::env::var(k).ok();
    watchdog_interval(
        env("WATCHDOG_USEC").as_deref(),
        env("WATCHDOG_PID").as_deref(),
    )
}

/// What a starting (or running) member can see of itself and its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Members of the cluster, this one included.
    pub members: usize,
    /// Members this one has a live peer connection to, itself included.
    pub reachable: usize,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// This member's attributes are committed: it is a serving member.
    pub published: bool,
}

/// The `STATUS=` line for a state, worded for an operator reading `systemctl status`.
pub fn describe(p: &Progress) -> String {
    let quorum = p.members / 2 + 1;
    let reach = format!("{}/{} members reachable", p.reachable, p.members);
    match (p.published, p.leader) {
        (true, Some(l)) => format!("serving; leader {l:x}, {reach}"),
        (true, None) => format!("serving, but no leader: {reach}, quorum needs {quorum}"),
        (false, None) if p.reachable < quorum => {
            format!("waiting for peers: {reach}, quorum needs {quorum}")
        }
        (false, None) => format!("waiting for leader election: {reach}"),
        (false, Some(l)) if p.applied_index < p.commit_index => format!(
            "catching up with leader {l:x}: applied {} of {} entries",
            p.applied_index, p.commit_index
        ),
        (false, Some(l)) => format!("publishing member attributes to leader {l:x}"),
    }
}

/// Keeps systemd informed until the member stops: `STATUS=` whenever [`describe`]
/// changes, `READY=1` once `published` turns true, `WATCHDOG=1` every `watchdog`.
///
/// `progress` is sampled a few times a second; it must be cheap. The watchdog ping
/// comes from the same task as the status, on the runtime that serves clients, so a
/// wedged runtime stops both and systemd restarts the member.
pub async fn track(
    notifier: Notifier,
    mut published: tokio::sync::watch::Receiver<bool>,
    watchdog: Option<Duration>,
    progress: impl Fn(bool) -> Progress,
) {
    const SAMPLE: Duration = Duration::from_millis(200);
    let mut sample = tokio::time::interval(SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval of a year stands for "never" so that one select serves both cases.
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(365 * 86400)));
    let mut ready = false;
    let mut watching = true;
    loop {
        tokio::select! {
            _ = sample.tick() => {}
            _ = ping.tick() => {
                if watchdog.is_some() {
                    notifier.watchdog();
                }
                continue;
            }
            // The sender is gone only while the member stops; keep sampling until the
            // caller ends this task.
            changed = published.changed(), if watching => watching = changed.is_ok(),
        }
        let is_published = *published.borrow();
        let text = describe(&progress(is_published));
        if is_published && !ready {
            ready = true;
            notifier.ready(&text);
        } else {
            notifier.status(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn progress(members: usize, reachable: usize, leader: Option<u64>) -> Progress {
        Progress {
            members,
            reachable,
            leader,
            commit_index: 5,
            applied_index: 5,
            published: false,
        }
    }

    #[test]
    fn describes_each_waiting_state() {
        assert_eq!(
            describe(&progress(3, 1, None)),
            "waiting for peers: 1/3 members reachable, quorum needs 2"
        );
        assert_eq!(
            describe(&progress(3, 2, None)),
            "waiting for leader election: 2/3 members reachable"
        );
        let mut behind = progress(3, 2, Some(0xab));
        behind.applied_index = 3;
        assert_eq!(
            describe(&behind),
            "catching up with leader ab: applied 3 of 5 entries"
        );
        assert_eq!(
            describe(&progress(3, 3, Some(0xab))),
            "publishing member attributes to leader ab"
        );
        let mut serving = progress(1, 1, Some(0xab));
        serving.published = true;
        assert_eq!(
            describe(&serving),
            "serving; leader ab, 1/1 members reachable"
        );
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some(&me)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(None, None), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        n.status("waiting");
        n.status("waiting"); // unchanged: not sent again
        n.status("two\nlines");
        n.ready("serving");
        n.stopping("bye");
        assert_eq!(recv(&sock), "STATUS=waiting");
        assert_eq!(recv(&sock), "STATUS=two lines");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("qetcd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn rejects_relative_names_and_tolerates_a_missing_listener() {
        assert!(matches!(
            Notifier::connect(OsStr::new("relative/sock")),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(Notifier::connect(OsStr::new("")).is_err());
        // Nobody listens: sending fails, the convenience methods just carry on.
        let n = Notifier::connect(OsStr::new("/nonexistent/qetcd-notify")).unwrap();
        assert!(n.send("READY=1").is_err());
        n.ready("serving");
        assert!(!Notifier::disabled().is_enabled());
        assert!(Notifier::disabled().send("READY=1").is_ok());
    }
}
