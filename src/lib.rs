//! cellkeep: a Linux sandbox supervisor.
#![deny(unsafe_code)]
pub mod cgroup;
pub mod policy;
