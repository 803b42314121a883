//! Warnings: what a valid policy grants that a reviewer should look at twice. Each finding is
//! placed at the `file:line:col` that set the key and says, in one line, why it matters and
//! what to write instead.
//!
//! Checked here: broad grants (write or exec on `/`, `/etc`, `/usr`, home roots, `/proc`,
//! `/sys`, `/boot`, the daemon's socket directory; read of `/` or every home), paths that do
//! not exist on this host, paths hidden by the cell's own private `/tmp`, a `command` that
//! does not exist, is not executable or sits outside every `exec` path, `network.egress` =
//! `"learn"` (every name) or an empty list (nothing to reach through the proxy), workdir roots
//! that put system directories under `{cwd}`, identity settings that share a host uid or do
//! nothing (notes), seccomp allowlists that re-enable calls the default preset denies, and
//! pre-built cells that only root's requests can use (a note); read on `/run` (the host's
//! sockets), egress addresses the proxy refuses for names (loopback, metadata) listed
//! literally, namespaces switched off, `best_effort` enforcement, seccomp `"log"` (allows
//! everything), sizes written as bare numbers below 1 MiB (bytes), and a `limits.cpu` above
//! this host's CPU count (a percent written as a count). A path is judged where it leads: a
//! rule through a symlink is judged as its target, as the cell's bind is. `command = []` (the
//! caller runs any program) is a note: the shipped generic sandbox means it.
//!
//! Two kinds of missing path are notes, not warnings (they never fail `--strict`): paths
//! under an install prefix that a shipped script creates ([`INSTALL_PREFIXES`]), and paths
//! that only exist on some distributions ([`DISTRO_ALTERNATES`]); a cell skips a missing path.

use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::check::Finding;
use super::egress::Egress;
use super::model::{Network, SeccompAction};
use super::raw::OptList;
use super::seccomp::DEFAULT_DENY;
use super::Checked;

/// Install prefixes created by a shipped script: a missing path under one is a note.
pub const INSTALL_PREFIXES: &[(&str, &str)] = &[("/opt/cellkeep", "scripts/install-agents.sh")];

/// Paths that exist on some distributions only (the shipped policies list both the Debian and
/// the RHEL names): a missing one is a note.
pub const DISTRO_ALTERNATES: &[&str] = &[
    "/etc/pki",
    "/etc/ssl",
    "/etc/ca-certificates.conf",
    "/etc/ld.so.preload",
    "/etc/locale.alias",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/lib64",
    "/lib32",
    "/usr/lib64",
    "/dev/tty",
];

/// Directories the cell mounts privately (a host path beneath one is hidden from it).
pub const PRIVATE_MOUNTS: &[&str] = &["/tmp"];

/// The private mount that hides `path` from a cell of `policy`, if one does.
pub fn hidden_by_cell_mounts(policy: &super::Policy, path: &Path) -> Option<&'static str> {
    if !policy.namespaces.mount {
        return None;
    }
    PRIVATE_MOUNTS.iter().copied().find(|m| within(path, Path::new(m)))
}

/// The daemon's socket directory (from the built-in socket path).
pub fn socket_dir() -> PathBuf {
    Path::new(crate::client::DEFAULT_SOCKET).parent().map_or_else(|| PathBuf::from("/run"), Path::to_path_buf)
}

/// Host directories a grant must not cover, and what they hold.
fn sensitive() -> Vec<(PathBuf, &'static str)> {
    let fixed = [
        ("/", "the whole host"),
        ("/etc", "host configuration such as passwd, sudoers and cron"),
        ("/usr", "the host's programs and libraries"),
        ("/home", "every user's home directory"),
        ("/root", "root's home directory"),
        ("/proc", "the kernel's process and tuning files"),
        ("/sys", "the kernel's device and tuning files"),
        ("/boot", "the kernel and boot loader"),
    ];
    let mut out: Vec<(PathBuf, &str)> = fixed.iter().map(|(p, w)| (PathBuf::from(p), *w)).collect();
    out.push((socket_dir(), "the cellkeep daemon's socket directory"));
    out
}

