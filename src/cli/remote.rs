//! Client subcommands: each is one call (or one stream) through [`crate::client::Client`],
//! printed for people or, with `--json`, as the API's own JSON.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::api::wire::{
    CellHealth, CellInfo, CellState, CommandResult, DaemonHealth, ErrorCode, ExitReason, ListFilter,
};
use crate::api::wire::{OneshotRequest, OutputLine, SendRequest, SessionRequest, SpawnRequest, Stream};
use crate::client::{Client, ClientError};

use super::{Cmd, EnvArgs};

/// What a subcommand failed with: the daemon's answer, or a bad argument found locally.
enum Failure {
    Client(ClientError),
    Usage(String),
    /// A buffered result lost output past the policy's `output_bytes` (cell id).
    Truncated(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

type Outcome = Result<i32, Failure>;

pub(super) fn main(cmd: Cmd, socket: &Path, json: bool) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cellkeep: error: internal: starting the runtime: {e}");
            return 1;
        }
    };
    let client = Client::new(socket);
    match rt.block_on(dispatch(&client, cmd, json)) {
        Ok(code) => code,
        Err(f) => {
            let (code, message) = match f {
                Failure::Client(e) => (e.code().to_owned(), e.to_string()),
                Failure::Usage(m) => (ErrorCode::BadRequest.as_str().to_owned(), m),
                Failure::Truncated(cell) => (
                    "output_truncated".to_owned(),
                    format!("cell {cell}: output beyond the policy's output_bytes was cut; `cellkeep exec` without --json streams it whole"),
                ),
            };
            if json {
                // The daemon's error shape, with the client's own codes too (`unavailable`, ...).
                eprintln!("{}", serde_json::json!({ "code": code, "message": message }));
            } else {
                eprintln!("cellkeep: error: {code}: {message}");
            }
            1
        }
    }
}

