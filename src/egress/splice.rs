//! The tunnel's byte pump: `splice(2)` from one socket into a pipe and from the pipe into the
//! other socket, so the payload never passes through user space (the proxy adds no copies to a
//! bulk download). Driven by tokio's readiness (`readable`/`writable` + `try_io`), one pump per
//! direction; the end of one direction is passed on as a half-close (`shutdown(SHUT_WR)`), as
//! `tokio::io::copy_bidirectional` does.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call: the default pipe's capacity. (A 1 MiB pipe, which root may
/// set past `pipe-max-size`, measured no faster and pinned 16 × the memory per tunnel.)
const CHUNK: usize = 64 << 10;

/// Relay both directions until both ended; (bytes client → upstream, upstream → client).
pub async fn relay(client: &TcpStream, upstream: &TcpStream) -> io::Result<(u64, u64)> {
    let (up, down) = tokio::join!(pump(client, upstream), pump(upstream, client));
    Ok((up?, down?))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

/// One direction: `from` → pipe → `to`, until `from` reaches end of file.
async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || Ok(splice(from.as_fd(), None, &pw, None, CHUNK, flags)?)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // End of file from `from`: pass the half-close on (the peer may already be gone).
            let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(to), nix::sys::socket::Shutdown::Write);
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || Ok(splice(&pr, None, to.as_fd(), None, left, flags)?)) {
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