/// Every warning and note of a valid policy.
pub fn lint(c: &Checked) -> Vec<Finding> {
    let mut l = Linter { c, out: Vec::new() };
    let fs = &c.raw.filesystem;
    for (list, key) in [(&fs.read, "filesystem.read"), (&fs.write, "filesystem.write"), (&fs.exec, "filesystem.exec")] {
        for item in items(list) {
            l.path(&item, key);
        }
    }
    l.command();
    l.environment();
    l.workdir();
    l.identity();
    l.network();
    l.namespaces();
    l.sizes();
    l.cpu();
    l.seccomp();
    l.prewarm();
    l.out.sort_by(|a, b| (&a.diag.file, a.diag.line, a.diag.col).cmp(&(&b.diag.file, b.diag.line, b.diag.col)));
    l.out
}

fn items(v: &OptList<String>) -> Vec<Spanned<String>> {
    v.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default()
}

/// `path` equals `dir` or lies beneath it.
fn within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

struct Linter<'a> {
    c: &'a Checked,
    out: Vec<Finding>,
}

impl Linter<'_> {
    fn warn(&mut self, span: Range<usize>, key: &str, msg: String) {
        self.out.push(Finding::warning(self.c.sources.diag(&span, key, msg)));
    }

    fn note(&mut self, span: Range<usize>, key: &str, msg: String) {
        self.out.push(Finding::note(self.c.sources.diag(&span, key, msg)));
    }

    /// One `filesystem.*` entry: broad, hidden, or missing.
    fn path(&mut self, item: &Spanned<String>, key: &str) {
        let text = item.get_ref();
        if !text.starts_with('/') {
            return; // {cwd} and {tmp} are the cell's own.
        }
        let path = Path::new(text.trim_end_matches('/'));
        let path = if path.as_os_str().is_empty() { Path::new("/") } else { path };
        // A cell's bind follows symlinks: judge the path it reaches (`/bin` is `/usr/bin` on a
        // merged-/usr host; a link under a workdir root may point into a home).
        let real = std::fs::canonicalize(path).ok().filter(|r| r != path);
        let shown = match &real {
            Some(r) => format!("\"{text}\" (a symlink to {})", r.display()),
            None => format!("\"{text}\""),
        };
        if let Some(msg) = broad(real.as_deref().unwrap_or(path), key) {
            self.warn(item.span(), key, format!("{shown} {msg}"));
            return;
        }
        if let Some(mount) = self.hidden_by(path) {
            let msg = format!(
                "\"{text}\" is hidden inside the cell: it mounts a private {mount} over the host's; \
                 use \"{{tmp}}\" for scratch space, or install outside {mount} (e.g. under /opt)"
            );
            self.warn(item.span(), key, msg);
            return;
        }
        self.missing(item, key, "the cell skips this rule, so it grants nothing; check the spelling or remove it");
    }

    fn hidden_by(&self, path: &Path) -> Option<&'static str> {
        hidden_by_cell_mounts(&self.c.policy, path)
    }

    /// A missing absolute path: a note under an install prefix or for a distribution's
    /// alternate name, else a warning ending in `consequence`.
    fn missing(&mut self, item: &Spanned<String>, key: &str, consequence: &str) -> bool {
        let text = item.get_ref();
        let path = Path::new(text);
        if path.exists() {
            return false;
        }
        if let Some((prefix, script)) = INSTALL_PREFIXES.iter().find(|(p, _)| within(path, Path::new(p))) {
            let msg = format!("\"{text}\" is not installed on this host yet ({script} creates {prefix}); check again after installing");
            self.note(item.span(), key, msg);
        } else if DISTRO_ALTERNATES.iter().any(|a| within(path, Path::new(a))) {
            let msg = format!(
                "\"{text}\" does not exist on this host (kept for other distributions; the cell skips it here)"
            );
            self.note(item.span(), key, msg);
        } else {
            self.warn(item.span(), key, format!("\"{text}\" does not exist on this host: {consequence}"));
        }
        true
    }

    fn command(&mut self) {
        if let (Some(list), false) = (&self.c.raw.provider.command, self.c.policy.is_abstract) {
            if list.get_ref().is_empty() {
                // A note: the generic sandbox (policies/sandbox.toml) means it.
                let msg = "[] lets the caller run any program under the filesystem.exec paths, with any \
                           arguments (the whole argv is the caller's); give the binary and its fixed arguments \
                           to confine callers to one program"
                    .to_owned();
                return self.note(list.span(), "provider.command", msg);
            }
        }
        let Some(first) = items(&self.c.raw.provider.command).into_iter().next() else { return };
        let key = "provider.command";
        let text = first.get_ref().clone();
        let path = Path::new(&text);
        if let Some(mount) = self.hidden_by(path) {
            let msg = format!(
                "\"{text}\" is under {mount}, which the cell mounts privately: every launch fails with \
                 \"no such file\"; install the program outside {mount} (e.g. under /opt)"
            );
            return self.warn(first.span(), key, msg);
        }
        if self.missing(&first, key, "every launch would fail with \"no such file\"; install it or fix the path") {
            return;
        }
        let executable = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !executable {
            let msg = format!("\"{text}\" is not an executable file; point command at the program itself");
            return self.warn(first.span(), key, msg);
        }
        if !self.exec_covers(path) {
            let dir = path.parent().map(|d| d.display().to_string()).unwrap_or_default();
            let msg = format!(
                "\"{text}\" is outside every filesystem.exec path, so the cell may not run it; \
                 add \"{dir}\" to filesystem.exec"
            );
            self.warn(first.span(), key, msg);
        }
    }

    /// Whether an absolute `exec` rule covers `path` (as written or with symlinks resolved).
    fn exec_covers(&self, path: &Path) -> bool {
        use super::model::PathRule;
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.c.policy.filesystem.exec.iter().any(|rule| match rule {
            PathRule::Absolute(dir) => {
                let real_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                [path, real.as_path()].iter().any(|p| within(p, dir) || within(p, &real_dir))
            }
            // The cwd and tmp are only known at launch: give the benefit of the doubt.
            _ => true,
        })
    }

    fn workdir(&mut self) {
        let broad_roots: Vec<PathBuf> =
            sensitive().into_iter().map(|(p, _)| p).filter(|p| p != Path::new("/home")).collect();
        for root in items(&self.c.raw.workdir.roots) {
            let path = Path::new(root.get_ref().trim_end_matches('/'));
            let path = if path.as_os_str().is_empty() { Path::new("/") } else { path };
            if broad_roots.iter().any(|s| s == path) {
                let msg = format!(
                    "\"{}\" lets a caller start a cell anywhere under it and write there through \"{{cwd}}\"; \
                     list the directories where work happens (e.g. \"/srv\", \"/home\")",
                    root.get_ref()
                );
                self.warn(root.span(), "workdir.roots", msg);
            }
        }
    }

    /// Notes: a fixed `root_maps_to` account (every root-called cell shares it: any process of
    /// that uid can signal them, and they spend one budget), and a `workspace_idmap` that no
    /// cell of the policy uses (its cells never run under an id of their own).
    fn identity(&mut self) {
        let (id, raw) = (&self.c.policy.identity, &self.c.raw.identity);
        if let (Some(u), Some(v)) = (id.root_maps_to, &raw.root_maps_to) {
            let msg = format!(
                "every root-called cell runs as host uid {}, shared with that account and with each other \
                 (any process of that uid can signal them; they spend one kernel budget); \"cell\" gives each \
                 cell a uid of its own",
                u.uid
            );
            self.note(v.span(), "identity.root_maps_to", msg);
        }
        let own_id = matches!(id.run_as, super::RunAs::Range { .. })
            || (matches!(id.run_as, super::RunAs::Caller) && id.root_maps_to.is_none());
        if let (false, Some(v)) =
            (own_id && self.c.policy.namespaces.user && self.c.policy.namespaces.mount, &raw.workspace_idmap)
        {
            let msg = "has no effect: no cell of this policy runs under an id of its own with a user and a mount \
                       namespace (root_maps_to = \"cell\" or run_as = \"range\")"
                .to_owned();
            self.note(v.span(), "identity.workspace_idmap", msg);
        }
    }

    /// Pre-built cells are built for root's requests: under `run_as = "caller"` another
    /// caller's cell runs as that caller's uid, so only root's launches can use them.
    fn prewarm(&mut self) {
        let Some(v) = &self.c.raw.pool.prewarm else { return };
        if self.c.policy.prewarm > 0 && matches!(self.c.policy.identity.run_as, super::RunAs::Caller) {
            let msg = "pre-built cells are built for root's requests: with run_as = \"caller\", a request from \
                       another uid runs as that uid in a cell built for it (use run_as = \"range\" or a fixed \
                       account for cells any caller's request fits)"
                .to_owned();
            self.note(v.span(), "pool.prewarm", msg);
        }
    }

    /// `environment.pass` names through which a caller would choose code the program runs
    /// (a loader's preload, an interpreter's start-up file or options) or what a bare name
    /// runs: a provider that confines callers to its command would let them run anything.
    fn environment(&mut self) {
        for name in items(&self.c.raw.environment.pass) {
            let n = name.get_ref().as_str();
            if n.eq_ignore_ascii_case("PATH") {
                let msg = format!("\"{n}\" lets the caller choose which program a bare name runs; set it in [environment.set] instead");
                self.warn(name.span(), "environment.pass", msg);
            } else if let Some(what) = code_loading_variable(n) {
                let msg =
                    format!("\"{n}\" lets the caller {what}; remove it unless the provider needs it from callers");
                self.warn(name.span(), "environment.pass", msg);
            } else if crate::sandbox::plan::proxy_env(0).iter().any(|(p, _)| p.eq_ignore_ascii_case(n)) {
                let msg = format!(
                    "\"{n}\" is never the caller's: a proxy cell gets the egress proxy's address, any other cell no network; remove it"
                );
                self.note(name.span(), "environment.pass", msg);
            }
        }
    }

    fn network(&mut self) {
        let Network::Proxy { egress } = &self.c.policy.network else { return };
        let Some(e) = &self.c.raw.network.egress else { return };
        match egress {
            Egress::Learn => {
                let msg = "\"learn\" lets the cell reach every name through the proxy; run it once, then \
                           write the names it reported (cell events, the log) as egress = [...]"
                    .to_owned();
                self.warn(e.span(), "network.egress", msg);
            }
            // An abstract parent may leave the list empty for each child to fill in; a child
            // that inherits it empty is warned, at the parent's line.
            Egress::Allow(rules) if rules.is_empty() && !self.c.policy.is_abstract => {
                let msg = "an empty list allows nothing through the proxy; use mode = \"none\" instead".to_owned();
                self.warn(e.span(), "network.egress", msg);
            }
            Egress::Allow(rules) => {
                // Each finding at its entry: the list's items as written, in the rules' order
                // (every item parsed, the policy being valid), else at the list.
                let texts: Vec<&str> =
                    e.get_ref().as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                let at = |i: usize| match texts.get(i).filter(|_| texts.len() == rules.len()) {
                    Some(t) => self.c.sources.item_span(&e.span(), t),
                    None => e.span(),
                };
                let mut found = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    let Ok(ip) = r.host.parse::<std::net::IpAddr>() else { continue };
                    if !super::egress::may_reach(ip, false) {
                        let msg = format!(
                            "\"{r}\" is an address the proxy refuses for every name (loopback, link-local, cloud \
                             metadata, reserved), yet listed as an address it is reached: the host's own service \
                             or its metadata on that port; remove it unless the cell must reach exactly that"
                        );
                        found.push((at(i), true, msg));
                    }
                }
                for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.wildcard) {
                    match open_registration(&r.host) {
                        Ok(Some(rule)) => {
                            let msg = format!(
                                "\"{r}\" matches names anyone can register (the public suffix list has \"{rule}\"): \
                                 a cell could reach a host of anyone's choosing; list the exact names it needs"
                            );
                            found.push((at(i), true, msg));
                        }
                        Ok(None) => {}
                        Err(why) => {
                            let msg = format!("\"{r}\" was not compared with the public suffix list: {why}");
                            found.push((at(i), false, msg));
                        }
                    }
                }
                for (span, warning, msg) in found {
                    if warning {
                        self.warn(span, "network.egress", msg);
                    } else {
                        self.note(span, "network.egress", msg);
                    }
                }
            }
        }
    }

    /// A namespace switched off: what the cell then shares with the host.
    fn namespaces(&mut self) {
        let n = &self.c.raw.namespaces;
        let all: [(&Option<Spanned<bool>>, &str, &str, bool); 6] = [
            (&n.user, "user", "runs directly under its host ids, with no user namespace between it and the kernel's checks", true),
            (&n.pid, "pid", "sees every host process and its command line, and can signal those of its uid", true),
            (&n.mount, "mount", "sees the host's whole mount tree (only Landlock stands between it and every file) and has no private /tmp", true),
            (&n.ipc, "ipc", "shares the host's System V IPC objects and POSIX message queues", true),
            (&n.uts, "uts", "shares the host's hostname", false),
            (&n.cgroup, "cgroup", "sees the host's cgroup paths", false),
        ];
        for (v, name, what, warning) in all {
            let Some(v) = v.as_ref().filter(|v| !*v.get_ref()) else { continue };
            let msg = format!("false: the cell {what}; keep it true unless the provider cannot work otherwise");
            let key = format!("namespaces.{name}");
            if warning {
                self.warn(v.span(), &key, msg);
            } else {
                self.note(v.span(), &key, msg);
            }
        }
        if let Some(m) = self.c.raw.enforcement.mode.as_ref().filter(|m| m.get_ref() == "best_effort") {
            let msg = "\"best_effort\" launches the cell even where this kernel lacks a mechanism the policy \
                       relies on (Landlock, a seccomp feature, a cgroup controller), with less confinement than this \
                       file says; use \"required\""
                .to_owned();
            self.warn(m.span(), "enforcement.mode", msg);
        }
    }

    /// A cpu limit above this host's CPU count: never binds here, and is most often a percent
    /// (`100`) meant as a fraction.
    fn cpu(&mut self) {
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let (Some(v), Some(cpu)) = (&self.c.raw.limits.cpu, self.c.policy.limits.cpu) {
            if cpu > host as f64 {
                let msg = format!(
                    "{} is more CPUs than this host has ({host}): limits.cpu is a number of CPUs (0.5 = half a \
                     CPU, 2 = two CPUs), not a percent",
                    v.get_ref()
                );
                self.warn(v.span(), "limits.cpu", msg);
            }
        }
    }

    /// A size written as a bare number below 1 MiB: bytes, almost always meant as megabytes.
    fn sizes(&mut self) {
        let l = &self.c.raw.limits;
        for (v, key) in [
            (&l.file_size, "limits.file_size"),
            (&l.output_bytes, "limits.output_bytes"),
            (&l.tmp_size, "limits.tmp_size"),
            (&l.memory_swap, "limits.memory_swap"),
        ] {
            let Some(v) = v else { continue };
            let bare = match v.get_ref() {
                super::raw::Scalar::Int(n) => Some(*n),
                super::raw::Scalar::Str(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok(),
                _ => None,
            };
            if let Some(n @ 1..=1_048_575) = bare {
                let msg = format!(
                    "{n} is {n} bytes (a number without a unit is bytes); write it with a unit if more was meant \
                     (e.g. \"{n}K\" or \"{n}M\")"
                );
                self.warn(v.span(), key, msg);
            }
        }
    }

    fn seccomp(&mut self) {
        let s = &self.c.raw.seccomp;
        if let (Some(a), SeccompAction::Log) = (&s.default_action, self.c.policy.seccomp.default_action) {
            let msg = "\"log\" lets every call through: calls outside seccomp.allow are only logged by the kernel \
                       (audit mode, for finding the allow list); use \"errno\" once the list is complete"
                .to_owned();
            self.warn(a.span(), "seccomp.default_action", msg);
        }
        if let (Some(p), "none") = (&s.preset, self.c.policy.seccomp.preset.as_str()) {
            let msg = "\"none\" removes the default deny list (ptrace, bpf, mount, …); use preset = \"default\" \
                       and re-allow only the calls the provider needs in seccomp.allow"
                .to_owned();
            self.warn(p.span(), "seccomp.preset", msg);
        }
        let allowlist = self.c.policy.seccomp.default_action != SeccompAction::Allow;
        for name in items(&s.allow) {
            if !DEFAULT_DENY.contains(&name.get_ref().as_str()) {
                continue;
            }
            let how = if allowlist { "allows" } else { "re-allows" };
            let msg = format!(
                "\"{}\" {how} a call the default preset denies ({}); remove it unless the provider cannot work without it",
                name.get_ref(),
                danger(name.get_ref())
            );
            self.warn(name.span(), "seccomp.allow", msg);
        }
    }
}

