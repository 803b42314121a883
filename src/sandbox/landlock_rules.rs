//! Landlock: the plan's path and port lists → a ruleset, enforced on the calling (payload)
//! thread. Runs in the payload after the mounts, because rules bind to the inodes the paths
//! resolve to in the cell's final mount view (a fresh tmpfs has new inodes).
//!
//! The ruleset is built at exactly the ABI the launcher checked (`plan.abi`) with
//! `HardRequirement`, so any right the kernel cannot enforce fails the launch instead of
//! being dropped silently; degradations were decided and reported by the launcher.
//!
//! Rights: `read` = read files + list dirs; `write` = read + every write right of the ABI
//! (create, remove, truncate, device ioctls); `exec` = execute + read (the dynamic loader maps
//! libraries by reading them). A listed path that does not exist is skipped.

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetError, Scope, ABI,
};

use super::plan::LandlockPlan;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    #[error("landlock rule for {path}: {source}")]
    Path { path: String, source: landlock::PathFdError },
}

impl LandlockError {
    pub fn errno(&self) -> i32 {
        match self {
            LandlockError::Path { .. } => libc::ENOENT,
            LandlockError::Ruleset(_) => libc::EPERM,
        }
    }
}

fn add_paths(
    abi: ABI,
    mut created: landlock::RulesetCreated,
    paths: &[std::path::PathBuf],
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, LandlockError> {
    for path in paths {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(_) if !path.exists() => continue,
            Err(source) => return Err(LandlockError::Path { path: path.display().to_string(), source }),
        };
        let rights = if path.is_dir() { access } else { access & AccessFs::from_file(abi) };
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
    if plan.tcp.is_some() {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    if plan.scope {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut created = ruleset.create()?.no_new_privs(false);
    created = add_paths(abi, created, &plan.read, read)?;
    created = add_paths(abi, created, &plan.write, write)?;
    created = add_paths(abi, created, &plan.exec, exec)?;
    if let Some(tcp) = &plan.tcp {
        for port in &tcp.connect {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
        for port in &tcp.bind {
            created = created.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
        }
    }
    created.restrict_self()?;
    Ok(())
}
