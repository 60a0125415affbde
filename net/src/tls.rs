//! TLS for the QUIC relay: mutual TLS with certificates from configuration.
//!
//! Every node (distributor or edge) presents a certificate signed by the cluster CA and
//! checks its peer's against the same CA. The server name is [`RELAY_SERVER_NAME`], which
//! every distributor certificate carries. [`DevPki`] makes a throwaway CA and node
//! certificates for `firetower dev` and tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::error::TlsError;

/// The name edges expect on a distributor's certificate.
pub const RELAY_SERVER_NAME: &str = "distributor.firetower";
/// The ALPN protocol of the relay.
pub const RELAY_ALPN: &[u8] = b"firetower-relay/1";

/// Where a node's TLS material is, as PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The cluster CA that signs every node's certificate.
    pub ca: PathBuf,
}

/// Loaded TLS material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub ca: Vec<CertificateDer<'static>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certs_from(pem: &[u8], what: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::Invalid {
        path: what.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: what.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Reads the PEM files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let certs = certs_from(&read(&files.cert)?, &files.cert)?;
        let ca = certs_from(&read(&files.ca)?, &files.ca)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Invalid {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(TlsMaterial {
            certs,
            key: Arc::new(key),
            ca,
        })
    }

    /// Material from PEM text (the simulator keeps it in memory).
    pub fn from_pem(cert: &str, key: &str, ca: &str) -> Result<Self, TlsError> {
        let what = Path::new("<memory>");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| TlsError::Invalid {
            path: what.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(TlsMaterial {
            certs: certs_from(cert.as_bytes(), what)?,
            key: Arc::new(key),
            ca: certs_from(ca.as_bytes(), what)?,
        })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// The QUIC server configuration of a distributor: requires a client certificate
    /// signed by the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }

    /// The QUIC client configuration of an edge: presents its certificate and checks the
    /// distributor's against the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![RELAY_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }
}

/// Relay transport settings shared by both ends. Keep-alives let a dead peer be noticed
/// within the idle timeout; the stream windows are sized for a relay that carries many
/// small messages at high rates.
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(3)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(64u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t
}

/// A CA made here, with node certificates: for `firetower dev`, the tests, and
/// `firetower certs` (which writes the CA's certificate, not its key: a new set means a new
/// CA for every node).
pub struct DevPki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// One node's PEM certificate and key.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevPki {
    /// A new CA.
    ///
    /// Keys are Ed25519: its signatures have a fixed length, so every TLS handshake has the
    /// same message sizes (ECDSA's vary by a byte or two), which keeps simulated runs that
    /// draw a latency per datagram identical from one run to the next.
    pub fn new() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::new())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "firetower dev CA");
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(DevPki {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A certificate for a node, valid as a relay server and client.
    pub fn issue(&self, common_name: &str) -> Result<DevCert, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![
            RELAY_SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])
        .map_err(|e| TlsError::Config(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA and a node certificate into `dir` and returns their paths.
    pub fn write_node(&self, dir: &Path, name: &str) -> Result<TlsFiles, TlsError> {
        let cert = self.issue(name)?;
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.crt"),
        };
        for (path, text) in [
            (&files.cert, &cert.cert_pem),
            (&files.key, &cert.key_pem),
            (&files.ca, &self.ca_pem),
        ] {
            // Write then rename, so a node reading the shared CA file never sees it half
            // written.
            let temp = path.with_extension(format!("tmp-{name}"));
            std::fs::write(&temp, text)
                .and_then(|()| std::fs::rename(&temp, path))
                .map_err(|e| TlsError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(files)
    }
}
