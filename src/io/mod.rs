//! Socket I/O under edge-triggered readiness: the readiness cache, a read into a
//! buffer, a two-part write, and the buffers and pipes they move bytes through.

pub mod buffer;
pub mod splice;
pub mod stream;

use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;

use crate::io::buffer::Buf;

/// Cached readiness of one socket (edge-triggered: flags stay set until an
/// operation returns WouldBlock).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer has shut down its side: keep reading until end of stream.
    pub(crate) read_closed: bool,
}

impl Ready {
    pub(crate) fn update(&mut self, ev: &mio::event::Event) {
        // An error or hang-up is reported through the next read or write.
        self.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
        self.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
        self.read_closed |= ev.is_read_closed();
    }
}

/// Outcome of one read into a buffer.
pub(crate) enum ReadOutcome {
    Data,
    Eof,
    Blocked,
}

/// Read once into `buf`, keeping `ready` in step. A short read on a socket whose peer
/// has not closed means the kernel queue is empty (Linux, epoll edge-triggered: new
/// data raises a new edge), so the flag is cleared without a read that fails.
pub(crate) fn read_into(
    sock: &mut TcpStream,
    buf: &mut Buf,
    ready: &mut Ready,
) -> io::Result<ReadOutcome> {
    match buf.read_from(sock) {
        Ok((0, _)) => Ok(ReadOutcome::Eof),
        Ok((_, short)) => {
            if short && !ready.read_closed {
                ready.readable = false;
            }
            Ok(ReadOutcome::Data)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.readable = false;
            Ok(ReadOutcome::Blocked)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Blocked),
        Err(e) => Err(e),
    }
}

/// Write `head` then `body` with one writev; returns bytes written (0 when blocked).
pub(crate) fn write_two(
    sock: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    ready: &mut Ready,
) -> io::Result<usize> {
    let total = head.len() + body.len();
    let result = if head.is_empty() {
        sock.write(body)
    } else if body.is_empty() {
        sock.write(head)
    } else {
        sock.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
    };
    match result {
        Ok(n) => {
            if n < total {
                ready.writable = false;
            }
            Ok(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.writable = false;
            Ok(0)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Acknowledge now what was received on `sock`, rather than on the next bytes we
/// send (a delayed ACK, up to 40 ms on Linux, or the next request on a pooled
/// backend connection). A peer whose small writes wait for an ACK (Nagle) then
/// sends whatever it still had at once. For a backend connection going back to
/// the pool this matters: bytes the backend sent after the end of a response
/// arrive while the connection is idle, where they get it closed, instead of
/// being let out by the next request's ACK and read as that request's answer,
/// which would keep every later answer on the connection one exchange late.
/// Costs one `setsockopt` (Linux `TCP_QUICKACK`), and an ACK segment when one is
/// owed; a failure changes nothing that was guaranteed.
pub(crate) fn ack_now(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_tcp_quickack(true);
}

/// Bytes written to `sock` that the kernel holds still: not yet sent, or sent
/// and not yet acknowledged by the peer (Linux `SIOCOUTQ`); None if it cannot
/// tell. A queue that shrinks means the peer is reading, however slowly, even
/// when no writable event comes (the queue is drained in the background).
pub(crate) fn unsent(sock: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SIOCOUTQ is TIOCOUTQ on Linux; it writes one int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
}
