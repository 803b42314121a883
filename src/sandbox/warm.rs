//! Cells built before their request (`[pool] prewarm = N`), the launcher's side.
//!
//! [`Launcher::prewarm`] builds a cell as far as it can go without a request — cgroup and
//! limits, the cell's own host id, helper, user namespace, pid 1 in its other namespaces,
//! `lo`, hostname, the egress proxy's listener, the host part of the mount view — and leaves
//! it waiting ([`WarmCell`]). [`Launcher::activate`] plans the request against the policy as a
//! cold launch would, checks that the cell fits it ([`plan::fits`]: the same identity,
//! namespaces, network and terminal, a view that only adds the cwd's binds on top), and sends
//! the plan: the helper makes the idmapped workspace, pid 1 finishes the view and starts the
//! payload with the request's Landlock rules and seccomp. What does not fit, or fails on the
//! way, is launched cold by the pool; nothing of a pre-built cell is ever used twice —
//! [`Launcher::activate`] consumes it, and its helper and pid 1 read exactly one request.

use std::time::Instant;

use crate::policy::Policy;

use super::launch::{Cell, Launcher, StdioMode, Want};
use super::plan::{self, LaunchPlan, LaunchRequest};
use super::SandboxError;

/// A cell built ahead, waiting for its one request. Holds its cgroup, id lease and
/// processes until it is activated or retired.
#[derive(Debug)]
pub struct WarmCell {
    cell: Cell,
    plan: LaunchPlan,
    /// Built with a stdin pipe (sessions, one-shots that take input) or /dev/null.
    pub stdin: bool,
    pub built: Instant,
}

/// Why [`Launcher::activate`] did not start a payload.
#[derive(Debug)]
pub enum Activation {
    /// The request itself is wrong (cwd, command, …): the cold launch would refuse it too.
    /// The cell is untouched.
    Refused(SandboxError, WarmCell),
    /// The request needs something the cell was not built with (another identity, a view
    /// whose cwd binds would cover its own mounts): launch it cold. The cell is untouched.
    Unfit(String, WarmCell),
    /// The cell failed while taking the request; it is gone (killed, cgroup removed).
    Failed(SandboxError),
}

impl WarmCell {
    pub fn id(&self) -> &str {
        &self.cell.id
    }

    /// Kill it and remove its cgroup (reload, age, the cap, shutdown).
    pub async fn retire(self) {
        self.cell.discard().await;
    }
}

impl Launcher {
    /// Build a cell of `policy` up to its request (see the module doc). `stdin`: with a stdin
    /// pipe (else /dev/null).
    pub async fn prewarm(&self, policy: &Policy, cell_id: String, stdin: bool) -> Result<WarmCell, SandboxError> {
        let stdio = if stdin { StdioMode::Piped } else { StdioMode::NullInPiped };
        let (mut cell, plan) = self.start(policy, Want::Warm { cell_id: cell_id.clone() }, stdio).await?;
        let Some(plan) = plan else {
            cell.discard().await;
            return Err(SandboxError::HelperDied { cell: cell_id, detail: "no plan kept for a pre-built cell".into() });
        };
        match cell.await_stage(true).await {
            Ok(()) => Ok(WarmCell { cell, plan, stdin, built: Instant::now() }),
            Err(e) => {
                cell.discard().await;
                Err(e)
            }
        }
    }

    /// Give `warm` its request (its cell id is the warm cell's), and return once the payload
    /// exec'd. The wall clock of the cell starts now.
    pub async fn activate(&self, warm: WarmCell, policy: &Policy, mut req: LaunchRequest) -> Result<Cell, Activation> {
        use tokio::io::AsyncWriteExt;
        req.cell_id = warm.cell.id.clone();
        req.range_uid = warm.cell.id_lease.as_ref().map(|l| l.uid());
        if policy.command.is_empty() && req.args.is_empty() {
            return Err(Activation::Refused(SandboxError::NoCommand { provider: policy.name.clone() }, warm));
        }
        // Tests only (debug builds): hold an activation here until the FIFO named by
        // CELLKEEP_TEST_ACTIVATION_GATE gets a writer, so a test can begin a shutdown while a
        // launch holds a pre-built cell (tests/prewarm.rs).
        #[cfg(debug_assertions)]
        if let Some(gate) = std::env::var_os("CELLKEEP_TEST_ACTIVATION_GATE") {
            let _ = tokio::task::spawn_blocking(move || std::fs::File::open(gate)).await;
        }
        let (mut plan, degraded) = match plan::build(policy, &req, self.host()) {
            Ok(planned) => planned,
            Err(e) => return Err(Activation::Refused(e, warm)),
        };
        plan.tty = warm.plan.tty;
        if let Err(why) = plan::fits(&warm.plan, &plan) {
            return Err(Activation::Unfit(why, warm));
        }
        // A workspace that cannot be idmapped makes a `fallback_owner` cell run as the
        // workspace's owner: not the identity this cell was built with. Predicted from the
        // filesystem (a wrong guess fails the activation, and the request runs cold anyway).
        if let Some(idm) = &plan.idmap {
            if idm.fallback == plan::IdmapFallback::Owner {
                if let Err(why) = plan::idmap_prediction(&plan.cwd) {
                    let why = format!("the workspace cannot be idmapped ({why}): its cell runs as its owner");
                    return Err(Activation::Unfit(why, warm));
                }
            }
        }
        let WarmCell { mut cell, .. } = warm;
        // Its proxy was started before its caller was known: its name lookups are the
        // caller's from now on (they draw on the caller's share, not on one all pre-built
        // cells shared).
        if let Some(egress) = &cell.egress {
            egress.assign_caller(req.caller_uid);
        }
        let sent = match serde_json::to_vec(&plan) {
            Ok(mut line) => {
                line.push(b'\n');
                cell.reports.get_mut().get_mut().write_all(&line).await
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        let activated = match sent {
            Ok(()) => {
                cell.degraded.extend(degraded);
                cell.started = Instant::now();
                cell.await_stage(false).await
            }
            Err(e) => {
                Err(SandboxError::HelperDied { cell: cell.id.clone(), detail: format!("sending the request: {e}") })
            }
        };
        match activated {
            Ok(()) => Ok(cell),
            Err(e) => {
                cell.discard().await;
                Err(Activation::Failed(e))
            }
        }
    }
}