/// The warning for a grant that covers a sensitive host directory, if it does.
fn broad(path: &Path, key: &str) -> Option<String> {
    match key {
        "filesystem.read" => {
            let what = if path == Path::new("/") {
                "read the whole host (other users' files, keys under /etc and /root)"
            } else if path == Path::new("/home") || path == Path::new("/root") {
                "read every file in it (other users' keys and shell history)"
            } else if within(path, Path::new("/run")) {
                // Landlock (to ABI 7) does not govern connect(2) on a socket file, and a
                // socket's own mode is often 0666: what the cell sees there, it can talk to.
                "connect to the host's UNIX sockets under it (D-Bus, journald, container \
                 runtimes: Landlock does not govern connecting to a socket file)"
            } else {
                return None;
            };
            Some(format!(
                "lets the cell {what}; list only what it needs (e.g. \"/usr\", \"/etc/ssl/certs\", \"{{cwd}}\")"
            ))
        }
        _ => {
            let right = if key == "filesystem.write" { "write to" } else { "run programs from" };
            let is_user_home = path.parent() == Some(Path::new("/home"));
            let candidates: Vec<(PathBuf, &str)> =
                sensitive().into_iter().filter(|(s, _)| key == "filesystem.write" || s != Path::new("/usr")).collect();
            // The grant covers a sensitive directory, or (except for `/` and `/home`, whose
            // subdirectories are ordinary grants) lies inside one: `/etc/sudoers`.
            let covers = candidates.iter().find(|(s, _)| within(s, path));
            let inside = candidates
                .iter()
                .filter(|(s, _)| s != Path::new("/") && s != Path::new("/home"))
                .find(|(s, _)| within(path, s));
            let what = match (covers, inside) {
                (Some((s, what)), _) if s == path => (*what).to_owned(),
                (Some((s, what)), _) => format!("{} ({what})", s.display()),
                (None, Some((s, what))) => format!("a path inside {} ({what})", s.display()),
                (None, None) if is_user_home => "a user's whole home (ssh keys, shell start-up files)".to_owned(),
                (None, None) => return None,
            };
            Some(format!(
                "lets the cell {right} {what}; grant \"{{cwd}}\" and \"{{tmp}}\", or the one directory it needs"
            ))
        }
    }
}

