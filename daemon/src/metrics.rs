//! The member's Prometheus metrics, under etcd's names, label names and histogram
//! buckets, so that etcd's Grafana dashboards and alerting rules work on qetcd as they
//! are.
//!
//! One [`Metrics`] per member owns the registry and every metric handle. The member
//! creates it and hands it to the parts that count (Raft node, peer transport, gRPC
//! layer, `/metrics`); there is no process-wide registry, so two members in one process
//! (tests) do not mix their figures. Handles are atomics: the Raft thread sets gauges and
//! observes histograms without locks, once per `Ready` or per leader change, never per
//! request. What is cheaper to read when scraped than to keep up to date (database size
//! in use, key count, `/proc` figures) is read by [`Metrics::render`]'s caller and
//! by [`ProcessCollector`] at scrape time.
//!
//! Meanings where qetcd's storage differs from etcd's:
//! - `etcd_disk_wal_fsync_duration_seconds`: the commit, with fsync, of the SQLite
//!   transaction that makes a `Ready`'s entries and hard state durable (etcd's WAL
//!   fsync; qetcd has one per `Ready`).
//! - `etcd_disk_backend_commit_duration_seconds`: the commit of a transaction that only
//!   applies committed entries to the key space (etcd's bbolt commit).
//! - `etcd_network_peer_*`: QUIC's view of the connection to the peer: the RTT estimate
//!   and the UDP bytes sent and received, all traffic included.
//! - `etcd_server_proposals_committed_total` / `_applied_total` are gauges holding the
//!   Raft commit and applied indexes, as in etcd (despite the `_total`).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// `--metrics`: how much is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsLevel {
    #[default]
    Basic,
    /// Adds the server-side gRPC handling-time histograms.
    Extensive,
}

/// The Content-Type of Prometheus's text format, as Go's client sends it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` reports, and the handles to keep it current.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub db_total_size: IntGauge,
    pub db_total_size_in_use: IntGauge,
    pub keys_total: IntGauge,
    pub peer_round_trip: HistogramVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    /// Only with `--metrics extensive`.
    pub grpc_handling_seconds: Option<HistogramVec>,
    server_id: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(MetricsLevel::Basic)
    }
}

/// etcd's buckets for disk latencies: 1 ms to about 8 s.
fn disk_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
}

impl Metrics {
    pub fn new(level: MetricsLevel) -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };

        let version = gauge_vec(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &["server_version"],
        );
        version
            .with_label_values(&[crate::api::ETCD_VERSION])
            .set(1);
        let server_id = gauge_vec(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &["server_id"],
        );
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_handling_seconds = (level == MetricsLevel::Extensive).then(|| {
            histogram_vec(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                &grpc_labels,
                prometheus::DEFAULT_BUCKETS.to_vec(),
            )
        });
        registry
            .register(Box::new(ProcessCollector::new()))
            .expect("unique names");
        Metrics {
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            wal_fsync: histogram(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            ),
            backend_commit: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk_buckets(),
            ),
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys_total: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            peer_round_trip: histogram_vec(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                &["To"],
                exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            peer_sent_bytes: counter_vec(
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            grpc_started: counter_vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &grpc_labels,
            ),
            grpc_handled: counter_vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            grpc_handling_seconds,
            server_id,
            registry,
        }
    }

    /// Shares a new set of metrics for one member.
    pub fn shared(level: MetricsLevel) -> Arc<Self> {
        Arc::new(Metrics::new(level))
    }

    /// Labels the member's ID (`etcd_server_id`), once it is known.
    pub fn set_member_id(&self, id: u64) {
        self.server_id.reset();
        self.server_id
            .with_label_values(&[&format!("{id:x}")])
            .set(1);
    }

    /// Everything, in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only for metrics that break the format's rules,
        // which the fixed names above do not.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Go's process collector, read from `/proc/self` when scraped:
