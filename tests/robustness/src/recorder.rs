//! The recorder: concurrent etcd clients and watchers against a running cluster, each
//! call written down with its call time, return time and answer, in the types of
//! [`crate::history`].
//!
//! - Every client has one request in flight at a time and talks to one member (it moves
//!   to the next member after a failure, so a dead member does not pile up failed
//!   writes). A request that errs or outlives [`Load::op_timeout`] is recorded as
//!   failed: a failed write is indeterminate to the checkers.
//! - Values are unique (`c<client>-<seq>`), so a value read names the write that made it.
//! - Watchers watch the key prefix from revision 1 with `prev_kv`; when a stream breaks,
//!   and now and then on purpose, they open a new one from the revision after the last
//!   event they saw.
//! - [`Recording::finish`] stops the clients, makes one last write, waits (with a
//!   deadline) until every watcher has seen it, and returns the history with that
//!   write's revision as the final revision.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::task::JoinHandle;

use crate::history::{
    History, Kv, Operation, Outcome, Request, Response, WatchEvent, WatchResponse, WatchStream,
};

/// The prefix every key of a run lives under (what the watchers watch).
pub const PREFIX: &str = "k/";

/// The shape of the traffic.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent clients, each with one request in flight.
    pub clients: usize,
    /// Keys `k/0..` they share.
    pub keys: usize,
    /// Watchers of the whole prefix.
    pub watchers: usize,
    /// How long a request may take before it is given up on (and recorded as failed).
    pub op_timeout: Duration,
    /// How often a watcher re-opens its watch on purpose, to exercise resumption.
    pub watch_reopen: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            clients: 6,
            keys: 5,
            watchers: 2,
            op_timeout: Duration::from_secs(2),
            watch_reopen: Duration::from_secs(5),
        }
    }
}

/// A recording in progress.
pub struct Recording {
    clock: Clock,
    endpoints: Vec<String>,
    load: Load,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Operation>>>,
    watchers: Vec<JoinHandle<WatcherLog>>,
    /// Each watcher's latest revision seen.
    watched: Vec<Arc<AtomicI64>>,
    /// The revision at which watchers stop (0: not yet known).
    watch_until: Arc<AtomicI64>,
    /// Operations completed so far, by all clients (for progress checks).
    done: Arc<AtomicI64>,
    /// Operations that succeeded so far.
    succeeded: Arc<AtomicI64>,
}

/// Nanoseconds on one monotonic clock shared by all clients and watchers of a run.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
struct WatcherLog {
    streams: Vec<WatchStream>,
    responses: Vec<WatchResponse>,
}

