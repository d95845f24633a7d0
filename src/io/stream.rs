//! A connection's bytes as a session sees them: plain TCP, or TLS over TCP.
//!
//! TLS runs in the worker's loop like everything else. rustls is a state
//! machine without I/O of its own: what the socket gives is fed to it, the
//! plaintext it makes is read into the session's buffer, and the records it
//! makes are written to the socket when the socket takes them, all under the
//! same edge-triggered readiness cache as a plain socket. Records rustls made
//! and the socket did not take yet (`pending_out`) belong to the connection: a
//! session flushes them when its socket turns writable, and closes only once
//! they are out.

use std::cell::RefCell;
use std::io::{self, Write};

use mio::net::TcpStream;

use super::buffer::Buf;
use super::{ReadOutcome, Ready};

/// Bytes of records and plaintext rustls holds for the peer at most; a write
/// of more plaintext takes nothing until the socket has taken some (one
/// buffer's worth, as for a plain socket's relay).
const TLS_OUT_LIMIT: usize = 64 * 1024;

/// A head and body at most this long (one TLS record's plaintext) are joined
/// into one write, and so one record.
const JOIN_MAX: usize = 16 * 1024;

thread_local! {
    /// Where `write_two` joins a head and a body (one per worker thread).
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A client or backend connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// TLS over a TCP socket.
pub(crate) struct Tls {
    pub(crate) sock: TcpStream,
    pub(crate) conn: rustls::Connection,
    /// TLS bytes arrived that have made no plaintext yet: a handshake, or a
    /// record begun. A message has begun, for the header timeout.
    begun: bool,
    /// The handshake has finished (noticed once, see `take_established`).
    established: bool,
    /// Writing to the socket failed: nothing more can be sent on it.
    broken: bool,
    /// Our close_notify is queued (it may still wait for the socket).
    notified: bool,
    /// Where the peer's record stream stands in the bytes given to rustls.
    framing: RecordFraming,
}

/// The peer's TLS record framing, followed over the bytes handed to rustls: a
/// record begun and not whole is held inside rustls, where no read of the
/// socket or of the plaintext shows it. A backend connection must not be
/// pooled then: the rest of the record would arrive after the next request
/// went out and be read as its answer.
#[derive(Clone, Copy, Debug, Default)]
struct RecordFraming {
    /// Bytes of the next record's 5-byte header seen so far.
    header: [u8; 5],
    have: u8,
    /// Bytes of the current record's body still to come.
    remaining: usize,
}

impl RecordFraming {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = (5 - have).min(bytes.len());
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if have + n == 5 {
                self.remaining = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
            } else {
                self.have = (have + n) as u8;
            }
        }
    }

    fn mid_record(&self) -> bool {
        self.have > 0 || self.remaining > 0
    }
}

/// The socket as rustls reads it, with the bytes it takes followed by `framing`.
struct Framed<'a> {
    sock: &'a mut TcpStream,
    framing: &'a mut RecordFraming,
}

impl io::Read for Framed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = io::Read::read(self.sock, buf)?;
        self.framing.feed(&buf[..n]);
        Ok(n)
    }
}

/// Why a TLS connection failed, for the metrics and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// No protocol version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// Not TLS, or TLS that breaks the protocol (garbage instead of a
    /// ClientHello, a record that does not decrypt).
    Malformed,
    /// The peer refused us with an alert (a client that does not trust the
    /// certificate, say).
    Alert,
    /// A backend's certificate did not verify (expired, wrong host, unknown
    /// issuer).
    Certificate,
    /// Anything else rustls refused.
    Other,
}

impl TlsFailure {
    pub fn name(self) -> &'static str {
        match self {
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Malformed => "malformed",
            TlsFailure::Alert => "alert",
            TlsFailure::Certificate => "certificate",
            TlsFailure::Other => "other",
        }
    }

    /// Its place in `counters::TLS_FAILURES`.
    pub fn index(self) -> usize {
        self as usize
    }

    fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::Error;
        match e {
            Error::PeerIncompatible(_) | Error::NoApplicationProtocol => TlsFailure::Incompatible,
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::PeerMisbehaved(_)
            | Error::DecryptError => TlsFailure::Malformed,
            Error::AlertReceived(_) => TlsFailure::Alert,
            Error::InvalidCertificate(_) => TlsFailure::Certificate,
            _ => TlsFailure::Other,
        }
    }
}

