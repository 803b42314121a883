//! The tunnel's byte pump: `splice(2)` from one socket into a pipe and from the pipe into the
//! other socket, so the payload never passes through user space (the proxy adds no copies to a
//! bulk download). Driven by tokio's readiness (`readable`/`writable` + `try_io`), one pump per
//! direction; the end of one direction is passed on as a half-close (`shutdown(SHUT_WR)`), as
//! `tokio::io::copy_bidirectional` does. A direction that fails (a reset) cuts both sockets, so
//! the other direction ends too instead of holding the tunnel (and the cell's connection slot)
//! open on an idle peer; so does a tunnel idle for [`TUNNEL_IDLE`]. Bytes are counted as they
//! move ([`Moved`]), so whoever records the tunnel's end has them however it ended.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call: the default pipe's capacity. (A 1 MiB pipe, which root may
/// set past `pipe-max-size`, measured no faster and pinned 16 × the memory per tunnel.)
const CHUNK: usize = 64 << 10;

/// A tunnel with no byte moved either way for this long is closed (an HTTP client reconnects;
/// a tunnel held open and unread would otherwise hold its kernel buffers for the cell's life).
pub const TUNNEL_IDLE: Duration = Duration::from_secs(600);
/// How often the idle clock is read.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// Bytes a tunnel has moved so far: client → upstream, upstream → client.
#[derive(Debug, Default)]
pub struct Moved {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Moved {
    pub fn total(&self) -> (u64, u64) {
        (self.up.load(Ordering::Relaxed), self.down.load(Ordering::Relaxed))
    }
}

/// Relay both directions until both ended, one failed (then both sockets are cut), or the
/// tunnel sat idle for [`TUNNEL_IDLE`]; the bytes moved are in `moved` in every case. The
/// client's side starts with `first_up` (the proxy's check of what the client sends first,
/// which moves those bytes itself), the upstream's with `first_down` (which holds it while
/// that check looks at the server's answer; a server may also speak first).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    moved: &Moved,
    first_up: impl std::future::Future<Output = io::Result<()>>,
    first_down: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    // EINVAL: no splice on these sockets (before a byte moved); the caller copies instead, on
    // sockets left intact.
    let cut_on_error = |r: io::Result<()>| {
        if r.as_ref().is_err_and(|e| e.raw_os_error() != Some(libc::EINVAL)) {
            cut(client, upstream);
        }
        r
    };
    let both = async {
        let up = async {
            first_up.await?;
            pump(client, upstream, &moved.up).await
        };
        let down = async {
            first_down.await?;
            pump(upstream, client, &moved.down).await
        };
        let (up, down) = tokio::join!(async { cut_on_error(up.await) }, async { cut_on_error(down.await) });
        up.and(down)
    };
    tokio::select! {
        r = both => r,
        () = idle(moved) => {
            cut(client, upstream);
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {} s", TUNNEL_IDLE.as_secs())))
        }
    }
}

/// Shut both sockets down both ways: every pump on them sees its end.
fn cut(a: &TcpStream, b: &TcpStream) {
    for s in [a, b] {
        let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Completes once no byte has moved either way for [`TUNNEL_IDLE`].
async fn idle(moved: &Moved) {
    let mut last = moved.total();
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(IDLE_CHECK).await;
        let now = moved.total();
        quiet = if now == last { quiet + IDLE_CHECK } else { Duration::ZERO };
        last = now;
        if quiet >= TUNNEL_IDLE {
            return;
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

/// One direction: `from` → pipe → `to`, until `from` reaches end of file; counted in `moved`.
async fn pump(from: &TcpStream, to: &TcpStream, moved: &AtomicU64) -> io::Result<()> {
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
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
            let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            return Ok(());
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || Ok(splice(&pr, None, to.as_fd(), None, left, flags)?)) {
                Ok(n) => {
                    left -= n;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
