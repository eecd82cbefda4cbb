//! A load generator for any server speaking etcd's v3 API (qetcd or etcd itself).
//!
//! `etcd-load --endpoints http://127.0.0.1:2379 --op put --clients 64 --total 20000`
//! prints throughput and latency percentiles as one line of JSON, so scripts can put
//! qetcd's and etcd's figures side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Put,
    RangeLinearizable,
    RangeSerializable,
    Txn,
}

struct Args {
    endpoints: Vec<String>,
    op: Op,
    clients: usize,
    conns: usize,
    total: u64,
    key_size: usize,
    value_size: usize,
    key_space: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: etcd-load --endpoints URL[,URL..] [--op put|range|range-serializable|txn] \
         [--clients N] [--conns N] [--total N] [--key-size B] [--value-size B] [--key-space N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        op: Op::Put,
        clients: 1,
        conns: 1,
        total: 10_000,
        key_size: 8,
        value_size: 256,
        key_space: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--endpoints" => a.endpoints = value().split(',').map(String::from).collect(),
            "--op" => {
                a.op = match value().as_str() {
                    "put" => Op::Put,
                    "range" => Op::RangeLinearizable,
                    "range-serializable" => Op::RangeSerializable,
                    "txn" => Op::Txn,
                    other => bail!("unknown --op {other}"),
                }
            }
            "--clients" => a.clients = value().parse()?,
            "--conns" => a.conns = value().parse()?,
            "--total" => a.total = value().parse()?,
            "--key-size" => a.key_size = value().parse()?,
            "--value-size" => a.value_size = value().parse()?,
            "--key-space" => a.key_space = value().parse()?,
            "--help" | "-h" => usage(),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.clients == 0 || a.conns == 0 || a.total == 0 {
        bail!("--clients, --conns and --total must be positive");
    }
    Ok(a)
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size.max(1));
    k
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(parse_args()?);
    let mut conns = Vec::new();
    for _ in 0..args.conns {
        conns.push(
            Client::connect(&args.endpoints, None)
                .await
                .context("connecting to the endpoints")?,
        );
    }
    let value = Arc::new(vec![b'v'; args.value_size]);
    if matches!(
        args.op,
        Op::RangeLinearizable | Op::RangeSerializable | Op::Txn
    ) {
        let mut c = conns[0].clone();
        for i in 0..args.key_space.min(1000) {
            c.put(key(i, args.key_size), value.as_slice(), None).await?;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = conns[c % conns.len()].clone();
        let (args, next, value) = (args.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.total {
                    break;
                }
                let k = key(
                    n % args
                        .key_space
                        .min(if args.op == Op::Put { u64::MAX } else { 1000 }),
                    args.key_size,
                );
                let t = Instant::now();
                match args.op {
                    Op::Put => {
                        client.put(k, value.as_slice(), None).await?;
                    }
                    Op::RangeLinearizable => {
                        client.get(k, None).await?;
                    }
                    Op::RangeSerializable => {
                        client
                            .get(k, Some(GetOptions::new().with_serializable()))
                            .await?;
                    }
                    Op::Txn => {
                        let txn = Txn::new()
                            .when([Compare::version(k.clone(), CompareOp::Greater, 0)])
                            .and_then([TxnOp::put(k.clone(), value.as_slice(), None)])
                            .or_else([TxnOp::get(k, None)]);
                        client.txn(txn).await?;
                    }
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(args.total as usize);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i].as_secs_f64() * 1000.0
    };
    println!(
        "{{\"op\":\"{:?}\",\"clients\":{},\"conns\":{},\"requests\":{},\"seconds\":{:.3},\"throughput\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        args.op,
        args.clients,
        args.conns,
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