/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_start_time_seconds`. Figures that cannot be read are left out.
pub struct ProcessCollector {
    descs: Vec<Desc>,
}

/// Kernel clock ticks per second in `/proc/<pid>/stat` (USER_HZ): 100 on every Linux
/// architecture qetcd is built for.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

impl ProcessCollector {
    fn new() -> Self {
        let descs = PROCESS_METRICS
            .iter()
            .map(|(name, help, _)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
                .expect("valid desc")
            })
            .collect();
        ProcessCollector { descs }
    }
}

/// (name, help, is a counter).
const PROCESS_METRICS: &[(&str, &str, bool)] = &[
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        true,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        false,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        false,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        false,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        false,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        false,
    ),
];

/// The process figures, by the names of [`PROCESS_METRICS`].
fn read_process_figures() -> Vec<(&'static str, f64)> {
    let mut figures = Vec::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces;
    // `rest[0]` is field 3 (state).
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        figures.push((
            "process_cpu_seconds_total",
            (utime + stime) / CLOCK_TICKS_PER_SECOND,
        ));
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        figures.push(("process_open_fds", dir.count().saturating_sub(1) as f64));
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(soft) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
    {
        figures.push(("process_max_fds", soft));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    if let Some(rss) = kib("VmRSS:") {
        figures.push(("process_resident_memory_bytes", rss));
    }
    if let Some(vm) = kib("VmSize:") {
        figures.push(("process_virtual_memory_bytes", vm));
    }
    let boot_time = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
    if let (Some(btime), Some(start)) = (boot_time, field(22)) {
        figures.push((
            "process_start_time_seconds",
            btime + start / CLOCK_TICKS_PER_SECOND,
        ));
    }
    figures
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        for (name, value) in read_process_figures() {
            let Some((_, help, is_counter)) = PROCESS_METRICS.iter().find(|(n, ..)| *n == name)
            else {
                continue;
            };
            let opts = Opts::new(name, *help);
            if *is_counter {
                if let Ok(c) = prometheus::Counter::with_opts(opts) {
                    c.inc_by(value);
                    families.extend(c.collect());
                }
            } else if let Ok(g) = prometheus::Gauge::with_opts(opts) {
                g.set(value);
                families.extend(g.collect());
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_etcds_names_with_go_client_types() {
        let m = Metrics::new(MetricsLevel::Basic);
        m.set_member_id(0x8e9e05c52164694d);
        m.has_leader.set(1);
        m.leader_changes.inc();
        m.wal_fsync.observe(0.002);
        m.peer_sent_bytes.with_label_values(&["abc"]).inc_by(10);
        let text = m.render();
        for line in [
            "# TYPE etcd_server_has_leader gauge",
            "etcd_server_has_leader 1",
            "# TYPE etcd_server_leader_changes_seen_total counter",
            "etcd_server_leader_changes_seen_total 1",
            "# TYPE etcd_server_proposals_committed_total gauge",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_count 1",
            "etcd_network_peer_sent_bytes_total{To=\"abc\"} 10",
            "etcd_server_version{server_version=\"3.5.0\"} 1",
            "etcd_server_id{server_id=\"8e9e05c52164694d\"} 1",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("grpc_server_handling_seconds"));
        let extensive = Metrics::new(MetricsLevel::Extensive);
        extensive
            .grpc_handling_seconds
            .as_ref()
            .expect("extensive has handling histograms")
            .with_label_values(&["unary", "etcdserverpb.KV", "Range"])
            .observe(0.01);
        assert!(
            extensive
                .render()
                .contains("# TYPE grpc_server_handling_seconds histogram")
        );
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        let figures = read_process_figures();
        let get = |n: &str| figures.iter().find(|(name, _)| *name == n).map(|f| f.1);
        assert!(get("process_resident_memory_bytes").unwrap() > 0.0);
        assert!(get("process_open_fds").unwrap() >= 3.0);
        let start = get("process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86400.0 * 365.0,
            "{start}"
        );
    }
}