/// An `io::Error` that carries what rustls refused.
#[derive(Debug)]
pub(crate) struct TlsError {
    pub(crate) failure: TlsFailure,
    pub(crate) error: rustls::Error,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.error)
    }
}

impl std::error::Error for TlsError {}

/// What rustls refused, if `e` came from it.
pub(crate) fn tls_failure(e: &io::Error) -> Option<&TlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
}

impl Tls {
    pub(crate) fn new(sock: TcpStream, mut conn: rustls::Connection) -> Box<Tls> {
        conn.set_buffer_limit(Some(TLS_OUT_LIMIT));
        Box::new(Tls {
            sock,
            conn,
            begun: false,
            established: false,
            broken: false,
            notified: false,
            framing: RecordFraming::default(),
        })
    }

    fn read_into(&mut self, buf: &mut Buf, ready: &mut Ready) -> io::Result<ReadOutcome> {
        loop {
            // Plaintext rustls holds already comes first.
            match buf.read_from(&mut self.conn.reader()) {
                // The peer's close_notify, and nothing before it left.
                Ok((0, _)) => return Ok(ReadOutcome::Eof),
                Ok((_, short)) => {
                    self.begun = false;
                    // A read that filled the room may have left more behind: the
                    // session must come back for it even if the socket is drained.
                    if !short {
                        ready.readable = true;
                    }
                    return Ok(ReadOutcome::Data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The end of the TCP stream without a close_notify: as a plain
                // end of stream (HTTP's framing says whether anything is missing).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(ReadOutcome::Eof);
                }
                Err(e) => return Err(e),
            }
            if !ready.readable {
                return Ok(ReadOutcome::Blocked);
            }
            let mut framed = Framed {
                sock: &mut self.sock,
                framing: &mut self.framing,
            };
            match self.conn.read_tls(&mut framed) {
                // The end of the stream: the reader says so on the next pass.
                Ok(0) => {}
                Ok(_) => self.begun = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.readable = false;
                    return Ok(ReadOutcome::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let handshaking = self.conn.is_handshaking();
            if let Err(error) = self.conn.process_new_packets() {
                // rustls queued an alert that says why: it goes if the socket takes it.
                let _ = self.conn.write_tls(&mut self.sock);
                let failure = TlsFailure::of(&error);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    TlsError { failure, error },
                ));
            }
            // A finished handshake is not the beginning of a request: what the
            // client sends next is (a connection that says nothing more waits
            // as an idle one, not as one in the middle of a head).
            if handshaking && !self.conn.is_handshaking() {
                self.begun = false;
            }
            // A handshake flight (or a ticket, a key update) goes out at once.
            if self.conn.wants_write() && ready.writable {
                self.flush(ready)?;
            }
        }
    }

    fn write_two(&mut self, head: &[u8], body: &[u8], ready: &mut Ready) -> io::Result<usize> {
        self.flush(ready)?;
        let mut writer = self.conn.writer();
        let n = if head.is_empty() || body.is_empty() {
            writer.write(if head.is_empty() { body } else { head })?
        } else if head.len() + body.len() <= JOIN_MAX {
            // One record for both (rustls' vectored write would collect the
            // slices into a Vec of its own: an allocation per response).
            JOINED.with_borrow_mut(|joined| {
                joined.clear();
                joined.extend_from_slice(head);
                joined.extend_from_slice(body);
                writer.write(joined)
            })?
        } else {
            let n = writer.write(head)?;
            if n < head.len() {
                n
            } else {
                n + writer.write(body)?
            }
        };
        self.flush(ready)?;
        Ok(n)
    }

    /// Write out the records rustls made; true once none is left.
    fn flush(&mut self, ready: &mut Ready) -> io::Result<bool> {
        while self.conn.wants_write() {
            if !ready.writable {
                return Ok(false);
            }
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.writable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        Ok(true)
    }
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    pub(crate) fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }

    pub(crate) fn tls(&self) -> Option<&Tls> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Read once into `buf` (plaintext), keeping `ready` in step; see
    /// `io::read_into` for a plain socket.
    #[inline]
    pub(crate) fn read_into(
        &mut self,
        buf: &mut Buf,
        ready: &mut Ready,
    ) -> io::Result<ReadOutcome> {
        match self {
            Stream::Plain(s) => super::read_into(s, buf, ready),
            Stream::Tls(t) => t.read_into(buf, ready),
        }
    }

    /// Write `head` then `body`; returns the bytes taken (0 when blocked). Over
    /// TLS, taken means encrypted into records, which `flush` writes out.
    #[inline]
    pub(crate) fn write_two(
        &mut self,
        head: &[u8],
        body: &[u8],
        ready: &mut Ready,
    ) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => super::write_two(s, head, body, ready),
            Stream::Tls(t) => t.write_two(head, body, ready),
        }
    }

    /// Read what arrived into `scratch` (over TLS, the plaintext of whole
    /// records; a record that carries none, a session ticket say, is taken in
    /// and counts as nothing): `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing came. A look at a connection that owes no bytes
    /// (`proxy::upstream::leftover`), not a relay.
    pub(crate) fn read_some(&mut self, scratch: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Stream::Plain(s) => return io::Read::read(s, scratch),
            Stream::Tls(t) => t,
        };
        loop {
            match io::Read::read(&mut t.conn.reader(), scratch) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let mut framed = Framed {
                sock: &mut t.sock,
                framing: &mut t.framing,
            };
            t.conn.read_tls(&mut framed)?;
            if let Err(error) = t.conn.process_new_packets() {
                let failure = TlsFailure::of(&error);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    TlsError { failure, error },
                ));
            }
        }
    }

    /// Over TLS, the peer's bytes given to rustls end inside a record: what it
    /// holds of it shows nowhere until the rest comes (never for plain TCP).
    #[inline]
    pub(crate) fn mid_record(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.framing.mid_record(),
        }
    }

    /// TLS records wait for the socket (never for a plain one).
    #[inline]
    pub(crate) fn pending_out(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Write out what waits for the socket; true once nothing does.
    pub(crate) fn flush(&mut self, ready: &mut Ready) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(true),
            Stream::Tls(t) => t.flush(ready),
        }
    }

    /// Over TLS, say that we end here (a close_notify) and write out every
    /// record; true once all are out (at once for a plain socket).
    pub(crate) fn close_notify(&mut self, ready: &mut Ready) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(true),
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                t.notified = true;
                t.flush(ready)
            }
        }
    }

    /// End our sending side: over TLS a close_notify first, and the TCP shutdown
    /// once it is out. Returns whether the TCP side is shut (false: call again
    /// when the socket is writable).
    pub(crate) fn shutdown_write(&mut self, ready: &mut Ready) -> bool {
        if let Ok(false) = self.close_notify(ready) {
            return false;
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
        true
    }

    /// The TLS version spoken, as its place in `counters::TLS_VERSIONS` (1.2,
    /// 1.3); `None` for a plain socket or before the handshake decided it.
    pub(crate) fn tls_version(&self) -> Option<usize> {
        match self.tls()?.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => Some(0),
            rustls::ProtocolVersion::TLSv1_3 => Some(1),
            _ => None,
        }
    }

    /// What the access log shows of a TLS session (after its handshake): the
    /// version (`TLSv1.3`), the cipher suite's IANA name and the SNI name.
    pub(crate) fn tls_session(&self) -> Option<(&'static str, &'static str, Option<&str>)> {
        let conn = &self.tls()?.conn;
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "-",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        let sni = match conn {
            rustls::Connection::Server(s) => s.server_name(),
            rustls::Connection::Client(_) => None,
        };
        Some((version, cipher, sni))
    }

    /// A TLS session that can still say goodbye: its socket has not failed,
    /// and it has not sent its close_notify, or still holds records (that one
    /// among them) for the socket.
    pub(crate) fn may_close_notify(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => !t.broken && (!t.notified || t.conn.wants_write()),
        }
    }

    /// The TLS handshake resumed an earlier session (no certificate, no
    /// signature).
    pub(crate) fn tls_resumed(&self) -> bool {
        self.tls()
            .is_some_and(|t| t.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    /// A TLS handshake is under way (not finished, not failed).
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.is_handshaking(),
        }
    }

    /// Bytes of a message arrived that made no plaintext yet (a TLS handshake
    /// or record in progress). A plain socket's bytes are plaintext at once.
    pub(crate) fn begun(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.begun,
        }
    }

    /// True once, when the TLS handshake has just finished.
    pub(crate) fn take_established(&mut self) -> bool {
        match self {
            Stream::Tls(t) if !t.established && !t.conn.is_handshaking() => {
                t.established = true;
                true
            }
            _ => false,
        }
    }
}
