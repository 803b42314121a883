//! The shipped agent policies with the real CLIs (issue 5): claude, codex and gemini, as
//! installed by `scripts/install-agents.sh` under /opt/cellkeep/agents, started through a
//! real daemon on a temp socket whose policy directory is a copy of the shipped `policies/`
//! (unchanged), plus test-only "probe" providers that `extends` an agent policy and change
//! nothing but the command (a Node one-liner), so the probe runs under exactly the agent's
//! sandbox.
//!
//! Proven here, through the socket, for each CLI:
//!  - `--version` and `--help` succeed under the shipped one-shot policy and its real limits
//!    (2 GiB cgroup memory, no address-space rlimit);
//!  - planted secrets outside the workspace (/root, another user's ~/.ssh, /etc, a sibling
//!    of the workspace) cannot be read, and nothing outside the workspace can be written;
//!  - the cell has no network but the egress proxy (own network namespace), and the CLIs'
//!    HTTPS requests arrive at the proxy;
//!  - the daemon's own environment (fake API keys) never reaches a cell; the caller's key
//!    does, through the pass-list;
//!  - the session variants frame replies of the CLIs' structured stdio modes (offline: no
//!    API key, no network needed).
//!
//! Gate: root + a cgroup hierarchy (tests/common `privileged`) and the CLIs installed. Under
//! CI (`CI` set) a missing CLI fails the test; otherwise it is skipped with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cellkeep::policy::egress::Egress;
use cellkeep::policy::{CommandVia, Enforcement, Network, PathRule};
use common::http::{call, Response};
use common::{privileged, NOBODY};
use harness::Daemon;
use serde_json::{json, Value};

const PREFIX: &str = "/opt/cellkeep/agents";
const AGENTS: [&str; 3] = ["claude", "codex", "gemini"];
/// Each agent's API-key variable (on its pass-list).
const KEY_VAR: [(&str, &str); 3] =
    [("claude", "ANTHROPIC_API_KEY"), ("codex", "OPENAI_API_KEY"), ("gemini", "GEMINI_API_KEY")];
const ONESHOT_TIMEOUT_MS: u64 = 180_000;

/// The probe: one Node one-liner; the one-shot command (the last argv element) says what
/// to try, as `op:argument`. It prints one JSON line.
const PROBE_JS: &str = r#"
const fs = require('fs'), net = require('net');
// The caller's command is the last argument: after "--" (codex) or as --prompt=… (gemini); or,
// with no argument (claude: command_via = "stdin"), the whole of stdin.
const cmd = process.argv.length > 1 ? process.argv[process.argv.length - 1].replace(/^--prompt=/, '')
  : fs.readFileSync(0, 'utf8');
const i = cmd.indexOf(':');
const op = i < 0 ? cmd : cmd.slice(0, i), arg = i < 0 ? '' : cmd.slice(i + 1);
const out = (o) => process.stdout.write(JSON.stringify(Object.assign({op, arg}, o)) + '\n');
const fail = (e) => out({ok: false, code: e.code || String(e)});
if (op === 'read') {
  try { out({ok: true, data: fs.readFileSync(arg, 'utf8')}); } catch (e) { fail(e); }
} else if (op === 'list') {
  try { out({ok: true, data: fs.readdirSync(arg).join(',')}); } catch (e) { fail(e); }
} else if (op === 'write') {
  try { fs.writeFileSync(arg, 'written from a cell'); out({ok: true}); } catch (e) { fail(e); }
} else if (op === 'connect') {
  const j = arg.lastIndexOf(':');
  const s = net.connect({host: arg.slice(0, j), port: Number(arg.slice(j + 1))});
  const t = setTimeout(() => { out({ok: false, code: 'TIMEOUT'}); process.exit(0); }, 10000);
  s.on('connect', () => { clearTimeout(t); out({ok: true}); s.destroy(); });
  s.on('error', (e) => { clearTimeout(t); fail(e); });
} else if (op === 'env') {
  const environ = {};
  for (const p of fs.readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d))) {
    try { environ[p] = fs.readFileSync('/proc/' + p + '/environ', 'latin1'); }
    catch (e) { environ[p] = 'ERR ' + e.code; }
  }
  out({ok: true, env: process.env, environ, limits: fs.readFileSync('/proc/self/limits', 'utf8')});
} else if (op === 'argv') {
  out({ok: true, argv: process.argv});
} else {
  out({ok: false, code: 'unknown op'});
}
"#;

