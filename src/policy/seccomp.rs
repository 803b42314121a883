//! Seccomp: policy rules → BPF programs (compiled once, at policy load).
use serde::{Deserialize, Serialize};

/// One classic-BPF instruction (`struct sock_filter`), as plain data for the launch plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Filters to install in order (the kernel applies the strictest verdict of all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledSeccomp {
    pub filters: Vec<Vec<BpfInsn>>,
}
