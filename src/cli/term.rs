//! `cellkeep run` on a terminal: the caller's terminal is never handed to the cell.
//!
//! When stdin, stdout or stderr is a terminal, the cell gets a pseudo-terminal of its own,
//! started as a copy of the caller's (modes and window size; [`TermSpec`]), and this module
//! relays between the two, as `ssh -t` and `docker run -t` do:
//!
//! - the caller's terminal (stdin, when it is one) goes to raw mode for the run, so every key
//!   (Ctrl-C, Ctrl-Z, …) reaches the cell's terminal, whose line discipline turns it into the
//!   signal or edit the program inside expects; [`RawGuard`] restores the saved modes on every
//!   way out of `run` (normal end, error, panic unwinding; SIGINT/SIGTERM/SIGHUP are caught and
//!   forwarded into the cell, so they end the run through the normal path);
//! - stdin's bytes go to the cell's terminal; a stdin that is not a terminal ends with the
//!   terminal's end-of-file character (VEOF), as typing Ctrl-D would;
//! - the cell's terminal output goes to stdout (stdout and stderr share one terminal inside);
//! - SIGWINCH copies the caller's window size to the cell's terminal.
//!
//! Whatever the cell does to its terminal (modes, window size, `TIOCEXCL`, …) stays on its own
//! pty; the caller's terminal sees only bytes.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::sandbox::pty::PtyMaster;
use crate::sandbox::{sys, CellIo, TermSpec};

/// One of the caller's standard streams.
#[derive(Debug)]
pub(super) enum Std {
    In(std::io::Stdin),
    Out(std::io::Stdout),
    Err(std::io::Stderr),
}

impl AsFd for Std {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Std::In(s) => s.as_fd(),
            Std::Out(s) => s.as_fd(),
            Std::Err(s) => s.as_fd(),
        }
    }
}

/// Which of the caller's stdin (0), stdout (1) and stderr (2) is a terminal, first found; the
/// cell's own terminal starts as a copy of that one.
pub(super) fn caller_terminal() -> Option<(Std, TermSpec)> {
    let all = [Std::In(std::io::stdin()), Std::Out(std::io::stdout()), Std::Err(std::io::stderr())];
    all.into_iter().find_map(|s| {
        if !nix::unistd::isatty(s.as_fd()).unwrap_or(false) {
            return None;
        }
        TermSpec::of(&s).ok().map(|spec| (s, spec))
    })
}

/// The caller's stdin terminal in raw mode until dropped; then its saved modes are restored.
pub(super) struct RawGuard {
    saved: Option<Termios>,
}

impl RawGuard {
    /// Raw mode on stdin if it is a terminal (else nothing to restore).
    pub(super) fn stdin() -> RawGuard {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return RawGuard { saved: None };
        }
        let Ok(saved) = tcgetattr(stdin.as_fd()) else { return RawGuard { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).is_err() {
            return RawGuard { saved: None };
        }
        RawGuard { saved: Some(saved) }
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // TCSADRAIN: what the cell wrote is shown in the mode it was written for.
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

/// The running relay: output and window-size tasks (the stdin reader is a plain thread,
/// blocked in `read`, left behind when the run ends).
pub(super) struct Relay {
    output: JoinHandle<()>,
    winch: JoinHandle<()>,
}

impl Relay {
    /// Start relaying between the caller's stdio and the cell's terminal. `sized_from` is the
    /// caller's terminal whose window size the cell's follows.
    pub(super) fn start(io: CellIo, master: PtyMaster, sized_from: Std, eof: u8) -> Relay {
        let CellIo { stdin, stdout, .. } = io;
        if let Some(mut input) = stdin {
            // A thread, not tokio's stdin: its blocking read must not hold the runtime's
            // shutdown when the cell has ended and the caller types nothing more.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
            std::thread::spawn(move || read_stdin(&tx, eof));
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if input.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
        }
        let output = tokio::spawn(async move {
            let Some(mut out) = stdout else { return };
            let mut buf = vec![0u8; 64 * 1024];
            let mut stdout = tokio::io::stdout();
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 || stdout.write_all(&buf[..n]).await.is_err() || stdout.flush().await.is_err() {
                    break;
                }
            }
        });
        let winch = tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut changes) = signal(SignalKind::window_change()) else { return };
            while changes.recv().await.is_some() {
                if let Ok((rows, cols)) = sys::window_size(&sized_from) {
                    let _ = master.resize(rows, cols);
                }
            }
        });
        Relay { output, winch }
    }

    /// Wait (bounded) until the cell's terminal output is all written: every holder of the
    /// terminal's slave is in the ended cell, so its end of file comes right after.
    pub(super) async fn finish(self) {
        self.winch.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.output).await;
    }
}

/// Copy stdin into the channel; at end of file send the terminal's EOF character (when stdin
/// is not itself a terminal: a terminal's own Ctrl-D arrives as a byte already).
fn read_stdin(tx: &tokio::sync::mpsc::Sender<Vec<u8>>, eof: u8) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => {
                let _ = tx.blocking_send(vec![eof]);
                return;
            }
            Ok(n) => {
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