/// True when the agent tests can run here; see the module doc for the rules.
fn agents_ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    let missing: Vec<String> = AGENTS
        .iter()
        .map(|a| format!("{PREFIX}/bin/{a}"))
        .filter(|p| !std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("agent CLIs not installed: {missing:?} (run scripts/install-agents.sh as root)");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run under CI: {why}");
    }
    eprintln!("SKIP {test}: {why} (set CI=1 to make this a failure)");
    false
}

/// A daemon (tests/harness) with a copy of the shipped policies plus the probes, a cgroup root
/// of its own, a workspace owned by nobody (a root caller's cell runs under a host uid of its own
/// and sees it through an idmapped mount, or, where it cannot be idmapped, runs as its owner) and fake API
/// keys in its own environment ([`daemon_secrets`]).
fn daemon() -> Daemon {
    daemon_with("")
}

/// [`daemon`] with more daemon configuration (TOML).
fn daemon_with(config: &str) -> Daemon {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut b = Daemon::builder()
        .config(config)
        .prefix("ck-agents-")
        .shipped_policies()
        .socket_mode(Some("0600"))
        .shutdown_timeout_secs(10.0)
        .max_cells(16)
        .log_level("warn")
        .ready_within(Duration::from_secs(30));
    // Probes: the agent's policy, only the command changed (its final "--" ends node's own
    // options, so a gemini-style "--prompt=…" argument reaches the script).
    let js = serde_json::to_string(PROBE_JS).expect("json string");
    for agent in AGENTS {
        let text = format!(
            "extends = \"{agent}\"\n[provider]\nname = \"probe-{agent}\"\ncommand = [\"/usr/bin/node\", \"-e\", {js}, \"--\"]\n"
        );
        b = b.policy(&format!("probe-{agent}"), &text);
    }
    // `--version` / `--help` of each CLI under its own sandbox: only the command differs (the
    // shipped one-shot policies put the caller's command after "--", so it cannot be an option).
    for (agent, flags) in CLI_FLAGS {
        for (what, flag) in [("version", "--version"), ("help", "--help")] {
            let mut command: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
            command.insert(0, format!("{PREFIX}/bin/{agent}"));
            command.push(flag.to_owned());
            let text = format!(
                "extends = \"{agent}\"\n[provider]\nname = \"{what}-{agent}\"\ncommand = {}\n",
                serde_json::to_string(&command).expect("json")
            );
            b = b.policy(&format!("{what}-{agent}"), &text);
        }
    }
    for (_, var) in KEY_VAR {
        b = b.env(var, &format!("daemon-env-{var}-{tag}"));
    }
    b.start()
}

/// The subcommand before `--version`/`--help` for each CLI (codex's one-shot is `codex exec`).
const CLI_FLAGS: [(&str, &[&str]); 3] = [("claude", &[]), ("codex", &["exec"]), ("gemini", &[])];

/// Values of the API-key variables in the DAEMON's environment (must never reach a cell).
fn daemon_secrets(d: &Daemon) -> Vec<String> {
    d.env.iter().filter(|(k, _)| KEY_VAR.iter().any(|(_, var)| var == k)).map(|(_, v)| v.clone()).collect()
}

impl Daemon {
    /// POST /v1/providers/{provider}/commands.
    fn oneshot(&self, provider: &str, command: &str, env: Value) -> Response {
        let body = json!({"command": command, "cwd": self.cwd(), "env": env, "timeout_ms": ONESHOT_TIMEOUT_MS});
        call(&self.socket, "POST", &format!("/v1/providers/{provider}/commands"), Some(&body))
    }

    /// A one-shot that must run and exit 0; its stdout.
    fn oneshot_ok(&self, provider: &str, command: &str) -> String {
        let t = Instant::now();
        let r = self.oneshot(provider, command, json!({}));
        assert_eq!(r.status, 200, "{provider} {command}: {}", r.text());
        let v = r.json();
        assert_eq!(v["exit"]["reason"], "exited", "{provider} {command}: {v}");
        assert_eq!(v["exit"]["code"], 0, "{provider} {command}: {v}");
        eprintln!("{provider} {command}: exit 0 in {:?}", t.elapsed());
        v["stdout"].as_str().unwrap_or_default().to_owned()
    }

