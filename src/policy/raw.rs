//! The serde mirror of a policy file, exactly as written: no defaults, no checks, no logic.
//!
//! Every key is optional here (a file may inherit it through `extends`) and wrapped in
//! [`Spanned`] so that `validate` can point at the line and column that set it. Unknown keys
//! are rejected by `deny_unknown_fields` on every table. Values whose meaning depends on their
//! form (sizes, durations, user names or ids) are kept as a [`Scalar`] and interpreted by
//! `validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A spanned optional value: the common shape of every key.
pub type Opt<T> = Option<Spanned<T>>;
/// A spanned list whose elements carry their own positions.
pub type OptList<T> = Option<Spanned<Vec<Spanned<T>>>>;

/// One policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub extends: Opt<String>,
    #[serde(default)]
    pub provider: RawProvider,
    /// `None`: the file has no `[access]` table. A table, even empty, replaces the parent's
    /// whole (`access` is one rule: who may use the provider).
    #[serde(default)]
    pub access: Option<RawAccess>,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub environment: RawEnvironment,
    #[serde(default)]
    pub workdir: RawWorkdir,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub namespaces: RawNamespaces,
    #[serde(default)]
    pub filesystem: RawFilesystem,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub seccomp: RawSeccomp,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub enforcement: RawEnforcement,
    #[serde(default)]
    pub pool: RawPool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: Opt<String>,
    pub description: Opt<String>,
    #[serde(rename = "abstract")]
    pub is_abstract: Opt<bool>,
    pub command: OptList<String>,
    pub command_after: Opt<String>,
    pub command_format: Opt<String>,
    pub command_via: Opt<String>,
    pub mode: Opt<String>,
    pub tty: Opt<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub uids: OptList<u32>,
    pub groups: OptList<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub run_as: Opt<Scalar>,
    pub root_maps_to: Opt<Scalar>,
    pub uid_range: OptList<i64>,
    pub inside: Opt<String>,
    pub workspace_idmap: Opt<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub pass: OptList<String>,
    /// Merged name by name across `extends`, unlike every other key.
    pub set: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkdir {
    pub roots: OptList<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub memory_max: Opt<Scalar>,
    pub memory_high: Opt<Scalar>,
    pub memory_swap: Opt<Scalar>,
    pub cpu: Opt<Scalar>,
    pub pids: Opt<i64>,
    pub open_files: Opt<i64>,
    pub file_size: Opt<Scalar>,
    pub wall_time: Opt<Scalar>,
    pub idle_timeout: Opt<Scalar>,
    pub output_bytes: Opt<Scalar>,
    pub tmp_size: Opt<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespaces {
    pub user: Opt<bool>,
    pub pid: Opt<bool>,
    pub mount: Opt<bool>,
    pub net: Opt<bool>,
    pub ipc: Opt<bool>,
    pub uts: Opt<bool>,
    pub cgroup: Opt<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    pub read: OptList<String>,
    pub write: OptList<String>,
    pub exec: OptList<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub mode: Opt<String>,
    /// A list of names, or the word `"learn"` (checked by `validate`).
    pub egress: Opt<toml::Value>,
    /// Removed with `mode = "tcp"`; kept here only to say so with a position.
    pub connect: OptList<i64>,
    pub bind: OptList<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeccomp {
    pub preset: Opt<String>,
    pub default_action: Opt<String>,
    pub deny: OptList<String>,
    pub deny_action: Opt<String>,
    pub allow: OptList<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub framing: Opt<String>,
    pub sentinel: Opt<String>,
    pub pattern: Opt<String>,
    pub field: Opt<String>,
    pub equals: Opt<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub prewarm: Opt<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnforcement {
    pub mode: Opt<String>,
}

/// A value that may be written as a string or a number (`"512M"` or `536870912`,
/// `"nobody"` or `65534`, `"30s"` or `30`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v).map(Scalar::Int).map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}
