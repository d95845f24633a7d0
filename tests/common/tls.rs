//! TLS for the tests: certificates made at test time (rcgen), a proxy with a TLS
//! listener, and a TLS client over a std socket (rustls' client side, which
//! corelb does not use for its listeners).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corelb::config::Listen;
use corelb::tls::CertFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{IO_TIMEOUT, loopback};

/// A certificate authority the tests' clients trust.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`, signed by this CA: (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_with(names, |_| {})
    }

    /// `leaf`, with its parameters changed first (validity, say).
    pub fn leaf_with(
        &self,
        names: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A directory of its own under the system's temporary directory, removed when
/// dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("corelb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Write `text` to `name` in it (atomically: a reload never reads half a file).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write a certificate chain and key as `stem.pem` / `stem.key`.
pub fn write_pair(dir: &TempDir, stem: &str, pair: &(String, String)) -> CertFiles {
    CertFiles {
        cert: dir.write(&format!("{stem}.pem"), &pair.0),
        key: dir.write(&format!("{stem}.key"), &pair.1),
    }
}

/// A TLS listener on an ephemeral loopback port.
pub fn tls_listen() -> Listen {
    Listen {
        tls: true,
        ..Listen::plain(loopback())
    }
}

/// A client configuration trusting `ca_pem`, offering HTTP/1.1 by ALPN.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect and finish the handshake, asking for `name` (SNI; an IP address
/// sends none).
pub fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream, std::io::Error> {
    tls_over(TcpStream::connect(addr)?, name, config)
}

/// `tls_connect` over a socket already connected.
pub fn tls_over(
    sock: TcpStream,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream, std::io::Error> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let server = ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(config), server).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    stream.flush()?;
    Ok(stream)
}

/// The leaf certificate the server showed, DER.
pub fn served_leaf(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// The first certificate of a PEM chain, DER (what `served_leaf` is compared to).
pub fn leaf_der(chain_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// `path` as a string, for command lines.
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// An `https://` backend: each connection in a thread of its own, TLS with
/// `chain`/`key` (rustls' server side, blocking), answering every request head
/// with `200` and a body naming the path, the name the client asked for (SNI)
/// and the connection's number. Counts connections; stops when dropped.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The server side of one backend connection, as a script gets it.
pub type ServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

impl TlsBackend {
    pub fn start(pair: &(String, String)) -> TlsBackend {
        TlsBackend::scripted(pair, serve_tls)
    }

    /// A backend whose connections each run `script` (with the connection's
    /// number), the handshake done by its first read.
    pub fn scripted(
        pair: &(String, String),
        script: impl Fn(ServerStream, usize) + Send + Sync + 'static,
    ) -> TlsBackend {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.0.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pair.1.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind(loopback()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&connections), Arc::clone(&stop));
        let script = Arc::new(script);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((sock, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    continue;
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                // As servers do: with Nagle on, an answer written after a session
                // ticket would wait for the ticket's ACK (40 ms, delayed).
                sock.set_nodelay(true).unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let script = Arc::clone(&script);
                std::thread::spawn(move || script(rustls::StreamOwned::new(conn, sock), n));
            }
        });
        TlsBackend {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// How corelb is told of it: `https://localhost:PORT`, at 127.0.0.1.
    pub fn backend(&self) -> corelb::Backend {
        corelb::Backend {
            authority: format!("localhost:{}", self.addr.port()),
            tls: true,
            ..corelb::Backend::new(self.addr)
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request head read over TLS, byte by byte (these requests have no body);
/// `None` at the end of the stream.
pub fn read_tls_head(s: &mut ServerStream) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).to_string())
}

fn serve_tls(mut s: ServerStream, n: usize) {
    while let Some(head) = read_tls_head(&mut s) {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let sni = s.conn.server_name().unwrap_or("-").to_string();
        let body = format!("{path} sni={sni} conn={n}");
        let out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(out.as_bytes())
            .and_then(|()| s.flush())
            .is_err()
        {
            return;
        }
    }
}