    /// Run the probe of `agent` with `op:arg`; its JSON line, with the whole answer for messages.
    fn probe(&self, agent: &str, what: &str, env: Value) -> (Value, String) {
        let r = self.oneshot(&format!("probe-{agent}"), what, env);
        assert_eq!(r.status, 200, "probe-{agent} {what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["exit"]["reason"], "exited", "probe-{agent} {what}: {v}");
        let stdout = v["stdout"].as_str().unwrap_or_default();
        let line = stdout.lines().last().unwrap_or_default();
        let parsed = serde_json::from_str(line).unwrap_or_else(|_| panic!("probe-{agent} {what}: no JSON: {v}"));
        (parsed, r.text())
    }

    fn session(&self, provider: &str) -> String {
        let r =
            call(&self.socket, "POST", &format!("/v1/providers/{provider}/session"), Some(&json!({"cwd": self.cwd()})));
        assert_eq!(r.status, 200, "session {provider}: {}", r.text());
        r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {}", r.text())).to_owned()
    }

    fn send_json(&self, id: &str, line: &Value) -> String {
        let r = call(
            &self.socket,
            "POST",
            &format!("/v1/cells/{id}/commands"),
            Some(&json!({"command": line.to_string(), "timeout_ms": 120_000})),
        );
        assert_eq!(r.status, 200, "send {line}: {}", r.text());
        r.json()["stdout"].as_str().unwrap_or_default().to_owned()
    }
}

/// Files and directories planted for a test, removed on drop (also when the test fails).
#[derive(Default)]
struct Planted(Vec<PathBuf>);

impl Planted {
    fn dir(&mut self, path: &Path, owner: u32, mode: u32) {
        std::fs::create_dir_all(path).expect("plant dir");
        std::os::unix::fs::chown(path, Some(owner), Some(owner)).expect("chown");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        self.0.push(path.to_owned());
    }
    fn file(&mut self, path: &Path, content: &str, owner: u32, mode: u32) {
        std::fs::write(path, content).expect("plant file");
        std::os::unix::fs::chown(path, Some(owner), Some(owner)).expect("chown");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        self.0.push(path.to_owned());
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

// 1. Each CLI's --version and --help under the shipped one-shot policy's sandbox and real
//    limits (test providers that extend it and change only the command: the shipped policy
//    itself passes the caller's command after "--", as a prompt; see test 7).
#[test]
fn agents_version_and_help_under_shipped_policies() {
    if !agents_ready("agents_version_and_help_under_shipped_policies") {
        return;
    }
    let d = daemon();
    let semver = regex::Regex::new(r"\b\d+\.\d+\.\d+\b").expect("regex");
    let expect: [(&str, &str, &str); 3] = [
        ("claude", "Claude Code", "Usage: claude"),
        ("codex", "codex-cli", "Usage: codex exec"),
        ("gemini", "", "Usage: gemini"),
    ];
    for (agent, version_word, usage) in expect {
        let v = d.oneshot_ok(&format!("version-{agent}"), "ignored");
        assert!(semver.is_match(&v) && v.contains(version_word), "{agent} --version: {v:?}");
        eprintln!("{agent} --version: {}", v.trim());
        let h = d.oneshot_ok(&format!("help-{agent}"), "ignored");
        assert!(h.contains(usage), "{agent} --help: {h}");
        assert!(h.lines().count() > 10, "{agent} --help is too short: {h}");
    }
}

// 2. Driven to read planted secrets outside its workspace, each agent's sandbox denies it;
//    the same Node one-liner reads the workspace fine, and the same files ARE readable to the
//    same uid outside a cell (so the denial is the sandbox's, not file permissions').
#[test]
fn agents_cannot_read_planted_secrets() {
    if !agents_ready("agents_cannot_read_planted_secrets") {
        return;
    }
    let d = daemon();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let short = &tag[tag.len() - 8..];
    let secret = format!("CK-SECRET-{tag}");
    let mut planted = Planted::default();
    // Another user's home with an SSH key, world-readable so only the sandbox can stop it.
    let home = PathBuf::from(format!("/home/ck-other-{short}"));
    planted.dir(&home, 4242, 0o755);
    planted.dir(&home.join(".ssh"), 4242, 0o755);
    let id_rsa = home.join(".ssh/id_rsa");
    planted.file(&id_rsa, &format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n"), 4242, 0o644);
    // /root (closed to nobody by its mode as well), a host config file in /etc, and a
    // sibling of the workspace under a workdir root (/var/tmp), writable by anyone.
    let in_root = PathBuf::from(format!("/root/ck-secret-{short}"));
    planted.file(&in_root, &secret, 0, 0o644);
    let in_etc = PathBuf::from(format!("/etc/ck-secret-{short}.conf"));
    planted.file(&in_etc, &secret, 0, 0o644);
    let sibling = PathBuf::from(format!("/var/tmp/ck-sibling-{short}"));
    planted.dir(&sibling, 0, 0o777);
    let in_sibling = sibling.join("secret");
    planted.file(&in_sibling, &secret, 0, 0o644);
    // Control files: the workspace (readable in the cell).
    let ws_file = d.ws.path().join("notes.txt");
    std::fs::write(&ws_file, "workspace content").expect("workspace file");
    std::os::unix::fs::chown(&ws_file, Some(NOBODY), Some(NOBODY)).expect("chown");

    // Outside any cell, nobody can read the world-readable plants: the files are not
    // protected by their modes.
    for p in [&id_rsa, &in_etc, &in_sibling] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(p)
            .output()
            .expect("setpriv");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&secret),
            "control: nobody should read {} outside a cell: {out:?}",
            p.display()
        );
    }

