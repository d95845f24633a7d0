//! TLS settings: the certificates a TLS listener serves (chosen by SNI), and the
//! rustls configuration built from them. The handshakes themselves run in the
//! workers' loops (`io::stream`); this module only reads and checks files.
//!
//! Crypto comes from aws-lc-rs (rustls' default provider): its assembly for
//! AES-GCM, ChaCha20 and the handshake's signatures is the same as BoringSSL's,
//! which is what measures up to nginx with OpenSSL. Protocol versions and cipher
//! suites are rustls' safe defaults: TLS 1.2 and 1.3, forward secrecy and AEAD
//! ciphers only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The protocol ALPN names: HTTP/1.1 only (RFC 7301; no h2 until corelb speaks it).
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Sessions a listener remembers for resumption (TLS 1.2 session ids, TLS 1.3
/// stateful tickets), per process: about 200 bytes each.
const SESSION_CACHE: usize = 20_000;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read one certificate chain (leaf first) and its key, and check that they
/// belong together. The error is one line naming the file.
pub fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (cert, key) = (&files.cert, &files.key);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {}", cert.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", cert.display(), pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate (a PEM \"BEGIN CERTIFICATE\" block) in it",
            cert.display()
        ));
    }
    // The leaf must parse as an X.509 certificate, or every handshake would fail.
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        format!(
            "{}: the first certificate is not valid X.509: {e}",
            cert.display()
        )
    })?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: {}", key.display(), pem_error(&e)))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: the key does not belong to the certificate in {}",
            key.display(),
            cert.display()
        ),
        e => format!("{}: {e}", key.display()),
    })
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read: {io}"),
        Error::NoItemsFound => "no PEM block of the expected kind in it".into(),
        e => format!("not valid PEM: {e:?}"),
    }
}

/// The certificates of the TLS listeners: the first is the default (for clients
/// that send no SNI, or a name no certificate covers); each serves the names its
/// leaf certificate is valid for (subject alternative names, wildcards included).
pub struct Certificates {
    keys: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificates({})", self.keys.len())
    }
}

impl Certificates {
    pub fn load(files: &[CertFiles], provider: &CryptoProvider) -> Result<Certificates, String> {
        let keys = files
            .iter()
            .map(|f| load_pair(f, provider).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("a TLS listener needs --tls-cert and --tls-key".into());
        }
        Ok(Certificates { keys })
    }

    /// The certificate for a client that asked for `name` (SNI): the first one
    /// valid for it, else the default.
    pub fn for_name(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let wanted = name.and_then(|n| ServerName::try_from(n).ok());
        if let Some(wanted) = wanted {
            for key in &self.keys {
                let valid = key
                    .end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&wanted).is_ok());
                if valid {
                    return key;
                }
            }
        }
        &self.keys[0]
    }

    /// Every certificate of every chain, DER: what a reload compares to tell
    /// whether the files changed (a key cannot change without its certificate).
    pub fn fingerprint(&self) -> Vec<&[u8]> {
        self.keys
            .iter()
            .flat_map(|k| k.cert.iter().map(|c| c.as_ref()))
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.for_name(hello.server_name())))
    }
}

/// The rustls configuration of the TLS listeners, built over `certs`.
pub fn server_config(
    certs: Arc<Certificates>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // The server's order decides (AES-GCM, then ChaCha20-Poly1305), not the
    // client's: every suite offered is strong, but a scanner (testssl.sh)
    // counts a server without an order of its own as a weakness.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Loaded certificates and the configuration over them, as a worker uses them.
#[derive(Clone)]
pub struct ServerTls {
    pub certs: Arc<Certificates>,
    pub config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.certs.fmt(f)
    }
}

impl ServerTls {
    /// Read and check every certificate and key.
    pub fn load(files: &[CertFiles]) -> Result<ServerTls, String> {
        let provider = provider();
        let certs = Arc::new(Certificates::load(files, &provider)?);
        let config = server_config(Arc::clone(&certs), provider)?;
        Ok(ServerTls { certs, config })
    }

    /// Whether `other` serves the same certificates.
    pub fn same_certificates(&self, other: &ServerTls) -> bool {
        self.certs.fingerprint() == other.certs.fingerprint()
    }
}

/// The name a backend's certificate must be valid for: the host of its
/// `host:port` (an IP address, or a DNS name).
pub fn server_name(authority: &str) -> Result<ServerName<'static>, String> {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host} is not a host name a certificate can be checked for"))
}

/// The rustls configuration for `https://` backends: a backend's certificate
/// must chain to a certificate authority of `ca` (a PEM file) or, without it,
/// to one the system trusts (its CA bundle, as rustls-native-certs finds it).
/// It offers HTTP/1.1 by ALPN and sends the backend's name (SNI).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "{}: no certificate authority (a PEM \"BEGIN CERTIFICATE\" block) in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system certificate authorities to check https:// backends against (install ca-certificates, or give --backend-ca)"
                        .into(),
                );
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
