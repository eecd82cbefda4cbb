//! A user-space UDP proxy in front of each member's peer port, to lose and delay peer
//! traffic. This machine's kernel has no `sch_netem` (`tc qdisc add ... netem` answers
//! "Specified qdisc kind is unknown"), so loss and delay are made here instead, as
//! etcd's robustness tests do with their TCP proxy. Peers talk QUIC over UDP, so a
//! datagram proxy sees all of it; QUIC itself recovers from loss and reordering.
//!
//! Member `i` listens on its real peer address and advertises the proxy's address
//! (`--initial-advertise-peer-urls`), so every peer that dials it goes through the
//! proxy. For each source address the proxy keeps a session: a socket of its own that
//! forwards to the member and carries the member's answers back. Datagrams in both
//! directions pass through [`Faults`]: dropped with a probability, held for a delay
//! plus a random jitter (so they can overtake each other: reordering).
//!
//! Everything runs on a runtime of the proxy's own (one thread), stopped on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Datagrams held for delay at once, per proxy; beyond this they are dropped (a
/// bounded queue, like a router's).
const MAX_HELD: usize = 20_000;

/// The faults applied to every datagram, changeable while the proxy runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// Drop probability, in parts per million.
    loss_ppm: AtomicU64,
    /// Fixed delay, microseconds.
    delay_us: AtomicU64,
    /// Extra random delay up to this, microseconds.
    jitter_us: AtomicU64,
}

impl Faults {
    /// Loses `loss` (0.0–1.0) of the datagrams and delays each by `delay` plus up to
    /// `jitter`.
    pub fn set(&self, loss: f64, delay: Duration, jitter: Duration) {
        self.loss_ppm
            .store((loss.clamp(0.0, 1.0) * 1e6) as u64, Ordering::SeqCst);
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
        self.jitter_us
            .store(jitter.as_micros() as u64, Ordering::SeqCst);
    }

    /// No loss, no delay.
    pub fn clear(&self) {
        self.set(0.0, Duration::ZERO, Duration::ZERO);
    }

    /// What to do with one datagram: `None` drops it, else the delay to hold it for.
    fn judge(&self, rng: &mut u64) -> Option<Duration> {
        let loss = self.loss_ppm.load(Ordering::Relaxed);
        if loss > 0 && next(rng) % 1_000_000 < loss {
            return None;
        }
        let delay = self.delay_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let extra = if jitter > 0 { next(rng) % jitter } else { 0 };
        Some(Duration::from_micros(delay + extra))
    }
}

/// Counts of what the proxies did, for the test's report (and to show the faults bit).
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub delayed: AtomicU64,
}

/// One proxy per member: `listen[i]` forwards to `targets[i]`.
pub struct Proxies {
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxies {
    /// Binds every listening address and starts forwarding.
    pub fn start(routes: &[(SocketAddr, SocketAddr)]) -> std::io::Result<Proxies> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("udp-proxy")
            .enable_all()
            .build()?;
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        for (n, &(listen, target)) in routes.iter().enumerate() {
            let socket = rt.block_on(UdpSocket::bind(listen))?;
            let proxy = Proxy {
                listen: Arc::new(socket),
                bind_ip: listen.ip(),
                target,
                faults: faults.clone(),
                counters: counters.clone(),
                held: Arc::new(AtomicUsize::new(0)),
                sessions: Mutex::new(HashMap::new()),
            };
            rt.spawn(Arc::new(proxy).run(n as u64 + 1));
        }
        Ok(Proxies {
            faults,
            counters,
            rt: Some(rt),
        })
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Proxy {
    listen: Arc<UdpSocket>,
    bind_ip: std::net::IpAddr,
    target: SocketAddr,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    held: Arc<AtomicUsize>,
    /// Source address -> the socket that talks to the target on its behalf.
    sessions: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

impl Proxy {
    async fn run(self: Arc<Self>, seed: u64) {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = self.listen.recv_from(&mut buf).await else {
                continue;
            };
            let Some(session) = self.session(from).await else {
                continue;
            };
            self.pass(&mut rng, session, self.target, &buf[..n]).await;
        }
    }

    /// The session for `from`, made (with its return path) on first use.
    async fn session(self: &Arc<Self>, from: SocketAddr) -> Option<Arc<UdpSocket>> {
        if let Some(s) = self.sessions.lock().expect("sessions").get(&from) {
            return Some(s.clone());
        }
        let socket = Arc::new(UdpSocket::bind((self.bind_ip, 0)).await.ok()?);
        self.sessions
            .lock()
            .expect("sessions")
            .insert(from, socket.clone());
        let me = self.clone();
        let back = socket.clone();
        tokio::spawn(async move {
            let mut rng = from.port() as u64 | 1;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                me.pass(&mut rng, me.listen.clone(), from, &buf[..n]).await;
            }
        });
        Some(socket)
    }

    /// Sends `datagram` from `via` to `to`, after the faults had their say.
    async fn pass(&self, rng: &mut u64, via: Arc<UdpSocket>, to: SocketAddr, datagram: &[u8]) {
        let Some(delay) = self.faults.judge(rng) else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        if delay.is_zero() {
            // A full socket buffer loses the datagram, as a link would.
            let _ = via.send_to(datagram, to).await;
            return;
        }
        if self.held.fetch_add(1, Ordering::SeqCst) >= MAX_HELD {
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.delayed.fetch_add(1, Ordering::Relaxed);
        let held = self.held.clone();
        let datagram = datagram.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = via.send_to(&datagram, to).await;
            held.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// xorshift64.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_drop_about_the_share_asked_and_delay_within_bounds() {
        let f = Faults::default();
        f.set(0.25, Duration::from_millis(10), Duration::from_millis(5));
        let mut rng = 7u64;
        let mut dropped = 0;
        for _ in 0..10_000 {
            match f.judge(&mut rng) {
                None => dropped += 1,
                Some(d) => assert!(
                    d >= Duration::from_millis(10) && d < Duration::from_millis(15),
                    "{d:?}"
                ),
            }
        }
        assert!(
            (2_000..3_000).contains(&dropped),
            "dropped {dropped} of 10000"
        );
        f.clear();
        assert_eq!(f.judge(&mut rng), Some(Duration::ZERO));
    }

    #[test]
    fn datagrams_pass_both_ways_and_all_are_lost_at_full_loss() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen: SocketAddr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let proxies = Proxies::start(&[(listen, target.local_addr().unwrap())]).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        target
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.send_to(b"ping", listen).unwrap();
        let mut buf = [0u8; 16];
        let (n, session) = target.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        target.send_to(b"pong", session).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], listen));

        proxies.faults.set(1.0, Duration::ZERO, Duration::ZERO);
        client.send_to(b"lost", listen).unwrap();
        crate_wait(|| proxies.counters.dropped.load(Ordering::SeqCst) == 1);
        target
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            target.recv_from(&mut buf).is_err(),
            "a datagram got through"
        );
    }

    fn crate_wait(mut f: impl FnMut() -> bool) {
        qetcd_tests::wait_until("the proxy to count", Duration::from_secs(10), || {
            f().then_some(())
        })
        .unwrap();
    }
}