    for agent in AGENTS {
        let (v, all) = d.probe(agent, &format!("read:{}", ws_file.display()), json!({}));
        assert_eq!((v["ok"].as_bool(), v["data"].as_str()), (Some(true), Some("workspace content")), "{agent}: {all}");
        let (v, all) = d.probe(agent, "read:/etc/passwd", json!({}));
        assert_eq!(v["ok"], true, "{agent} reads /etc/passwd (allowed): {all}");

        for target in [&id_rsa, &in_root, &in_etc, &in_sibling] {
            let (v, all) = d.probe(agent, &format!("read:{}", target.display()), json!({}));
            assert_eq!(v["ok"], false, "{agent} read {}: {all}", target.display());
            // ENOENT: outside the cell's mount view (issue 13); EACCES/EPERM: DAC or Landlock.
            assert!(
                matches!(v["code"].as_str(), Some("ENOENT" | "EACCES" | "EPERM")),
                "{agent} read {}: {all}",
                target.display()
            );
            assert!(!all.contains(&secret), "{agent}: the secret leaked: {all}");
            eprintln!("{agent}: read {} -> {}", target.display(), v["code"]);
        }
        for dir in [home.as_path(), Path::new("/root"), Path::new("/etc/ssl/private"), Path::new("/home")] {
            let (v, all) = d.probe(agent, &format!("list:{}", dir.display()), json!({}));
            assert_eq!(v["ok"], false, "{agent} list {}: {all}", dir.display());
        }
        // Writes outside the workspace: a world-writable sibling, the agents' own install.
        for target in [sibling.join(format!("pwned-{agent}")), PathBuf::from(format!("{PREFIX}/bin/pwned-{agent}"))] {
            let (v, all) = d.probe(agent, &format!("write:{}", target.display()), json!({}));
            assert_eq!(v["ok"], false, "{agent} write {}: {all}", target.display());
            assert!(
                matches!(v["code"].as_str(), Some("ENOENT" | "EROFS" | "EACCES" | "EPERM")),
                "{agent} write {}: {all}",
                target.display()
            );
            assert!(!target.exists(), "{} was written", target.display());
        }
        let (v, all) =
            d.probe(agent, &format!("write:{}", d.ws.path().join(format!("out-{agent}")).display()), json!({}));
        assert_eq!(v["ok"], true, "{agent} writes its workspace: {all}");
    }
}

// 3. The daemon's environment (fake API keys) never reaches a cell, not even through
//    /proc/*/environ; the caller's key arrives through the pass-list, other variables do not.
//    Also: no address-space rlimit, the open-files limit of the policy.
#[test]
fn agents_never_see_the_daemons_environment() {
    if !agents_ready("agents_never_see_the_daemons_environment") {
        return;
    }
    let d = daemon();
    let secrets = daemon_secrets(&d);
    assert_eq!(secrets.len(), KEY_VAR.len(), "{:?}", d.env);
    for (agent, var) in KEY_VAR {
        let (v, all) = d.probe(agent, "env", json!({}));
        for s in &secrets {
            assert!(!all.contains(s.as_str()), "{agent}: the daemon's {s} reached the cell: {all}");
        }
        assert!(v["env"].get(var).is_none(), "{agent}: {var} set without the caller passing it: {all}");
        assert_eq!(v["env"]["HOME"], "/tmp", "{agent}: {all}");
        let limits = v["limits"].as_str().unwrap_or_default();
        let line = |name: &str| limits.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
        assert!(line("Max address space").contains("unlimited"), "{agent}: RLIMIT_AS is set: {limits}");
        assert!(line("Max open files").contains("4096"), "{agent}: {limits}");
        // Every process of the cell was checked (the probe itself at least).
        let environ = v["environ"].as_object().map(|m| m.len()).unwrap_or(0);
        assert!(environ >= 1, "{agent}: {all}");

        let caller_key = format!("caller-{var}-value");
        let env = json!({var: caller_key, "CK_NOT_ON_THE_LIST": "x"});
        let (v, all) = d.probe(agent, "env", env);
        assert_eq!(v["env"][var], caller_key, "{agent}: the caller's {var} did not arrive: {all}");
        assert!(v["env"].get("CK_NOT_ON_THE_LIST").is_none(), "{agent}: an unlisted variable arrived: {all}");
        for s in &secrets {
            assert!(!all.contains(s.as_str()), "{agent}: the daemon's {s} reached the cell: {all}");
        }
        eprintln!("{agent}: environment = the pass-list from the request + the policy's fixed values");
    }
}

// 4. The network: each agent cell has its own network namespace. Without the proxy nothing
//    is reachable — not a listener on the host's loopback (finding 2 of issue 14: any host
//    service on port 443 used to be), not an outside address, not UDP.
#[test]
fn agents_have_no_network_but_the_proxy() {
    if !agents_ready("agents_have_no_network_but_the_proxy") {
        return;
    }
    let d = daemon();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    // Control: the listener is reachable from outside a cell.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("control connect");
    for agent in AGENTS {
        for target in [format!("127.0.0.1:{port}"), "127.0.0.1:443".to_owned(), "1.1.1.1:443".to_owned()] {
            let (v, all) = d.probe(agent, &format!("connect:{target}"), json!({}));
            assert_eq!(v["ok"], false, "{agent} reached {target}: {all}");
            assert!(matches!(v["code"].as_str(), Some("ECONNREFUSED" | "ENETUNREACH")), "{agent} {target}: {all}");
            eprintln!("{agent}: connect {target} -> {}", v["code"]);
        }
        let (v, all) = d.probe(agent, "env", json!({}));
        assert_eq!(v["env"]["HTTPS_PROXY"], "http://127.0.0.1:3128", "{agent}: {all}");
    }
    drop(listener);
}

// 5. The session variants over the CLIs' structured stdio modes, offline (no key, no network):
//    each command gets exactly its framed reply, and the session lives on between commands.
#[test]
fn agent_sessions_frame_structured_replies() {
    if !agents_ready("agent_sessions_frame_structured_replies") {
        return;
    }
    let d = daemon();
    let last_json = |reply: &str| -> Value {
        let line = reply.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|_| panic!("reply does not end with a JSON line: {reply}"))
    };

