//! A load generator for any server speaking etcd's v3 API (qetcd or etcd itself).
//!
//! `etcd-load --endpoints http://127.0.0.1:2379 --op put --clients 64 --total 20000`
//! prints throughput and latency percentiles as one line of JSON, so scripts can put
//! qetcd's and etcd's figures side by side.
//!
//! Keys are random over `--key-space` distinct keys by default, as users' keys are
//! (Kubernetes updates existing keys all over its key space); `--keys sequential`
//! writes each key once, in order, which flatters any B-tree. `--preload` first writes
//! every key of the space (in transactions of 100 puts) so that puts are updates of
//! existing keys and reads find what they look for.

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
    keys: KeyOrder,
    preload: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyOrder {
    Random,
    Sequential,
}

fn usage() -> ! {
    eprintln!(
        "usage: etcd-load --endpoints URL[,URL..] [--op put|range|range-serializable|txn] \
         [--clients N] [--conns N] [--total N] [--key-size B] [--value-size B] [--key-space N] \
         [--keys random|sequential] [--preload]"
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
        key_size: 32,
        value_size: 256,
        key_space: 100_000,
        keys: KeyOrder::Random,
        preload: false,
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
            "--keys" => {
                a.keys = match value().as_str() {
                    "random" => KeyOrder::Random,
                    "sequential" => KeyOrder::Sequential,
                    other => bail!("unknown --keys {other}"),
                }
            }
            "--preload" => a.preload = true,
            "--help" | "-h" => usage(),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.clients == 0 || a.conns == 0 || a.total == 0 || a.key_space == 0 {
        bail!("--clients, --conns, --total and --key-space must be positive");
    }
    Ok(a)
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0width$}", width = size).into_bytes();
    k.truncate(size.max(1));
    k
}

/// A fast, seedable generator: the same key sequence in every run and implementation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Writes every key of the space once, 100 puts per transaction, over all connections.
async fn preload(args: &Arc<Args>, conns: &[Client], value: &Arc<Vec<u8>>) -> Result<()> {
    const PER_TXN: u64 = 100;
    let batches = args.key_space.div_ceil(PER_TXN);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut client = conns[c % conns.len()].clone();
        let (args, next, value) = (args.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let ops = (b * PER_TXN..((b + 1) * PER_TXN).min(args.key_space))
                    .map(|i| TxnOp::put(key(i, args.key_size), value.as_slice(), None));
                client
                    .txn(Txn::new().and_then(ops.collect::<Vec<_>>()))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
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
    if args.preload {
        preload(&args, &conns, &value).await?;
        return Ok(());
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = conns[c % conns.len()].clone();
        let (args, next, value) = (args.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rng = SplitMix64(0x9e37_79b9_7f4a_7c15 ^ (c as u64) << 32);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.total {
                    break;
                }
                let i = match args.keys {
                    KeyOrder::Random => rng.next() % args.key_space,
                    KeyOrder::Sequential => n % args.key_space,
                };
                let k = key(i, args.key_size);
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
