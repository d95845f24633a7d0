//! Zero-copy relay of large bodies with splice(2): socket -> pipe -> socket.
//!
//! A body relayed through a user-space buffer is copied twice (kernel to buffer,
//! buffer to kernel). Through a pipe, the kernel moves page references instead, so
//! a large Content-Length body costs no copies in the proxy. Small bodies do not
//! pay for it: two splices instead of one read and one write.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pipe capacity asked for (the kernel may give less; 64 KiB is the default).
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// A non-blocking pipe and how many bytes sit in it.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves more per call; if the kernel refuses, the default will do.
        // SAFETY: plain fcntl on a descriptor we own.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // SAFETY: as above.
        let capacity = if size > 0 {
            size as usize
        } else {
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(4096) as usize
        };
        Ok(Pipe {
            read,
            write,
            len: 0,
            capacity,
        })
    }

    /// Bytes in the pipe, not yet passed on.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left in the pipe.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Move up to `max` bytes from `from` into the pipe. Ok(0) is end of stream
    /// (when `max` > 0); `WouldBlock` means `from` has nothing now.
    pub fn fill(&mut self, from: RawFd, max: usize) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), max.min(self.room()))?;
        self.len += n;
        Ok(n)
    }

    /// Move what the pipe holds to `to`; `WouldBlock` means `to` is full.
    pub fn drain(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.len)?;
        self.len -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call, and null
    // offsets make the kernel use (and advance) the descriptors' own positions.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn moves_bytes_between_sockets_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut src_w = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (src_r, _) = listener.accept().unwrap();
        let dst_w = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut dst_r, _) = listener.accept().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || src_w.write_all(&data).unwrap())
        };
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; 200_000];
            dst_r.read_exact(&mut got).unwrap();
            got
        });
        src_r.set_nonblocking(true).unwrap();
        let mut pipe = Pipe::new().unwrap();
        assert!(pipe.room() >= 4096);
        let mut moved = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while moved < data.len() {
            assert!(std::time::Instant::now() < deadline, "splice relay stalled");
            match pipe.fill(src_r.as_raw_fd(), data.len() - moved) {
                Ok(n) => assert!(n > 0, "early end of stream"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            while !pipe.is_empty() {
                moved += pipe.drain(dst_w.as_raw_fd()).unwrap();
            }
        }
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), data);
    }
}