    // claude: stream-json in and out; a reply ends with {"type":"result"}.
    let id = d.session("claude-session");
    let health = call(&d.socket, "GET", &format!("/v1/cells/{id}/health"), None).json();
    assert_eq!(health["limits"]["memory_max"], 2u64 << 30, "{health}");
    assert_eq!(health["limits"]["pids"], 512, "{health}");
    for turn in ["first turn", "second turn"] {
        let user = json!({"type": "user", "message": {"role": "user", "content": turn}});
        let reply = d.send_json(&id, &user);
        let end = last_json(&reply);
        assert_eq!(end["type"], "result", "claude-session {turn}: {reply}");
        // No API key was passed: Claude answers that it is not logged in, as a result event.
        assert_eq!(end["is_error"], true, "{reply}");
        eprintln!("claude-session {turn}: {} lines, result: {}", reply.lines().count(), end["result"]);
    }
    let info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
    assert_eq!(info["state"], "running", "the session ended: {info}");
    call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);

    // gemini: Agent Client Protocol; a reply ends at the response carrying an id.
    let id = d.session("gemini-session");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": 1, "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}}}});
    let end = last_json(&d.send_json(&id, &init));
    assert_eq!((end["id"].as_i64(), end["result"]["protocolVersion"].as_i64()), (Some(0), Some(1)), "{end}");
    let new = json!({"jsonrpc": "2.0", "id": 1, "method": "session/new", "params": {"cwd": d.cwd(), "mcpServers": []}});
    let end = last_json(&d.send_json(&id, &new));
    // Without GEMINI_API_KEY the session cannot authenticate: an error response to id 1.
    assert_eq!(end["id"], 1, "{end}");
    assert!(end.get("error").is_some() || end.get("result").is_some(), "{end}");
    eprintln!("gemini-session: initialize ok; session/new -> {end}");
    call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);

    // codex: app-server; a reply ends at a response (turns run to turn/completed).
    let id = d.session("codex-session");
    let init =
        json!({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "cellkeep-test", "version": "1"}}});
    let end = last_json(&d.send_json(&id, &init));
    assert_eq!(end["id"], 0, "{end}");
    assert!(end["result"].is_object(), "{end}");
    let start = json!({"id": 1, "method": "thread/start",
        "params": {"cwd": d.cwd(), "sandbox": "danger-full-access", "approvalPolicy": "never"}});
    let end = last_json(&d.send_json(&id, &start));
    assert_eq!(end["id"], 1, "{end}");
    assert!(end["result"]["thread"]["id"].is_string(), "{end}");
    eprintln!("codex-session: initialize ok; thread/start -> thread {}", end["result"]["thread"]["id"]);
    call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
}

