//! Host account lookups for policies: user names or uids, group names or gids.
//!
//! Names are resolved once, when the policy is loaded (through NSS: /etc/passwd and
//! /etc/group on this host); an unknown name is a policy error, and uid 0 is refused
//! wherever a policy names the account the payload runs as.

use nix::unistd::{Group, User};

use super::model::UserId;
use super::raw::Scalar;

/// A user name or uid → uid and primary gid. Uid 0 (host root) is always refused.
pub fn resolve_user(v: &Scalar) -> Result<UserId, String> {
    let user = match v {
        Scalar::Str(name) => User::from_name(name)
            .map_err(|e| format!("cannot look up user \"{name}\": {e}"))?
            .map(|u| UserId { uid: u.uid.as_raw(), gid: u.gid.as_raw() })
            .ok_or_else(|| format!("unknown user \"{name}\" (not in /etc/passwd)"))?,
        Scalar::Int(n) => {
            let uid = u32::try_from(*n).map_err(|_| format!("{n} is not a uid"))?;
            let gid = User::from_uid(uid.into()).ok().flatten().map_or(uid, |u| u.gid.as_raw());
            UserId { uid, gid }
        }
        Scalar::Float(x) => return Err(format!("{x} is not a user name or uid")),
    };
    if user.uid == 0 {
        return Err(format!("{v} is host root (uid 0); a sandbox never runs as host root"));
    }
    if user.uid == u32::MAX || user.gid == u32::MAX {
        return Err(format!(
            "{v} is (uid_t) -1, which setresuid(2) reads as \"no change\": the program would stay host root"
        ));
    }
    Ok(user)
}

/// A group name (looked up in /etc/group) or a numeric gid.
pub fn resolve_group(v: &Scalar) -> Result<u32, String> {
    match v {
        Scalar::Str(name) => Group::from_name(name)
            .map_err(|e| format!("cannot look up group \"{name}\": {e}"))?
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| format!("unknown group \"{name}\" (not in /etc/group)")),
        Scalar::Int(n) => u32::try_from(*n)
            .ok()
            .filter(|g| *g != u32::MAX)
            .ok_or_else(|| format!("{n} is not a gid (0 to 4294967294)")),
        Scalar::Float(x) => Err(format!("{x} is not a group name or gid")),
    }
}