/// Debian's copy of the public suffix list (package `publicsuffix`).
pub const PUBLIC_SUFFIX_LIST: &str = "/usr/share/publicsuffix/public_suffix_list.dat";

/// A rule of the public suffix list at or beneath `host` (`github.io` for `*.github.io`,
/// `*.compute.amazonaws.com` for `*.amazonaws.com`), or a list wildcard that makes `host`
/// itself a suffix (`*.digitaloceanspaces.com` for `*.nyc3.digitaloceanspaces.com`), if there
/// is one: a wildcard over `host` then matches names anyone can register. `Err`: the list cannot be read. (The
/// `publicsuffix` crate answers "what is this name's suffix", not "is there a suffix beneath
/// this one", so the list's plain format — a rule per line, `//` comments, `*.` and `!`
/// prefixes — is scanned here.)
fn open_registration(host: &str) -> Result<Option<String>, String> {
    static LIST: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let list = LIST
        .get_or_init(|| {
            std::fs::read_to_string(PUBLIC_SUFFIX_LIST)
                .map_err(|e| format!("{PUBLIC_SUFFIX_LIST}: {e} (Debian: apt install publicsuffix)"))
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let host = host.to_ascii_lowercase();
    let beneath = format!(".{host}");
    // `host` one label beneath `name` (`x.name`), for a rule `*.name`.
    let one_below =
        |name: &str| host.strip_suffix(name).and_then(|h| h.strip_suffix('.')).is_some_and(|l| !l.contains('.'));
    let found =
        list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('!')).find(
            |rule| {
                let name = rule.trim_start_matches("*.").to_ascii_lowercase();
                name == host || name.ends_with(&beneath) || (rule.starts_with("*.") && one_below(&name))
            },
        );
    Ok(found.map(str::to_owned))
}

/// What a variable that makes a program load or run code of the caller's choosing lets the
/// caller do, if `name` is one.
fn code_loading_variable(name: &str) -> Option<&'static str> {
    let what = match name {
        n if n.starts_with("LD_") => "make the dynamic linker load code of its choosing into the program",
        "NODE_OPTIONS" => "make Node load code of its choosing (--require, --import) or change its flags",
        "NODE_PATH" => "make Node resolve modules from directories of its choosing",
        "BASH_ENV" | "ENV" => "make every non-interactive shell run a file of its choosing",
        n if n.starts_with("BASH_FUNC_") => "define shell functions that every bash in the cell runs",
        n if n.starts_with("GIT_CONFIG") => "set any git option (core.sshCommand, core.fsmonitor: programs git runs)",
        "PYTHONPATH" | "PYTHONSTARTUP" | "PYTHONHOME" | "PYTHONINSPECT" | "PYTHONWARNINGS" => {
            "make Python import or run code of its choosing"
        }
        "HOME" | "XDG_CONFIG_HOME" | "ZDOTDIR" | "INPUTRC" => {
            "choose the start-up and configuration files the tools in the cell read"
        }
        "PERL5OPT" | "PERL5LIB" | "PERLLIB" | "RUBYOPT" | "RUBYLIB" | "JAVA_TOOL_OPTIONS" | "_JAVA_OPTIONS" => {
            "make an interpreter load code of its choosing"
        }
        "GCONV_PATH" | "GIT_SSH_COMMAND" | "GIT_SSH" | "GIT_EXEC_PATH" | "GIT_PROXY_COMMAND" | "GIT_ASKPASS"
        | "SSH_ASKPASS" | "EDITOR" | "VISUAL" | "PAGER" | "GIT_PAGER" | "GIT_EDITOR" => {
            "choose a program or module the tools in the cell run"
        }
        _ => return None,
    };
    Some(what)
}