// 6. The shipped agent policies, read as a reviewer would check them: 2 GiB cgroup memory,
//    TCP connect 443 only with the host network, HOME in the private tmp, nothing broad
//    readable, and each probe identical to its agent but for the command.
#[test]
fn shipped_agent_policies_say_what_the_review_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let (policies, diags) = cellkeep::policy::load_dir(&dir);
    assert!(diags.is_empty(), "{diags:?}");
    for name in ["claude", "codex", "gemini", "claude-session", "codex-session", "gemini-session"] {
        let p = policies.get(name).unwrap_or_else(|| panic!("policies/{name}.toml missing"));
        assert!(p.is_launchable(), "{name}");
        assert!(p.command[0].starts_with(PREFIX), "{name}: {:?}", p.command);
        assert_eq!(p.limits.memory_max, Some(2 << 30), "{name}");
        let Network::Proxy { egress: Egress::Allow(rules) } = &p.network else {
            panic!("{name}: agents reach the outside only through the egress proxy: {:?}", p.network)
        };
        assert!(!rules.is_empty() && rules.iter().all(|r| !r.wildcard && r.port == 443), "{name}: {rules:?}");
        assert!(p.namespaces.net, "{name}: an agent cell has its own network namespace");
        // The caller's command can never be an option: after "--", inside --prompt=…, or (for
        // Claude Code, which scans its whole argv for some flags) on stdin only.
        let separated = match name {
            n if n.starts_with("claude") => p.command_via == CommandVia::Stdin,
            n if n.starts_with("gemini") => p.command_format.as_deref() == Some("--prompt={}"),
            _ => p.command_after.as_deref() == Some("--"),
        };
        assert!(separated, "{name}: {:?} {:?} {:?}", p.command_after, p.command_format, p.command_via);
        assert_eq!(p.enforcement, Enforcement::Required, "{name}");
        assert_eq!(p.env.set.get("HOME").map(String::as_str), Some("{tmp}"), "{name}");
        assert!(!p.env.pass.iter().any(|n| n == "HOME" || n == "PATH"), "{name}: {:?}", p.env.pass);
        let absolute = |rules: &[PathRule]| -> Vec<PathBuf> {
            rules.iter().filter_map(|r| if let PathRule::Absolute(p) = r { Some(p.clone()) } else { None }).collect()
        };
        for broad in ["/", "/home", "/etc", "/opt", "/root", "/var", "/run", "/sys", "/srv", "/tmp", "/etc/ssl"] {
            for (what, rules) in
                [("read", &p.filesystem.read), ("write", &p.filesystem.write), ("exec", &p.filesystem.exec)]
            {
                assert!(!absolute(rules).iter().any(|r| r == Path::new(broad)), "{name}: {what} lists {broad}");
            }
        }
        assert!(
            !absolute(&p.filesystem.write).iter().any(|r| r.starts_with(PREFIX)),
            "{name} may write its own install"
        );
        // Written only: the workspace, the private tmp, /dev/null.
        assert_eq!(absolute(&p.filesystem.write), vec![PathBuf::from("/dev/null")], "{name}");
    }
    // The probe providers of the tests are the agents' policies with another command.
    let tmp = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(&dir).expect("policies/") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, tmp.path().join(p.file_name().expect("name"))).expect("copy");
    }
    for agent in AGENTS {
        let probe = tmp.path().join(format!("probe-{agent}.toml"));
        let mut f = std::fs::File::create(&probe).expect("probe");
        writeln!(
            f,
            "extends = \"{agent}\"\n[provider]\nname = \"probe-{agent}\"\ncommand = [\"/usr/bin/node\", \"-e\", \"0\"]"
        )
        .expect("write");
        let strip = |p: &cellkeep::policy::Policy| {
            let mut v = serde_json::to_value(p).expect("serialize");
            for k in ["name", "source", "description", "command"] {
                v.as_object_mut().expect("object").remove(k);
            }
            v
        };
        let a = cellkeep::policy::load_file(&tmp.path().join(format!("{agent}.toml"))).expect("agent");
        let b = cellkeep::policy::load_file(&probe).expect("probe");
        assert_eq!(strip(&a), strip(&b), "probe-{agent} differs from {agent} beyond the command");
    }
}

