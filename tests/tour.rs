//! The README's quick tour, its `curl` block and its Python example, run verbatim (issue 15,
//! finding 5) as a non-root member of the `cellkeep` group, against a daemon of the test's own
//! with the shipped policies and the shipped socket permissions (0660, group `cellkeep`).
//!
//! The blocks are read from README.md itself, so the README cannot drift from what works. The
//! one substitution: the socket path `/run/cellkeep/cellkeep.sock` becomes the test daemon's
//! (the CLI gets it through `CELLKEEP_SOCKET`). `cellkeep` is on the user's PATH, as
//! `/usr/local/bin` is after `install.sh`; HOME is a fresh directory under /home owned by the
//! user, where the tour makes `~/proj`. Before the fix: `cellkeep` was not on PATH after the
//! set-up command, `~/proj` was outside root's roots, `/srv/ws` did not exist, the shipped
//! policies refused the group, and the Python example blocked on `follow` for 300 s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: failing loudly is the point

mod common;
mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{privileged, BIN};
use harness::Daemon;

const MEMBER: u32 = 61236;
const OUTSIDER: u32 = 61237;
const SHIPPED_SOCKET: &str = "/run/cellkeep/cellkeep.sock";

/// The first fenced block with `lang` after the line `heading` in README.md.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let at = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[at..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).unwrap_or_else(|| panic!("no ```{lang} block after {heading:?}")) + open.len();
    let len = rest[start..].find("```\n").expect("closing fence");
    rest[start..start + len].to_owned()
}

struct User {
    home: tempfile::TempDir,
    bin: tempfile::TempDir,
    socket: std::path::PathBuf,
}

impl User {
    /// `program args…` as the member (supplementary group `cellkeep`), in its home, with a
    /// login-like environment; at most `secs` seconds.
    fn run(&self, uid: u32, groups: &str, secs: u32, program: &str, args: &[&str]) -> Output {
        let groups = if groups.is_empty() {
            vec!["--clear-groups".to_owned()]
        } else {
            vec!["--groups".to_owned(), groups.to_owned()]
        };
        Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
            .args(&groups)
            .args(["--", "timeout", &secs.to_string(), program])
            .args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("USER", "cktour")
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.path().display()))
            .env("CELLKEEP_SOCKET", &self.socket)
            .env("LANG", "C.UTF-8")
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .output()
            .expect("setpriv")
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_readme_tour_runs_verbatim_for_a_member_of_the_cellkeep_group() {
    if !privileged("the_readme_tour_runs_verbatim_for_a_member_of_the_cellkeep_group") {
        return;
    }
    let gid = nix::unistd::Group::from_name("cellkeep")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw().to_string())
        .expect("group cellkeep (scripts/install.sh and scripts/test.sh create it)");
    let d =
        Daemon::builder().shipped_policies().socket_mode(Some("0660")).config("socket_group = \"cellkeep\"").start();
    // A home under /home, as on a build host (the VM's read-only root has none to give: /tmp,
    // also a workdir root of the shipped policies, stands in).
    let home = tempfile::Builder::new()
        .prefix("ck-tour-")
        .tempdir_in("/home")
        .or_else(|_| tempfile::Builder::new().prefix("ck-tour-home-").tempdir())
        .expect("a home directory");
    std::os::unix::fs::chown(home.path(), Some(MEMBER), Some(MEMBER)).expect("chown home");
    std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod home");
    // `cellkeep` on PATH, as /usr/local/bin/cellkeep is after install.sh.
    let bin = tempfile::Builder::new().prefix("ck-tour-bin-").tempdir().expect("bin dir");
    std::fs::set_permissions(bin.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod bin");
    std::os::unix::fs::symlink(BIN, bin.path().join("cellkeep")).expect("link cellkeep");
    let user = User { home, bin, socket: d.socket.clone() };
    let sock = d.socket.display().to_string();

    // The quick tour.
    let tour = readme_block("## Quick tour", "sh");
    let o = user.run(MEMBER, &gid, 120, "bash", &["-euo", "pipefail", "-c", &tour]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "the tour failed:\n{tour}\n{}", text(&o));
    for want in ["Hello; rm -rf /", "first line", "terminated", "providers:"] {
        assert!(out.contains(want), "tour output lacks {want:?}:\n{}", text(&o));
    }
    // The workspace the tour made is the user's, and so is what ran in it.
    let meta = std::fs::metadata(user.home.path().join("proj")).expect("~/proj");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), MEMBER);

    // The curl block.
    let curl = readme_block("### The API", "sh").replace(SHIPPED_SOCKET, &sock);
    let o = user.run(MEMBER, &gid, 60, "bash", &["-euo", "pipefail", "-c", &curl]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "the curl block failed:\n{curl}\n{}", text(&o));
    assert!(out.contains("\"stdout\":\"hello\"") && out.contains("{\"type\":\"end\"}"), "{}", text(&o));

    // The Python example: it must end (before: blocked on follow until the idle reaper).
    let python = readme_block("### The API", "python").replace(SHIPPED_SOCKET, &sock);
    let has_httpx = Command::new("/usr/bin/python3").args(["-c", "import httpx"]).status().is_ok_and(|s| s.success());
    if !has_httpx {
        assert!(std::env::var_os("CI").is_none(), "python3-httpx is not installed (.ci/run installs it)");
        eprintln!("SKIP the Python example: no httpx for /usr/bin/python3 (apt-get install python3-httpx)");
    } else {
        let o = user.run(MEMBER, &gid, 60, "/usr/bin/python3", &["-c", &python]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(0), "the Python example failed (124: it blocked):\n{python}\n{}", text(&o));
        assert!(out.contains("'stdout': 'hi\\n'") && out.contains("'stdout': 'hello'"), "{}", text(&o));
    }

    // Someone outside the group cannot even connect (socket 0660 root:cellkeep).
    let o = user.run(OUTSIDER, "", 30, "cellkeep", &["ps"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(Path::new(&sock).exists());
}
