//! `cellkeep-bench`: the load generator behind `scripts/bench.sh`, for the figures a process-level
//! timer (hyperfine) cannot see: latencies of requests through the daemon's socket, concurrent
//! throughput, streaming rate, and the daemon's footprint. Every mode prints one JSON object on
//! stdout; `bench.sh` turns them into the table. Not a test: nothing here asserts a timing.
#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use cellkeep::api::wire::OutputLine;
use cellkeep::api::wire::{OneshotRequest, SendRequest, SpawnRequest};
use cellkeep::client::Client;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    /// Working directory sent with every request.
    #[arg(long)]
    cwd: PathBuf,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Latency of one-shot commands through the socket (a fresh cell each), one at a time.
    Oneshot {
        provider: String,
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Pause between commands, outside the timing (lets a provider's pre-built cells refill).
        #[arg(long, default_value_t = 0)]
        gap_ms: u64,
    },
    /// Latency of spawning a session cell (then force-killed, outside the timing).
    Spawn {
        provider: String,
        #[arg(long, default_value_t = 200)]
        n: usize,
    },
    /// Round trips of one short line to a session.
    Rtt {
        provider: String,
        #[arg(long, default_value_t = 10_000)]
        n: usize,
    },
    /// One-shot commands from `clients` concurrent clients for `seconds`.
    Throughput {
        provider: String,
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Read a cell's whole output through the socket (follow) and report the rate.
    Stream { provider: String },
    /// Follow a cell's whole output as raw bytes (`format=raw`) and report the rate and the
    /// bytes lost against `expect` (a gap ends the raw stream with an error: counted as lost).
    Follow {
        provider: String,
        #[arg(long)]
        expect: u64,
    },
    /// The same bytes through a plain pipe: run `sh -c SCRIPT` and read its stdout.
    Pipe { script: String },
    /// Start `count` idle session cells and leave them running (for footprint and scaling).
    Fill {
        provider: String,
        #[arg(long)]
        count: usize,
    },
}

fn stats(name: &str, mut us: Vec<f64>) -> serde_json::Value {
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| us.get(((us.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    json!({"name": name, "n": us.len(), "median_us": pick(0.5), "p99_us": pick(0.99), "min_us": pick(0.0)})
}

fn spawn_req(provider: &str, cwd: &Path) -> SpawnRequest {
    SpawnRequest {
        provider: provider.to_owned(),
        cwd: cwd.to_string_lossy().into_owned(),
        session: None,
        env: BTreeMap::new(),
        args: Vec::new(),
        wait_for_slot_ms: None,
    }
}

fn oneshot_req(cwd: &Path, command: &str) -> OneshotRequest {
    OneshotRequest {
        command: command.to_owned(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: BTreeMap::new(),
        timeout_ms: None,
        wait_for_slot_ms: Some(60_000),
        stream: false,
        stdin: false,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let c = Client::new(&args.socket);
    let out = match args.mode {
        Mode::Oneshot { provider, n, gap_ms } => {
            let mut us = Vec::with_capacity(n);
            let served_before = c.health().await?.warm_served;
            for i in 0..n {
                tokio::time::sleep(std::time::Duration::from_millis(gap_ms)).await;
                let t = Instant::now();
                let r = c.exec(&provider, &oneshot_req(&args.cwd, &format!("x{i}"))).await?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
                if r.exit.as_ref().map(|e| e.exit_code()) != Some(0) {
                    bail!("one-shot {provider} failed: {r:?}");
                }
            }
            let mut out = stats("oneshot", us);
            out["served_warm"] = json!(c.health().await?.warm_served - served_before);
            out
        }
        Mode::Spawn { provider, n } => {
            let mut us = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let info = c.spawn(&spawn_req(&provider, &args.cwd)).await?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
                c.terminate(&info.id, true).await?;
            }
            stats("spawn", us)
        }
        Mode::Rtt { provider, n } => {
            let info = c.spawn(&spawn_req(&provider, &args.cwd)).await?;
            let mut us = Vec::with_capacity(n);
            for i in 0..n {
                let line = format!("ping {i}");
                let t = Instant::now();
                let r = c.send_command(&info.id, &SendRequest { command: line.clone(), timeout_ms: None }).await?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
                if r.stdout != line {
                    bail!("reply {:?} to {line:?}", r.stdout);
                }
            }
            c.terminate(&info.id, true).await?;
            stats("rtt", us)
        }
        Mode::Throughput { provider, clients, seconds } => {
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            let started = Instant::now();
            let socket = Arc::new(args.socket.clone());
            let cwd = Arc::new(args.cwd.clone());
            let mut tasks = Vec::new();
            for k in 0..clients {
                let (socket, cwd, provider) = (socket.clone(), cwd.clone(), provider.clone());
                tasks.push(tokio::spawn(async move {
                    let c = Client::new(socket.as_path());
                    let (mut done, mut us) = (0usize, Vec::new());
                    while Instant::now() < until {
                        let cmd = format!("c{k}-{done}");
                        let t = Instant::now();
                        let r = c.exec(&provider, &oneshot_req(&cwd, &cmd)).await?;
                        us.push(t.elapsed().as_secs_f64() * 1e6);
                        if r.stdout.trim_end() != cmd {
                            bail!("crossed reply: {:?} for {cmd:?}", r.stdout);
                        }
                        done += 1;
                    }
                    Ok::<_, anyhow::Error>(us)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.context("client task")??);
            }
            let secs = started.elapsed().as_secs_f64();
            let mut v = stats("throughput", all);
            v["per_sec"] = json!(v["n"].as_f64().unwrap_or(0.0) / secs);
            v
        }
        Mode::Stream { provider } => {
            let info = c.spawn(&spawn_req(&provider, &args.cwd)).await?;
            let t = Instant::now();
            let mut s = c.output(&info.id, Some(0), true).await?;
            let (mut bytes, mut dropped) = (0u64, 0u64);
            while let Some(line) = s.next().await? {
                match line {
                    // Count without decoding: the length of `data`, or of what `data_b64` decodes to.
                    OutputLine::Data { data: Some(d), .. } => bytes += d.len() as u64,
                    OutputLine::Data { data_b64: Some(b), .. } => {
                        bytes += (b.len() / 4 * 3 - b.bytes().rev().take_while(|&c| c == b'=').count()) as u64
                    }
                    OutputLine::Data { .. } => {}
                    OutputLine::Lagged { dropped: d } => dropped += d,
                    OutputLine::End => break,
                    OutputLine::Started { .. } | OutputLine::Exit { .. } => {}
                }
            }
            let secs = t.elapsed().as_secs_f64();
            json!({"name": "stream", "bytes": bytes, "dropped": dropped, "secs": secs, "mib_per_sec": bytes as f64 / secs / 1048576.0})
        }
        Mode::Follow { provider, expect } => {
            let info = c.spawn(&spawn_req(&provider, &args.cwd)).await?;
            let t = Instant::now();
            // Stdout only: what the pipe baseline reads (a killed `yes` says so on stderr).
            let mut s = c.output_raw(&info.id, Some(0), true, Some(cellkeep::api::wire::Stream::Stdout)).await?;
            let mut bytes = 0u64;
            let mut lagged = false;
            loop {
                match s.next().await {
                    Ok(Some(b)) => bytes += b.len() as u64,
                    Ok(None) => break,
                    Err(_) => {
                        lagged = true;
                        break;
                    }
                }
            }
            let secs = t.elapsed().as_secs_f64();
            json!({"name": "follow", "bytes": bytes, "lost": expect.saturating_sub(bytes), "lagged": lagged,
                   "secs": secs, "mib_per_sec": bytes as f64 / secs / 1048576.0})
        }
        Mode::Pipe { script } => {
            use tokio::io::AsyncReadExt;
            let t = Instant::now();
            let mut child = tokio::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut out = child.stdout.take().context("stdout")?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut bytes = 0u64;
            loop {
                let n = out.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
            child.wait().await?;
            let secs = t.elapsed().as_secs_f64();
            json!({"name": "pipe", "bytes": bytes, "secs": secs, "mib_per_sec": bytes as f64 / secs / 1048576.0})
        }
        Mode::Fill { provider, count } => {
            let t = Instant::now();
            for i in 0..count {
                c.spawn(&spawn_req(&provider, &args.cwd)).await.with_context(|| format!("cell {i} of {count}"))?;
            }
            json!({"name": "fill", "count": count, "secs": t.elapsed().as_secs_f64()})
        }
    };
    println!("{out}");
    Ok(())
}
