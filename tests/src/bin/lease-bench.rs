//! Keep-alive figures for any server speaking etcd's v3 API (qetcd or etcd itself).
//!
//! `lease-bench --endpoint URL [--leases 100] [--seconds 5]`: grants that many leases,
//! then keeps every one alive as fast as the server answers (one keep-alive stream per
//! lease, one keep-alive in flight on each) for that long; prints the keep-alives
//! answered per second and p50/p99/max of their round trips, as JSON, then revokes the
//! leases. Real clients send one keep-alive per lease every TTL/3, so the rate is the
//! number of leases a server can keep alive at a given TTL: about rate × TTL / 3.

use std::time::{Duration, Instant};

use qetcd_tests::bench::{flag_value, percentile_ms};

use anyhow::{Context, Result, bail};
use etcd_client::Client;

async fn keep_alive_rate(endpoint: &str, leases: usize, seconds: u64) -> Result<()> {
    let mut client = Client::connect([endpoint], None).await?;
    let mut ids = Vec::with_capacity(leases);
    for _ in 0..leases {
        ids.push(client.lease_grant(60, None).await?.id());
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for &id in &ids {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
            let mut rtts = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                keeper.keep_alive().await?;
                let resp = stream.message().await?.context("keep-alive stream ended")?;
                if resp.ttl() <= 0 {
                    bail!("lease {id:x} lost");
                }
                rtts.push(sent.elapsed());
            }
            anyhow::Ok(rtts)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    for id in ids {
        client.lease_revoke(id).await?;
    }
    println!(
        "{{\"leases\":{leases},\"keepalives\":{},\"per_second\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile_ms(&all, 0.5),
        percentile_ms(&all, 0.99),
        percentile_ms(&all, 1.0),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| flag_value(&args, name);
    let endpoint = flag("--endpoint").unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let leases = flag("--leases").map_or(Ok(100), |v| v.parse())?;
    let seconds = flag("--seconds").map_or(Ok(5), |v| v.parse())?;
    keep_alive_rate(&endpoint, leases, seconds).await
}
