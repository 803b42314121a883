//! cellkeep: a Linux sandbox supervisor. It keeps CLI processes (AI coding agents or any
//! binary), each in its own *cell*: a cgroup with memory/CPU/pids limits, fresh namespaces,
//! no capabilities, no_new_privs, rlimits, a Landlock ruleset and a seccomp filter — all from
//! a per-provider TOML policy.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `main.rs` | mode choice: the hidden cell helper (`__cell-helper`) vs the CLI |
//! | [`cli`] | clap subcommands (`run`, `policy check/show/score/diff`, `daemon`, `doctor`, the client commands) |
//! | [`policy`] | TOML → validated [`policy::Policy`]; seccomp rules → BPF at load time; a directory as a set that leaves out (and reports) files that cannot load; review tools: warnings (`lint`), the admin floor (`floor`), the exposure score (`score`), `diff` |
//! | [`cgroup`] | cell cgroups: layout detection, v1 (hybrid/legacy) and v2 (unified) backends, limits, usage and events, kill, remove |
//! | [`config`] | daemon settings: embedded defaults, optional TOML file, flags |
//! | [`pool`] | the single owner of pool state: cap, deadlines, termination, exit reasons |
//! | [`api`] | HTTP/JSON over the Unix socket: the wire contract (`api::wire`: every request, answer and error code; the generated OpenAPI document), routes, peer credentials |
//! | [`client`] | typed client over the socket, shared by the CLI and the tests |
//! | [`session`] | reply framing (line, sentinel, regex, JSON field) and the bounded output spool with live fan-out |
//! | [`systemd`] | optional systemd integration: `sd_notify` readiness, socket activation, journald detection |
//! | [`egress`] | the egress proxy: per-cell HTTP `CONNECT` listener in the cell's netns, allowlist by name, events |
//! | [`sandbox`] | launch plan, launcher, the daemon's zygote (`zygote`), cells built before their request (`warm`), the helper, pid 1 and the payload recipe, cells' own host ids (`ids`), pseudo-terminals (`pty`); `sys` holds all `unsafe` |
//!
//! # Process model
//!
//! ```text
//! launcher (tokio) ──zygote fork (daemon) or spawn /proc/self/exe __cell-helper, fd 3 = control──▶ helper (in the cell cgroup)
//!   helper ──clone(new namespaces), write id maps──▶ pid 1 of the cell ──fork──▶ payload ──execve
//! ```
//! The launcher never runs Rust logic between fork and exec; the helper is a fresh
//! single-threaded process, so its setup is ordinary Rust. See [`sandbox`].
#![deny(unsafe_code)]

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod egress;
pub mod policy;
pub mod pool;
pub mod sandbox;
pub mod session;
pub mod systemd;

/// The hidden first argument that turns the binary into the cell helper.
pub const HELPER_ARG: &str = "__cell-helper";