async fn dispatch(c: &Client, cmd: Cmd, json: bool) -> Outcome {
    match cmd {
        Cmd::Spawn(a) => {
            let req = SpawnRequest {
                provider: a.provider,
                cwd: cwd(a.cwd)?,
                session: a.session.then_some(true),
                env: env(&a.env)?,
                args: a.args,
                wait_for_slot_ms: millis(a.wait)?,
            };
            print_cell_id(&c.spawn(&req).await?, json)
        }
        Cmd::Session(a) => {
            let req = SessionRequest { cwd: cwd(a.cwd)?, env: env(&a.env)?, wait_for_slot_ms: millis(a.wait)? };
            print_cell_id(&c.session(&a.provider, &req).await?, json)
        }
        Cmd::Send { id, command, timeout, .. } => {
            let r = c.send_command(&id, &SendRequest { command, timeout_ms: timeout_millis(timeout)? }).await?;
            print_result(&r, json)
        }
        Cmd::Exec { provider, command, cwd: dir, timeout, env: e, wait, interactive, no_stdin, .. } => {
            let req = OneshotRequest {
                command,
                cwd: cwd(dir)?,
                env: env(&e)?,
                timeout_ms: timeout_millis(timeout)?,
                wait_for_slot_ms: millis(wait)?,
                stream: false,
                stdin: false,
            };
            if !json {
                let stdin = !no_stdin && (interactive || !std::io::stdin().is_terminal());
                return Ok(super::exec::run(c, &provider, req, stdin).await?);
            }
            // --json: one buffered result (output up to the policy's output_bytes).
            match c.exec(&provider, &req).await {
                Ok(r) => print_result(&r, json),
                Err(ClientError::Api { result: Some(r), .. }) => print_result(&r, json),
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Ps { provider, all, .. } => {
            let cells = c.list(&ListFilter { provider, all }).await?;
            if json {
                return print_json(&cells);
            }
            println!("{:<32}  {:<12} {:<8} {:<7} {:>6} {:>8}  EXIT", "ID", "PROVIDER", "STATE", "MODE", "UID", "IDLE");
            for i in &cells {
                println!(
                    "{:<32}  {:<12} {:<8} {:<7} {:>6} {:>8}  {}",
                    i.id,
                    i.provider,
                    state(i.state),
                    if i.session { "session" } else { "oneshot" },
                    i.owner_uid,
                    secs(i.idle_ms),
                    i.exit.as_ref().map(ExitReason::to_string).unwrap_or_default()
                );
            }
            Ok(0)
        }
        Cmd::Get { id, .. } => {
            let i = c.get_cell(&id).await?;
            if json {
                return print_json(&i);
            }
            print_info(&i);
            Ok(0)
        }
        Cmd::Kill { id, force, .. } => {
            let i = c.terminate(&id, force).await?;
            if json {
                return print_json(&i);
            }
            let how = i.exit.as_ref().map(ExitReason::to_string).unwrap_or_else(|| "terminated".into());
            println!("{}: {how}", i.id);
            Ok(0)
        }
        Cmd::Health { id: Some(id), .. } => {
            let h = c.cell_health(&id).await?;
            if json {
                return print_json(&h);
            }
            print_cell_health(&h);
            Ok(0)
        }
        Cmd::Health { id: None, .. } => {
            let h = c.health().await?;
            if json {
                return print_json(&h);
            }
            print_daemon_health(&h);
            Ok(0)
        }
        Cmd::Logs { id, follow, from, raw: true, .. } => logs_raw(c, &id, follow, from).await,
        Cmd::Logs { id, follow, from, .. } => logs(c, &id, follow, from, json).await,
        Cmd::Cleanup { provider, .. } => {
            let n = c.cleanup(&provider).await?;
            if json {
                return print_json(&n);
            }
            println!("{} cell(s) of {provider} ended", n.count);
            Ok(0)
        }
        Cmd::Shutdown { timeout, .. } => {
            let n = c.shutdown(millis(timeout)?).await?;
            if json {
                return print_json(&n);
            }
            println!("daemon shutting down; {} cell(s) ended", n.count);
            Ok(0)
        }
        Cmd::Reload { .. } => {
            let r = c.reload().await?;
            if json {
                return print_json(&r);
            }
            println!("policies reloaded: {} providers ({})", r.providers.len(), r.providers.join(", "));
            for r in &r.left_out {
                let first = r.problems.first().map_or("", String::as_str);
                eprintln!("cellkeep: still left out, as before the reload: {} ({}): {first}", r.name, r.file);
            }
            for n in &r.notes {
                eprintln!("cellkeep: warning: {n}");
            }
            Ok(0)
        }
        Cmd::Run(_) | Cmd::Policy(_) | Cmd::Daemon(_) | Cmd::Doctor(_) => {
            Err(Failure::Usage("not a client command".into()))
        }
    }
}

/// The working directory sent to the daemon: absolute, as the caller sees it (the daemon
/// canonicalises it and checks it against the policy's roots). JSON carries text: a path that
/// is not UTF-8 is refused here.
fn cwd(dir: Option<PathBuf>) -> Result<String, Failure> {
    let here = std::env::current_dir().map_err(|e| Failure::Usage(format!("current directory: {e}")))?;
    let path = match dir {
        Some(d) if d.is_absolute() => d,
        Some(d) => here.join(d),
        None => here,
    };
    path.into_os_string()
        .into_string()
        .map_err(|p| Failure::Usage(format!("working directory {p:?} is not UTF-8; the API carries paths as text")))
}

fn env(a: &EnvArgs) -> Result<BTreeMap<String, String>, Failure> {
    let mut env: BTreeMap<String, String> = if a.clean_env { BTreeMap::new() } else { std::env::vars().collect() };
    for kv in &a.set {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Failure::Usage(format!("--env {kv:?}: expected NAME=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    Ok(env)
}

fn millis(secs: Option<f64>) -> Result<Option<u64>, Failure> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| Failure::Usage(format!("not a duration in seconds: {s}")))
    })
    .transpose()
}

/// A command's `--timeout`: as [`millis`], and at least a millisecond (the daemon refuses 0,
/// and would say so in its own unit).
fn timeout_millis(secs: Option<f64>) -> Result<Option<u64>, Failure> {
    match millis(secs)? {
        Some(0) => Err(Failure::Usage(format!(
            "--timeout {}: a command needs at least 0.001 seconds (leave it out for the policy's wall time or the default)",
            secs.unwrap_or_default()
        ))),
        ms => Ok(ms),
    }
}

fn print_json(v: &impl Serialize) -> Outcome {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure::Usage(format!("encoding JSON: {e}")))?;
    println!("{text}");
    Ok(0)
}

fn print_cell_id(i: &CellInfo, json: bool) -> Outcome {
    for d in &i.degraded {
        eprintln!("cellkeep: warning: {} degraded: {}", d.mechanism, d.detail);
    }
    if json {
        return print_json(i);
    }
    println!("{}", i.id);
    Ok(0)
}

/// A reply: stdout and stderr as the process wrote them (the exact bytes); the exit code of a
/// one-shot command. A result whose output was cut to the policy's `output_bytes` is not
/// passed off as complete: it exits non-zero (`output_truncated`).
fn print_result(r: &CommandResult, json: bool) -> Outcome {
    if json {
        print_json(r)?;
    } else {
        let stdout = r.stdout_bytes();
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&stdout);
        // A session reply is framed without its terminator: end the line for the terminal.
        if r.exit.is_none() && !stdout.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
        let _ = std::io::stderr().write_all(&r.stderr_bytes());
    }
    if r.truncated {
        return Err(Failure::Truncated(r.cell.clone()));
    }
    Ok(match &r.exit {
        None => 0,
        Some(reason) => {
            if !json && !matches!(reason, ExitReason::Exited { .. }) {
                eprintln!("cellkeep: {}: {reason}", r.cell);
            }
            reason.exit_code()
        }
    })
}

