//! Session I/O: the reply framer (where one command's answer ends on a session's stdout) and
//! the per-cell output spool (bounded history of stdout/stderr with live fan-out to readers).
//!
//! Both are fed by the pool's pumps; the spool keeps its bytes in a file per cell (`store`). The
//! framer replaces the old manager's "100 ms of silence means done" with the policy's exact
//! rule: one line, a sentinel line, a line matching a regex, or a JSON line whose field has a
//! given value.

mod framer;
mod spool;
mod store;

pub use framer::{Framer, Reply};
pub use spool::{utf8_cut_tail, OutputEvent, Spool, Stream, Subscription};
pub use store::{sweep as sweep_spool_dir, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session framing regex {pattern:?} does not compile: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("session reply exceeds {limit} bytes without its end marker; the partial reply was dropped")]
    ReplyTooLarge { limit: usize },
}
