//! The top-level error: module errors composed, each with a stable wire code.

use crate::{cgroup::CgroupError, policy::PolicyError, sandbox::SandboxError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl Error {
    /// Stable machine-readable code (the API's `code` field).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Policy(_) => "policy",
            Error::Sandbox(SandboxError::Cwd { .. }) => "bad_request",
            Error::Sandbox(
                SandboxError::Binary { .. } | SandboxError::NoCommand { .. } | SandboxError::OptionArgument { .. },
            ) => "bad_request",
            Error::Sandbox(SandboxError::Unsupported { .. } | SandboxError::HostRoot { .. }) => "policy",
            Error::Sandbox(SandboxError::Abstract { .. }) => "policy",
            Error::Sandbox(_) | Error::Cgroup(_) => "internal",
        }
    }
}