/// `logs --raw`: the bytes of both streams, in order, to stdout.
async fn logs_raw(c: &Client, id: &str, follow: bool, from: Option<u64>) -> Outcome {
    let mut stream = c.output_raw(id, from, follow, None).await?;
    let mut out = std::io::stdout().lock();
    while let Some(bytes) = stream.next().await? {
        if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
            return Ok(0);
        }
    }
    Ok(0)
}

async fn logs(c: &Client, id: &str, follow: bool, from: Option<u64>, json: bool) -> Outcome {
    let mut stream = c.output(id, from, follow).await?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    while let Some(line) = stream.next().await? {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(&line).unwrap_or_default());
            let _ = out.flush();
            continue;
        }
        match &line {
            OutputLine::Data { stream: s, .. } => {
                let bytes = line.bytes().unwrap_or_default();
                let w: &mut dyn Write = if *s == Stream::Stdout { &mut out } else { &mut err };
                if w.write_all(&bytes).and_then(|_| w.flush()).is_err() {
                    // The reader of our stdout went away (e.g. `| head`): stop quietly.
                    return Ok(0);
                }
            }
            OutputLine::Lagged { dropped } => eprintln!("cellkeep: [{dropped} bytes of output dropped]"),
            OutputLine::End => break,
            OutputLine::Started { .. } | OutputLine::Exit { .. } => {}
        }
    }
    Ok(0)
}

fn state(s: CellState) -> &'static str {
    match s {
        CellState::Running => "running",
        CellState::Exited => "exited",
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format!("{} ago", secs(now.saturating_sub(unix_ms)))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_info(i: &CellInfo) {
    println!("id:        {}", i.id);
    println!("provider:  {}", i.provider);
    println!("mode:      {}", if i.session { "session" } else { "oneshot" });
    println!("state:     {}", state(i.state));
    println!("owner uid: {}", i.owner_uid);
    println!("created:   {}", ago(i.created_ms));
    println!("idle:      {}", secs(i.idle_ms));
    if let Some(pid) = i.pid {
        println!("pid:       {pid}");
    }
    if let Some(e) = &i.exit {
        println!("exit:      {e}");
    }
    for d in &i.degraded {
        println!("degraded:  {}: {}", d.mechanism, d.detail);
    }
    let e = &i.events;
    println!(
        "events:    {} oom kill(s), {} memory limit hit(s), {} pids limit hit(s)",
        e.oom_kills, e.memory_max_hits, e.pids_max_hits
    );
}

fn print_cell_health(h: &CellHealth) {
    print_info(&h.info);
    let opt = |v: Option<u64>, f: fn(u64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    println!(
        "memory:    {} (peak {}, max {})",
        bytes(h.usage.memory_current),
        opt(h.usage.memory_peak, bytes),
        opt(h.limits.memory_max, bytes)
    );
    let cpu_max = h.limits.cpu.map(|c| format!("{c} CPU")).unwrap_or_else(|| "-".into());
    println!("cpu:       {:.1}% (max {cpu_max})", h.cpu_percent);
    println!("pids:      {} (max {})", h.usage.pids_current, opt(h.limits.pids, |v| v.to_string()));
    println!("open fds:  {} (max {})", h.open_fds, opt(h.limits.open_files, |v| v.to_string()));
}

fn print_daemon_health(h: &DaemonHealth) {
    println!("status:    {} (cellkeep {}, up {}s)", h.status, h.version, h.uptime_s);
    println!("cells:     {} running / {} max, {} exited", h.cells_running, h.max_cells, h.cells_exited);
    if h.launches_waiting > 0 {
        println!("waiting:   {} launch(es) waiting for a slot", h.launches_waiting);
    }
    if h.cells_warm > 0 || h.warm_served > 0 {
        println!("prewarm:   {} cell(s) built and waiting, {} launch(es) served by one", h.cells_warm, h.warm_served);
    }
    println!("cgroups:   {} layout, {} backend", h.cgroup_layout, h.cgroup_backend);
    println!("landlock:  ABI {}", h.landlock_abi);
    println!("providers: {}", h.providers.join(", "));
    if h.policies_rejected > 0 {
        println!("rejected:  {} policy file(s) not served", h.policies_rejected);
    }
    for r in h.rejected_policies.iter().flatten() {
        for p in &r.problems {
            println!("  {}: {p}", r.name);
        }
    }
    if !h.notes.is_empty() {
        println!("notes:     {} about the served policies", h.notes.len());
    }
    for n in &h.notes {
        println!("  {n}");
    }
    println!("memory:    {} available of {}", bytes(h.host_memory_available), bytes(h.host_memory_total));
}