// 7. (issue 14, finding 5) A prompt that looks like an option reaches each CLI as a PROMPT:
//    the shipped one-shot policies put the caller's command after "--". Offline, "--version"
//    as a prompt fails on authentication or the network, and the CLI never prints its version.
#[test]
fn agents_take_a_dash_prompt_as_a_prompt() {
    if !agents_ready("agents_take_a_dash_prompt_as_a_prompt") {
        return;
    }
    let d = daemon();
    // What each CLI prints when "--version" arrived as the prompt, and its version line.
    let expect: [(&str, &[&str], &str); 3] = [
        ("claude", &["Not logged in", "API key", "apiKey", "authentication"], "(Claude Code)"),
        ("codex", &["user\n--version"], "codex-cli"),
        ("gemini", &["GEMINI_API_KEY", "Auth method", "auth"], "0.61"),
    ];
    for (agent, prompt_seen, version_line) in expect {
        let body = json!({"provider": agent, "cwd": d.cwd(), "args": ["--version"]});
        let r = call(&d.socket, "POST", "/v1/cells", Some(&body));
        assert_eq!(r.status, 201, "{agent}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = String::new();
        while Instant::now() < deadline {
            out = cell_output(&d, &id);
            let ended = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json()["state"] != "running";
            if ended || prompt_seen.iter().any(|p| out.contains(p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
        assert!(!out.contains(version_line), "{agent}: \"--version\" was taken as an option: {out}");
        assert!(
            prompt_seen.iter().any(|p| out.contains(p)),
            "{agent}: no sign that \"--version\" was taken as a prompt (expected one of {prompt_seen:?}): {out}"
        );
        eprintln!("{agent}: \"--version\" was a prompt");
    }
}

// 7b. (review of issue 14, finding 5) Claude Code scans its WHOLE argv for some words, after
//     "--" too (`process.argv.includes("--session-tunnel")`, `indexOf("--handle-uri")`, `-r`,
//     `--trust-workspace` …), so "--" did not keep a prompt from acting as one of them. Under
//     the shipped claude policies no caller text reaches the argv: the one-shot's command is
//     its stdin, and caller arguments are refused (a session takes commands on stdin anyway).
//     The probe is the shipped claude policy with node as the command.
#[test]
fn claude_gets_no_caller_text_in_its_argv() {
    if !agents_ready("claude_gets_no_caller_text_in_its_argv") {
        return;
    }
    let d = daemon();
    for prompt in ["argv:--handle-uri", "argv:x --session-tunnel --hard-fail"] {
        let (v, text) = d.probe("claude", prompt, json!({}));
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap_or_default();
        assert!(!argv.is_empty(), "{text}");
        assert!(
            !argv.iter().any(|a| a.contains("--handle-uri") || a.contains("--session-tunnel")),
            "the caller's text reached claude's argv: {argv:?}"
        );
        assert_eq!(v["op"], "argv", "the probe did not get the command on its stdin: {text}");
        assert_eq!(v["arg"], prompt.trim_start_matches("argv:"), "{text}");
    }
    // A spawned one-shot's one argument is its command (to stdin) as well; more are refused,
    // and so is any argument for the session, whose commands are its stdin.
    let spawn = |provider: &str, args: &[&str]| {
        let body = json!({"provider": provider, "cwd": d.cwd(), "args": args});
        call(&d.socket, "POST", "/v1/cells", Some(&body))
    };
    for (provider, args) in
        [("claude", &["--handle-uri", "claude-cli://x"][..]), ("claude-session", &["--handle-uri"][..])]
    {
        let r = spawn(provider, args);
        assert_eq!(r.status, 400, "{provider} {args:?}: {}", r.text());
        assert!(r.text().contains("command_via"), "the refusal does not name the setting: {}", r.text());
    }
    // `cellkeep exec` in a script (stdin not a terminal, so it forwards its stdin: "stdin":
    // true) works: the command comes first on the program's stdin, the caller's input after.
    let out = Command::new(common::BIN)
        .args(["--socket", d.socket.to_str().unwrap_or_default(), "exec", "--cwd", &d.cwd(), "probe-claude"])
        .arg("argv:--session-tunnel")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b" and more")?;
            }
            child.wait_with_output()
        })
        .expect("cellkeep exec");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cellkeep exec probe-claude: {out:?}");
    let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or(Value::Null);
    assert_eq!(v["arg"], "--session-tunnel and more", "{text}");
    assert!(!v["argv"].to_string().contains("--session-tunnel"), "{text}");
}

