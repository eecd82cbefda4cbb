//! Watch figures for any server speaking etcd's v3 API (qetcd or etcd itself).
//!
//! `watch-bench --endpoint URL latency [--watchers 100] [--puts 1000]`: that many
//! watchers (one stream each) on one prefix, one writer putting keys under it; prints
//! p50/p99/max of the time from a put's response to each watcher's event, as JSON.
//!
//! `watch-bench --endpoint URL idle --pid PID [--watches 10000]`: opens that many idle
//! watches (100 per stream) and prints the server's resident memory before and after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qetcd_tests::bench::{flag_value, percentile_ms};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, WatchOptions};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn latency(endpoint: &str, watchers: usize, puts: usize) -> Result<()> {
    let received: Arc<Mutex<HashMap<i64, Vec<Instant>>>> = Arc::default();
    let mut ready = Vec::new();
    for _ in 0..watchers {
        let mut client = Client::connect([endpoint], None).await?;
        let mut stream = client
            .watch("wl/", Some(WatchOptions::new().with_prefix()))
            .await?;
        let first = stream.message().await?.context("watch stream ended")?;
        if !first.created() {
            bail!("first watch response was not 'created'");
        }
        let received = received.clone();
        ready.push(tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                let mut r = received.lock().unwrap();
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        r.entry(kv.mod_revision()).or_default().push(now);
                    }
                }
            }
        }));
    }
    let mut writer = Client::connect([endpoint], None).await?;
    let mut acked = HashMap::new();
    for i in 0..puts {
        let sent = Instant::now();
        let resp = writer.put(format!("wl/{i}"), vec![b'x'; 256], None).await?;
        let rev = resp.header().context("header")?.revision();
        acked.insert(rev, (sent, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let r = received.lock().unwrap();
            acked
                .keys()
                .all(|rev| r.get(rev).is_some_and(|v| v.len() >= watchers))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = received.lock().unwrap();
    // From the put's response (an event may come first: 0), and from its request.
    let (mut lat, mut from_request) = (Vec::new(), Vec::new());
    let mut missing = 0;
    for (rev, (sent, acked_at)) in &acked {
        let got = r.get(rev).map_or(&[][..], |v| v.as_slice());
        missing += watchers.saturating_sub(got.len());
        lat.extend(got.iter().map(|t| t.saturating_duration_since(*acked_at)));
        from_request.extend(got.iter().map(|t| t.saturating_duration_since(*sent)));
    }
    lat.sort();
    from_request.sort();
    println!(
        "{{\"watchers\":{watchers},\"puts\":{puts},\"events\":{},\"missing\":{missing},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"from_request_p50_ms\":{:.3},\"from_request_p99_ms\":{:.3}}}",
        lat.len(),
        percentile_ms(&lat, 0.50),
        percentile_ms(&lat, 0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        percentile_ms(&from_request, 0.50),
        percentile_ms(&from_request, 0.99),
    );
    Ok(())
}

async fn idle(endpoint: &str, pid: u32, watches: usize) -> Result<()> {
    let before = rss_kib(pid)?;
    let mut keep = Vec::new();
    let per_stream = 100;
    let mut client = Client::connect([endpoint], None).await?;
    for s in 0..watches.div_ceil(per_stream) {
        let mut stream = client.watch(format!("idle/{s}/0"), None).await?;
        for w in 1..per_stream.min(watches - s * per_stream) {
            stream.watch(format!("idle/{s}/{w}"), None).await?;
        }
        let mut created = 0;
        while created < per_stream.min(watches - s * per_stream) {
            let resp = stream.message().await?.context("watch stream ended")?;
            if resp.created() {
                created += 1;
            }
        }
        keep.push(stream);
    }
    // Let the server settle before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    println!(
        "{{\"watches\":{watches},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"per_watch_bytes\":{:.0}}}",
        (after.saturating_sub(before) as f64 * 1024.0) / watches as f64
    );
    drop(keep);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| flag_value(&args, name);
    let endpoint = flag("--endpoint").unwrap_or_else(|| "http://127.0.0.1:2379".into());
    match args
        .iter()
        .find(|a| *a == "latency" || *a == "idle")
        .map(String::as_str)
    {
        Some("latency") => {
            let watchers = flag("--watchers").map_or(Ok(100), |v| v.parse())?;
            let puts = flag("--puts").map_or(Ok(1000), |v| v.parse())?;
            latency(&endpoint, watchers, puts).await
        }
        Some("idle") => {
            let pid = flag("--pid")
                .context("--pid of the server is required")?
                .parse()?;
            let watches = flag("--watches").map_or(Ok(10_000), |v| v.parse())?;
            idle(&endpoint, pid, watches).await
        }
        _ => bail!(
            "usage: watch-bench --endpoint URL (latency [--watchers N] [--puts N] | idle --pid PID [--watches N])"
        ),
    }
}
