//! Pseudo-terminals for `[provider] tty = true`.
//!
//! The launcher opens a pair before it spawns the helper ([`open`]): the slave becomes the
//! helper's stdin, stdout and stderr (inherited by pid 1 and the payload, which makes it its
//! controlling terminal after `setsid`), and the launcher keeps the master as a [`PtyMaster`]:
//! an `AsyncFd` on the non-blocking master, readable and writable from tokio.
//!
//! A terminal the daemon drives is in raw mode (`cfmakeraw`): no echo, no line editing, no
//! `\n` → `\r\n` translation, no signal characters. A terminal for `cellkeep run` on the
//! caller's terminal ([`TermSpec`]) starts as a copy of the caller's (modes and window size),
//! as `ssh -t` gives the remote side the local modes: the program inside sets what it wants on
//! its own terminal, and the caller's is never handed to the cell. Output and errors share the
//! one terminal, so a tty cell has a single output stream.
//!
//! A one-shot cell's terminal gets no input: a program that reads it waits (there is no end of
//! file on a raw terminal) until the cell ends, unlike the `/dev/null` stdin of a pipe cell.
//!
//! End of output: once every holder of the slave has closed it (the payload, pid 1 and the
//! helper have exited), reading the master fails with `EIO`; [`PtyMaster`] reports that as end
//! of file, like a pipe.
//!
//! Why not a crate: `pty-process` (the maintained one) couples the pty to its own `Command`
//! and makes it the controlling terminal in its own `pre_exec`; here the spawn and the
//! `TIOCSCTTY` happen elsewhere (the helper, then the payload inside the cell), so only the
//! small async wrapper below is needed.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::OFlag;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::sys;

/// The window size a cell's terminal starts with.
pub const ROWS: u16 = 24;
pub const COLS: u16 = 80;

/// How a cell's new terminal starts when it mirrors the caller's: the caller's modes and
/// window size, read once before the launch. (Plain `libc::termios`: nix's `Termios` is not
/// `Sync`, and the spec travels across the launcher's await points.)
#[derive(Clone, Copy)]
pub struct TermSpec {
    pub termios: libc::termios,
    pub rows: u16,
    pub cols: u16,
}

impl std::fmt::Debug for TermSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TermSpec").field("rows", &self.rows).field("cols", &self.cols).finish_non_exhaustive()
    }
}

impl TermSpec {
    /// The modes and window size of the terminal on `fd` (the caller's).
    pub fn of(fd: &impl std::os::fd::AsFd) -> io::Result<TermSpec> {
        let termios = libc::termios::from(tcgetattr(fd)?);
        let (rows, cols) = sys::window_size(fd)?;
        Ok(TermSpec { termios, rows, cols })
    }

    /// The terminal's end-of-file character (Ctrl-D unless changed).
    pub fn eof_char(&self) -> u8 {
        self.termios.c_cc[libc::VEOF]
    }
}

/// Open a pty pair for one cell: the master (close-on-exec, non-blocking, registered with the
/// tokio reactor) and the slave (close-on-exec; the spawn `dup2`s it onto 0, 1 and 2). Without
/// a [`TermSpec`] it is in raw mode with an 80x24 window; with one, a copy of that terminal.
/// Must run inside a tokio runtime.
///
/// Both ends are close-on-exec from the moment they exist (no `fcntl` afterwards), so a helper
/// spawned concurrently by another task never inherits them.
pub fn open(like: Option<&TermSpec>) -> io::Result<(PtyMaster, OwnedFd)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let slave = sys::open_pty_peer(&master, OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    match like {
        Some(spec) => {
            // A caller's terminal may report 0x0 (never sized): keep the default then.
            let (rows, cols) = if spec.rows == 0 || spec.cols == 0 { (ROWS, COLS) } else { (spec.rows, spec.cols) };
            sys::set_window_size(&slave, rows, cols)?;
            tcsetattr(&slave, SetArg::TCSANOW, &Termios::from(spec.termios))?;
        }
        None => {
            sys::set_window_size(&slave, ROWS, COLS)?;
            let mut termios = tcgetattr(&slave)?;
            cfmakeraw(&mut termios);
            tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        }
    }
    let fd = Arc::new(sys::async_fd(OwnedFd::from(master))?);
    Ok((PtyMaster { fd }, slave))
}

/// The master side of a cell's terminal: read what the payload writes, write what it reads.
/// [`PtyMaster::split`] gives a reader and a writer that tasks can own separately.
#[derive(Debug)]
pub struct PtyMaster {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// The reading half of a [`PtyMaster`].
#[derive(Debug)]
pub struct PtyReader(PtyMaster);

/// The writing half of a [`PtyMaster`].
#[derive(Debug)]
pub struct PtyWriter(PtyMaster);

impl PtyMaster {
    /// Resize the terminal (the caller's window changed: SIGWINCH); the kernel sends SIGWINCH
    /// to the terminal's foreground process group inside the cell.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        sys::set_window_size(self.fd.get_ref(), rows, cols)
    }

    /// A second handle on the same master (for resizing while the halves are in use).
    pub fn handle(&self) -> PtyMaster {
        PtyMaster { fd: self.fd.clone() }
    }

    pub fn split(self) -> (PtyReader, PtyWriter) {
        let other = PtyMaster { fd: self.fd.clone() };
        (PtyReader(self), PtyWriter(other))
    }

    fn poll_read_fd(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every slave fd is closed: end of file (nothing is added to `buf`).
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not ready after all: readiness was cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_fd(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_read_fd(cx, buf)
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_fd(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for PtyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_fd(cx, buf)
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_write_fd(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn raw_round_trip_then_eof() {
        let (master, slave) = open(None).unwrap_or_else(|e| panic!("openpty: {e}"));
        let flags = nix::fcntl::fcntl(&slave, nix::fcntl::FcntlArg::F_GETFD).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "slave must be close-on-exec");
        let t = tcgetattr(&slave).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO), "raw mode: no echo");
        let (mut r, mut w) = master.split();
        // Master → slave: bytes arrive unchanged, nothing is echoed back.
        w.write_all(b"a\nb\r\n").await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = [0u8; 16];
        let n = nix::unistd::read(&slave, &mut got).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got[..n], b"a\nb\r\n");
        // Slave → master: no \n → \r\n translation.
        nix::unistd::write(&slave, b"x\ny\n").unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0u8; 4];
        r.read_exact(&mut out).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"x\ny\n");
        // The last slave fd closed: EIO on the master reads as end of file.
        drop(slave);
        let mut rest = Vec::new();
        let n = r.read_to_end(&mut rest).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 0);
    }
}