impl Recording {
    /// Starts clients and watchers on the current tokio runtime. `endpoints[i]` is
    /// member `i`'s client URL.
    pub fn start(endpoints: Vec<String>, load: Load) -> Recording {
        let clock = Clock(Instant::now());
        let stop = Arc::new(AtomicBool::new(false));
        let watch_until = Arc::new(AtomicI64::new(0));
        let done = Arc::new(AtomicI64::new(0));
        let succeeded = Arc::new(AtomicI64::new(0));
        let clients = (0..load.clients)
            .map(|c| {
                let worker = Worker {
                    client: c,
                    clock,
                    endpoints: endpoints.clone(),
                    load: load.clone(),
                    stop: stop.clone(),
                    done: done.clone(),
                    succeeded: succeeded.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        let watched: Vec<Arc<AtomicI64>> = (0..load.watchers)
            .map(|_| Arc::new(AtomicI64::new(1)))
            .collect();
        let watchers = (0..load.watchers)
            .map(|w| {
                let watcher = Watcher {
                    watcher: w,
                    clock,
                    endpoints: endpoints.clone(),
                    reopen: load.watch_reopen,
                    seen: watched[w].clone(),
                    until: watch_until.clone(),
                };
                tokio::spawn(watcher.run())
            })
            .collect();
        Recording {
            clock,
            endpoints,
            load,
            stop,
            clients,
            watchers,
            watched,
            watch_until,
            done,
            succeeded,
        }
    }

    /// A handle to the count of operations that succeeded so far.
    pub fn succeeded(&self) -> Arc<AtomicI64> {
        self.succeeded.clone()
    }

    /// A handle to the count of operations completed so far (succeeded or failed).
    pub fn done(&self) -> Arc<AtomicI64> {
        self.done.clone()
    }

    /// Stops the clients, makes the final write, waits until every watcher saw it (at
    /// most `watch_deadline`), and returns the history. Errors when the final write
    /// cannot be made or a watcher never catches up: no history to check then.
    pub async fn finish(self, watch_deadline: Duration) -> anyhow::Result<History> {
        self.stop.store(true, Ordering::SeqCst);
        let mut operations = Vec::new();
        for c in self.clients {
            operations.extend(c.await?);
        }

        // The final write, by a client of its own, asked again until it is acknowledged
        // (every attempt is recorded).
        let final_client = self.load.clients;
        let deadline = Instant::now() + watch_deadline;
        let mut final_revision = None;
        let mut attempt = 0;
        while final_revision.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the final write was not acknowledged within {watch_deadline:?}"
            );
            let member = attempt % self.endpoints.len();
            attempt += 1;
            let request = Request::Put {
                key: format!("{PREFIX}0"),
                value: format!("final-{attempt}"),
                prev_kv: false,
            };
            let call = self.clock.now();
            let outcome = match connect(&self.endpoints[member], self.load.op_timeout).await {
                Ok(mut client) => execute(&mut client, &request, self.load.op_timeout).await,
                Err(e) => Outcome::Failed(e),
            };
            if let Outcome::Ok(r) = &outcome {
                final_revision = Some(r.header());
            }
            operations.push(Operation {
                id: 0,
                client: final_client,
                member,
                call,
                ret: self.clock.now(),
                request,
                outcome,
            });
            if final_revision.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let final_revision = final_revision.expect("set above");
        self.watch_until.store(final_revision, Ordering::SeqCst);

        let mut history = History {
            final_revision,
            ..History::default()
        };
        let caught_up = tokio::time::timeout(deadline - Instant::now(), async {
            for w in self.watchers {
                let log = w.await?;
                history.watch_streams.extend(log.streams);
                history.watch_responses.extend(log.responses);
            }
            anyhow::Ok(())
        })
        .await;
        match caught_up {
            Ok(r) => r?,
            Err(_) => {
                let seen: Vec<i64> = self
                    .watched
                    .iter()
                    .map(|s| s.load(Ordering::SeqCst))
                    .collect();
                anyhow::bail!(
                    "watchers did not reach the final revision {final_revision} within \
                     {watch_deadline:?}: they saw up to {seen:?}"
                );
            }
        }

        operations.sort_by_key(|o| (o.call, o.client));
        for (i, op) in operations.iter_mut().enumerate() {
            op.id = i;
        }
        history.operations = operations;
        Ok(history)
    }
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    match tokio::time::timeout(timeout, Client::connect([endpoint], Some(options))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// One client's loop.
struct Worker {
    client: usize,
    clock: Clock,
    endpoints: Vec<String>,
    load: Load,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
    succeeded: Arc<AtomicI64>,
}

impl Worker {
    async fn run(self) -> Vec<Operation> {
        let mut ops = Vec::new();
        let mut rng = Rng::new(self.client as u64 + 1);
        let mut member = self.client % self.endpoints.len();
        let mut client: Option<Client> = None;
        let mut seq = 0u64;
        // The latest mod revision this client saw for each key (0: absent), the
        // compare-and-swaps' guess.
        let mut known = vec![0i64; self.load.keys];
        while !self.stop.load(Ordering::SeqCst) {
            let k = rng.below(self.load.keys as u64) as usize;
            let key = format!("{PREFIX}{k}");
            seq += 1;
            let value = format!("c{}-{seq}", self.client);
            let request = match rng.below(100) {
                0..30 => Request::Get { key },
                30..55 => Request::Put {
                    key,
                    value,
                    prev_kv: rng.below(2) == 0,
                },
                55..70 => Request::Delete { key },
                _ => Request::Cas {
                    key,
                    expected: known[k],
                    value,
                },
            };
            let used = member;
            let call = self.clock.now();
            let outcome = match &mut client {
                Some(c) => execute(c, &request, self.load.op_timeout).await,
                None => match connect(&self.endpoints[member], self.load.op_timeout).await {
                    Ok(c) => execute(client.insert(c), &request, self.load.op_timeout).await,
                    Err(e) => Outcome::Failed(e),
                },
            };
            let ret = self.clock.now();
            self.done.fetch_add(1, Ordering::Relaxed);
            match &outcome {
                Outcome::Ok(r) => {
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                    if let Some(rev) = revealed_mod_revision(r) {
                        known[k] = rev;
                    }
                }
                Outcome::Failed(_) => {
                    // Start afresh on the next member, after a pause (pacing, not
                    // synchronisation).
                    client = None;
                    member = (member + 1) % self.endpoints.len();
                }
            }
            let failed = matches!(outcome, Outcome::Failed(_));
            ops.push(Operation {
                id: 0,
                client: self.client,
                member: used,
                call,
                ret,
                request,
                outcome,
            });
            if failed {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ops
    }
}

/// The key's mod revision as this response shows it (0: absent), if it shows it.
fn revealed_mod_revision(r: &Response) -> Option<i64> {
    match r {
        Response::Get { kv, .. } => Some(kv.as_ref().map_or(0, |kv| kv.mod_revision)),
        Response::Put { header, .. } => Some(*header),
        Response::Delete { .. } => Some(0),
        Response::Cas {
            header,
            succeeded: true,
            ..
        } => Some(*header),
        Response::Cas { kv, .. } => Some(kv.as_ref().map_or(0, |kv| kv.mod_revision)),
    }
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Result<i64, String> {
    h.map(|h| h.revision())
        .ok_or_else(|| "response without a header".to_string())
}

/// Sends one request and waits at most `timeout` for its answer.
async fn execute(client: &mut Client, request: &Request, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, send(client, request)).await {
        Ok(Ok(r)) => Outcome::Ok(r),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(format!("timed out after {timeout:?}")),
    }
}

async fn send(client: &mut Client, request: &Request) -> Result<Response, String> {
    let err = |e: etcd_client::Error| e.to_string();
    match request {
        Request::Get { key } => {
            let r = client.get(key.as_str(), None).await.map_err(err)?;
            Ok(Response::Get {
                header: header_revision(r.header())?,
                kv: r.kvs().first().map(kv),
            })
        }
        Request::Put {
            key,
            value,
            prev_kv,
        } => {
            let options = prev_kv.then(|| PutOptions::new().with_prev_key());
            let r = client
                .put(key.as_str(), value.as_str(), options)
                .await
                .map_err(err)?;
            Ok(Response::Put {
                header: header_revision(r.header())?,
                prev: r.prev_key().map(kv),
            })
        }
        Request::Delete { key } => {
            let r = client
                .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
                .await
                .map_err(err)?;
            Ok(Response::Delete {
                header: header_revision(r.header())?,
                deleted: r.deleted(),
                prev: r.prev_kvs().first().map(kv),
            })
        }
        Request::Cas {
            key,
            expected,
            value,
        } => {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expected,
                )])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None::<GetOptions>)]);
            let r = client.txn(txn).await.map_err(err)?;
            let kv = if r.succeeded() {
                None
            } else {
                r.op_responses().iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => g.kvs().first().map(kv),
                    _ => None,
                })
            };
            Ok(Response::Cas {
                header: header_revision(r.header())?,
                succeeded: r.succeeded(),
                kv,
            })
        }
    }
}