/// Everything a cell wrote so far (stdout and stderr), from its output spool.
fn cell_output(d: &Daemon, id: &str) -> String {
    let r = call(&d.socket, "GET", &format!("/v1/cells/{id}/output"), None);
    r.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["data"].as_str().map(str::to_owned))
        .collect()
}

// 8. (issue 14) Each CLI's HTTPS requests go through the egress proxy, under the SHIPPED
//    policy unchanged. The daemon's test resolver (`egress_hosts`) sends each vendor's API name
//    to a fake endpoint on the host's 127.0.0.1:443, which records the TLS ClientHello it gets
//    (the CLIs then refuse its certificate: offline, nothing more is expected). The proxy's
//    event for the cell names the vendor host, allowed, with the bytes sent.
#[test]
fn agents_https_goes_through_the_proxy() {
    if !agents_ready("agents_https_goes_through_the_proxy") {
        return;
    }
    let fake = match std::net::TcpListener::bind("127.0.0.1:443") {
        Ok(l) => l,
        Err(e) => {
            let why = format!("the fake API endpoint needs 127.0.0.1:443: {e}");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIP agents_https_goes_through_the_proxy: {why}");
            return;
        }
    };
    let hellos = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let seen = hellos.clone();
    std::thread::spawn(move || {
        for conn in fake.incoming().flatten() {
            use std::io::Read;
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            if let Ok(n) = conn.read(&mut buf) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            }
        }
    });
    let vendors = [
        ("claude", "api.anthropic.com", "ANTHROPIC_API_KEY"),
        ("codex", "api.openai.com", "OPENAI_API_KEY"),
        ("gemini", "generativelanguage.googleapis.com", "GEMINI_API_KEY"),
    ];
    let hosts: Vec<String> = vendors.iter().map(|(_, h, _)| format!("\"{h}\" = \"127.0.0.1\"")).collect();
    let d = daemon_with(&format!("egress_hosts = {{ {} }}", hosts.join(", ")));
    for (agent, host, key) in vendors {
        let body = json!({"provider": agent, "cwd": d.cwd(), "args": ["say hello"], "env": {key: "sk-fake-test-key"}});
        let r = call(&d.socket, "POST", "/v1/cells", Some(&body));
        assert_eq!(r.status, 201, "{agent}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut info = Value::Null;
        let arrived = |info: &Value| {
            info["egress"].as_array().into_iter().flatten().find(|e| e["name"] == host && e["allowed"] == true).cloned()
        };
        while Instant::now() < deadline {
            info = call(&d.socket, "GET", &format!("/v1/cells/{id}"), None).json();
            if arrived(&info).is_some_and(|e| e["bytes_up"].as_u64() > Some(0)) || info["state"] != "running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let output = cell_output(&d, &id);
        call(&d.socket, "DELETE", &format!("/v1/cells/{id}?force=true"), None);
        let event =
            arrived(&info).unwrap_or_else(|| panic!("{agent}: no request to {host} at the proxy: {info}\n{output}"));
        assert_eq!(event["port"], 443, "{agent}: {event}");
        assert!(event["bytes_up"].as_u64() > Some(0), "{agent}: nothing went through the tunnel: {info}\n{output}");
        let got = hellos.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(
            got.windows(host.len()).any(|w| w == host.as_bytes()),
            "{agent}: the fake endpoint got no TLS ClientHello for {host} (SNI)"
        );
        eprintln!("{agent}: HTTPS to {host} went through the proxy: {event}");
    }
}
