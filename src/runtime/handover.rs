//! Zero-downtime restart: a running corelb hands its listening sockets to its
//! successor over a Unix socket (`--handover PATH`), the technique of HAProxy's
//! `-x` and Envoy's hot restart.
//!
//! Closing a SO_REUSEPORT listener resets the connections queued on it, so the old
//! process must never be the last to hold one. Instead the new process asks the old
//! one for its listeners (passed with SCM_RIGHTS, so both hold the same sockets),
//! starts accepting on them, and then says READY; only then does the old process
//! stop accepting and drain. Every queued connection is accepted by one of the two.
//!
//! The exchange, on a Unix stream socket:
//! 1. new -> old: `TAKE\n`
//! 2. old -> new: `LISTENERS\n` with the listening sockets attached, or
//!    `LISTENERS ADMIN\n` with the admin endpoint's listener attached last (or
//!    `NO\n` while it is shutting down)
//! 3. new -> old: `READY\n` once its workers accept on them
//! 4. old -> new: `OK\n`; the old process then shuts down gracefully (as on SIGTERM).

use std::io::{self, BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most descriptors passed in one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;

/// How long either side waits for the other's next step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The listening sockets a process offers to its successor; `None` once it has
/// begun to shut down (the descriptors may be closed from then on).
pub type Offered = Arc<Mutex<Option<Offer>>>;

/// What is offered: the proxy's listeners, and the admin endpoint's.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pub listeners: Vec<RawFd>,
    pub admin: Option<RawFd>,
}

/// Listeners taken over from a running corelb, and the line to it.
pub struct Taken {
    pub listeners: Vec<TcpListener>,
    /// The admin endpoint's listener, if the running corelb had one.
    pub admin: Option<TcpListener>,
    conn: BufReader<UnixStream>,
}

impl Taken {
    /// Tell the old process we accept on its sockets; it then shuts down.
    pub fn ready(mut self) -> io::Result<()> {
        self.conn.get_mut().write_all(b"READY\n")?;
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        if line == "OK\n" {
            Ok(())
        } else {
            Err(io::Error::other(format!("unexpected answer {line:?}")))
        }
    }
}

/// Ask the corelb listening on `path` for its listeners. `Ok(None)` when nothing
/// listens there (no socket file, or a stale one): start fresh.
pub fn take(path: &Path) -> io::Result<Option<Taken>> {
    let conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(STEP_TIMEOUT))?;
    conn.set_write_timeout(Some(STEP_TIMEOUT))?;
    (&conn).write_all(b"TAKE\n")?;
    let mut buf = [0u8; 64];
    let (n, fds) = recv_with_fds(&conn, &mut buf)?;
    let with_admin = match &buf[..n] {
        b"LISTENERS\n" => false,
        b"LISTENERS ADMIN\n" => true,
        b"NO\n" => return Err(io::Error::other("the running corelb is shutting down")),
        other => {
            return Err(io::Error::other(format!(
                "unexpected answer {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let mut fds = fds;
    let admin = match with_admin {
        true => Some(
            fds.pop()
                .map(TcpListener::from)
                .ok_or_else(|| io::Error::other("no admin listener came with ADMIN"))?,
        ),
        false => None,
    };
    let listeners = fds
        .into_iter()
        .map(|fd| {
            let l = TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Some(Taken {
        listeners,
        admin,
        conn: BufReader::new(conn),
    }))
}

/// Serve handovers on `path` from a thread: the socket file is created under a
/// temporary name and renamed over `path`, so a successor never finds it missing.
/// When a successor is ready, `shutdown` is called (once).
pub fn serve(
    path: &Path,
    offered: Offered,
    shutdown: impl Fn() + Send + 'static,
) -> io::Result<()> {
    let temp = temp_path(path);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    std::fs::rename(&temp, path)?;
    std::thread::Builder::new()
        .name("corelb-handover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                match hand_over(conn, &offered) {
                    Ok(true) => {
                        shutdown();
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => crate::log!(
                        crate::log::Level::Warn,
                        "corelb: handover failed: {e}; still serving"
                    ),
                }
            }
        })?;
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}", std::process::id()));
    PathBuf::from(name)
}

/// One successor: send the listeners, wait for READY. Returns whether it took over.
fn hand_over(conn: UnixStream, offered: &Offered) -> io::Result<bool> {
    conn.set_read_timeout(Some(STEP_TIMEOUT))?;
    conn.set_write_timeout(Some(STEP_TIMEOUT))?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line != "TAKE\n" {
        return Ok(false);
    }
    {
        // Held while sending, so the workers cannot close the sockets meanwhile.
        let guard = offered.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(Offer {
                listeners,
                admin: None,
            }) => send_with_fds(reader.get_ref(), b"LISTENERS\n", listeners)?,
            Some(Offer {
                listeners,
                admin: Some(admin),
            }) => {
                let fds: Vec<RawFd> = listeners.iter().copied().chain([*admin]).collect();
                send_with_fds(reader.get_ref(), b"LISTENERS ADMIN\n", &fds)?
            }
            None => {
                reader.get_mut().write_all(b"NO\n")?;
                return Ok(false);
            }
        }
    }
    line.clear();
    reader.read_line(&mut line)?;
    if line != "READY\n" {
        // The successor gave up; we keep serving.
        return Ok(false);
    }
    reader.get_mut().write_all(b"OK\n")?;
    Ok(true)
}

fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} listening sockets, at most {MAX_FDS} can be handed over",
            fds.len()
        )));
    }
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has CMSG_SPACE(fd_bytes) bytes, room for one header
    // and `fds`; CMSG_FIRSTHDR is non-null for a buffer that large.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr() as *const u8,
            libc::CMSG_DATA(cmsg),
            fd_bytes as usize,
        );
    }
    // SAFETY: `msg` points at live buffers (see above).
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other("short handover message"));
    }
    Ok(())
}

fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let fd_bytes = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: as in `send_with_fds`.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at live buffers; MSG_CMSG_CLOEXEC marks received fds.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of well-formed
    // headers; the CMSG_* macros walk them within those bounds, and each SCM_RIGHTS
    // descriptor received is new and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<RawFd>()) as *const RawFd
                    );
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("too many listening sockets handed over"));
    }
    Ok((n as usize, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_pass_between_processes_and_keep_their_queue() {
        let dir = std::env::temp_dir().join(format!("corelb-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        assert!(take(&path).unwrap().is_none(), "nothing listens yet");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A connection waits in the queue across the handover.
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let offered: Offered = Arc::new(Mutex::new(Some(Offer {
            listeners: vec![listener.as_raw_fd()],
            admin: Some(admin.as_raw_fd()),
        })));
        let (tx, rx) = std::sync::mpsc::channel();
        serve(&path, Arc::clone(&offered), move || tx.send(()).unwrap()).unwrap();

        let taken = take(&path).unwrap().expect("listeners offered");
        assert_eq!(taken.listeners.len(), 1);
        let taken_admin = taken.admin.as_ref().expect("the admin listener");
        assert_eq!(
            taken_admin.local_addr().unwrap(),
            admin.local_addr().unwrap()
        );
        let new = taken.listeners[0].try_clone().unwrap();
        assert_eq!(new.local_addr().unwrap(), addr);
        taken.ready().unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The old side closes its descriptor; the socket and its queue live on.
        drop(listener);
        new.set_nonblocking(false).unwrap();
        let (_, peer) = new.accept().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