/// One watcher's loop.
struct Watcher {
    watcher: usize,
    clock: Clock,
    endpoints: Vec<String>,
    reopen: Duration,
    seen: Arc<AtomicI64>,
    until: Arc<AtomicI64>,
}

impl Watcher {
    fn done(&self, last: i64) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until > 0 && last >= until
    }

    async fn run(self) -> WatcherLog {
        let log = Arc::new(Mutex::new(WatcherLog::default()));
        let mut member = self.watcher % self.endpoints.len();
        let mut last = 1i64;
        let mut stream = 0usize;
        while !self.done(last) {
            let ended = self.stream(&log, stream, member, &mut last).await;
            let failed = ended.is_some();
            if let Some(s) = log
                .lock()
                .expect("watch log")
                .streams
                .iter_mut()
                .find(|s| s.stream == stream)
            {
                s.ended = ended;
            }
            stream += 1;
            if failed {
                member = (member + 1) % self.endpoints.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        std::mem::take(&mut *log.lock().expect("watch log"))
    }

    /// One stream, from `last + 1`, until it fails (`Some(reason)`), its time to be
    /// re-opened comes (`None`), or the watcher is done (`None`).
    async fn stream(
        &self,
        log: &Mutex<WatcherLog>,
        stream: usize,
        member: usize,
        last: &mut i64,
    ) -> Option<String> {
        let start = *last + 1;
        let timeout = Duration::from_secs(2);
        log.lock().expect("watch log").streams.push(WatchStream {
            watcher: self.watcher,
            stream,
            member,
            start_revision: start,
            ended: Some("never opened".into()),
        });
        let mut client = match connect(&self.endpoints[member], timeout).await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start);
        let opened = tokio::time::timeout(timeout, client.watch(PREFIX, Some(options))).await;
        let mut responses = match opened {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Some(format!("watch: {e}")),
            Err(_) => return Some("watch: timed out opening".into()),
        };
        let opened_at = Instant::now();
        loop {
            if self.done(*last) || opened_at.elapsed() >= self.reopen {
                return None;
            }
            let message =
                match tokio::time::timeout(Duration::from_millis(200), responses.message()).await {
                    Err(_) => continue,
                    Ok(Err(e)) => return Some(format!("watch stream: {e}")),
                    Ok(Ok(None)) => return Some("watch stream closed".into()),
                    Ok(Ok(Some(m))) => m,
                };
            let time = self.clock.now();
            if message.canceled() {
                // etcd (and qetcd) give no reason for a compaction: its revision says it.
                return Some(format!(
                    "watch canceled: {} (compact revision {})",
                    message.cancel_reason(),
                    message.compact_revision()
                ));
            }
            if message.events().is_empty() {
                continue;
            }
            let events: Vec<WatchEvent> = message
                .events()
                .iter()
                .filter_map(|e| {
                    Some(WatchEvent {
                        delete: e.event_type() == EventType::Delete,
                        kv: kv(e.kv()?),
                        prev: e.prev_kv().map(kv),
                    })
                })
                .collect();
            if let Some(max) = events.iter().map(|e| e.kv.mod_revision).max() {
                *last = (*last).max(max);
                self.seen.store(*last, Ordering::SeqCst);
            }
            log.lock()
                .expect("watch log")
                .responses
                .push(WatchResponse {
                    watcher: self.watcher,
                    stream,
                    time,
                    header: message.header().map_or(0, |h| h.revision()),
                    events,
                });
        }
    }
}

/// xorshift64: reproducible per client, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
