//! Provider policies: TOML files under `policies/` → validated [`Policy`] values.
pub mod model;
pub mod seccomp;
pub use model::*;