/// What a call the default preset denies can do, in a few words.
fn danger(name: &str) -> &'static str {
    match name {
        "ptrace" | "process_vm_readv" | "process_vm_writev" => "it reads and controls other processes",
        "bpf" | "perf_event_open" => "it loads programs into or probes the kernel",
        "mount" | "umount2" | "pivot_root" | "move_mount" | "open_tree" | "fsopen" | "fsmount" | "fsconfig"
        | "fspick" | "mount_setattr" => "it changes the mount view the sandbox relies on",
        "unshare" | "setns" => "it creates or enters namespaces, a common kernel attack path",
        "io_uring_setup" | "io_uring_enter" | "io_uring_register" => {
            "io_uring does I/O that seccomp cannot see; every cell gets ENOSYS from io_uring_setup anyway"
        }
        "kexec_load" | "kexec_file_load" | "init_module" | "finit_module" | "delete_module" | "reboot" => {
            "it changes or replaces the running kernel"
        }
        "keyctl" | "add_key" | "request_key" => "it reaches the kernel keyrings",
        "userfaultfd" => "it is a frequent ingredient of kernel exploits",
        "name_to_handle_at" | "open_by_handle_at" => "it opens files by handle, around path checks",
        _ => "a sandbox-escape or host-tampering route",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broad_grants_cover_or_sit_inside_system_directories() {
        let w = |p: &str| broad(Path::new(p), "filesystem.write");
        let x = |p: &str| broad(Path::new(p), "filesystem.exec");
        let r = |p: &str| broad(Path::new(p), "filesystem.read");
        assert!(w("/").is_some() && w("/etc").is_some() && w("/etc/cron.d").is_some() && w("/usr/local").is_some());
        assert!(w("/run").is_some() && w("/home").is_some() && w("/home/alice").is_some());
        assert_eq!(w("/home/alice/.cache"), None);
        assert_eq!(w("/srv/data"), None);
        assert_eq!(w("/dev/null"), None);
        assert_eq!(x("/usr"), None, "exec on /usr is how programs run");
        assert!(x("/proc").is_some() && x("/").is_some());
        assert!(r("/").is_some() && r("/home").is_some());
        assert_eq!(r("/etc"), None);
    }
}
