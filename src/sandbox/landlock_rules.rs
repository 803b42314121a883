//! Landlock: the plan's path lists and scopes → a ruleset, enforced on the calling (payload)
//! thread. Runs in the payload after the mounts, because rules bind to the inodes the paths
//! resolve to in the cell's final mount view (a fresh tmpfs has new inodes).
//!
//! The ruleset is built at exactly the ABI the launcher checked (`plan.abi`) with
//! `HardRequirement`, so any right the kernel cannot enforce fails the launch instead of
//! being dropped silently; degradations were decided and reported by the launcher.
//!
//! No TCP rules: the network is confined by the cell's own network namespace (Landlock's TCP
//! rules had gaps: MPTCP, `MSG_FASTOPEN`, autobind on `listen`, no UDP).
//!
//! Rights: `read` = read files + list dirs; `write` = read + every write right of the ABI
//! (create, remove, truncate, device ioctls); `exec` = execute + read (the dynamic loader maps
//! libraries by reading them). A listed path that does not exist is skipped.
//!
//! Paths beneath the cwd are opened through no symlink (`openat2` RESOLVE_NO_SYMLINKS): the
//! workspace is writable by cells, so a symlink planted there (`{cwd}/out` → a home directory)
//! would otherwise carry the rule's rights outside it. Meeting one fails the launch, naming
//! the path. The policy's own absolute paths are followed as written (`/lib` → `/usr/lib`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, Scope, ABI,
};

use super::plan::LandlockPlan;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    #[error("landlock rule for {path}: {source}")]
    Path { path: String, source: std::io::Error },
    #[error("landlock rule for {path}: a symlink in its path (under the cwd, rules are not carried through symlinks)")]
    Symlink { path: String },
}

impl LandlockError {
    pub fn errno(&self) -> i32 {
        match self {
            LandlockError::Path { source, .. } => source.raw_os_error().unwrap_or(libc::ENOENT),
            LandlockError::Symlink { .. } => libc::ELOOP,
            LandlockError::Ruleset(_) => libc::EPERM,
        }
    }
}

/// The rule's anchor: `None` when the path does not exist (the rule is skipped).
fn open_rule_path(path: &Path, cwd: &Path) -> Result<Option<OwnedFd>, LandlockError> {
    let named = |source: std::io::Error| LandlockError::Path { path: path.display().to_string(), source };
    if path.starts_with(cwd) {
        match super::sys::open_no_symlinks(path, false) {
            Ok(fd) => Ok(Some(fd)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(nix::errno::Errno::ELOOP) => Err(LandlockError::Symlink { path: path.display().to_string() }),
            Err(e) => Err(named(e.into())),
        }
    } else {
        // What landlock's PathFd does: O_PATH, following symlinks.
        let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
        match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(_) if !path.exists() => Ok(None),
            Err(e) => Err(named(e.into())),
        }
    }
}

fn add_paths(
    abi: ABI,
    mut created: landlock::RulesetCreated,
    paths: &[PathBuf],
    cwd: &Path,
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, LandlockError> {
    for path in paths {
        let Some(fd) = open_rule_path(path, cwd)? else { continue };
        // What the fd is, not what the path says now.
        let is_dir = nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let rights = if is_dir { access } else { access & AccessFs::from_file(abi) };
        created = created.add_rule(PathBeneath::new(fd, rights))?;
    }
    Ok(created)
}

/// Build the ruleset and restrict the calling thread (which is the whole single-threaded
/// payload). `no_new_privs` was already set by the recipe.
pub fn restrict_self(plan: &LandlockPlan) -> Result<(), LandlockError> {
    let abi = ABI::from(plan.abi);
    let all = AccessFs::from_all(abi);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = all & !AccessFs::Execute;
    let exec = read | AccessFs::Execute;

    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::HardRequirement).handle_access(all)?;
    if plan.scope {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut created = ruleset.create()?.no_new_privs(false);
    created = add_paths(abi, created, &plan.read, &plan.cwd, read)?;
    created = add_paths(abi, created, &plan.write, &plan.cwd, write)?;
    created = add_paths(abi, created, &plan.exec, &plan.cwd, exec)?;
    created.restrict_self()?;
    Ok(())
}
