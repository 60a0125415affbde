//! TLS for every connection between nodes, and for backends.
//!
//! Every node presents a certificate signed by the cluster CA whose subjectAltName carries
//! its identity, `firetower://ROLE/ID` ([`NodeIdentity`]), and, for the roles that serve,
//! the role's server name ([`Role::server_name`]): a client checks that the server it
//! dialled is of the role it wanted (an edge's certificate names no server, so it cannot
//! pose as a distributor). Servers ask for a client certificate but also accept callers
//! without one (backends, the CLI), whose calls then have no node identity: the services
//! decide what each identity may do (the metastore, the distributor's forwarding and
//! handover, the relay's Hello).
//!
//! - gRPC: [`TlsMaterial::grpc_server`] and [`TlsMaterial::grpc_client`], used by
//!   [`crate::grpc_tls`];
//! - the QUIC relay (feature `relay`): [`TlsMaterial::server_config`] (distributors) and
//!   [`TlsMaterial::client_config`] (edges), mutual;
//! - [`DevPki`] (feature `relay`) makes a throwaway CA and node certificates for
//!   `firetower dev`, `firetower certs` and tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::error::TlsError;

/// The name edges expect on a distributor's certificate.
pub const RELAY_SERVER_NAME: &str = Role::Distributor.server_name_str();
/// The ALPN protocol of the relay.
pub const RELAY_ALPN: &[u8] = b"firetower-relay/1";
/// The ALPN protocol of gRPC over TLS.
pub const GRPC_ALPN: &[u8] = b"h2";
/// The URI scheme of a node identity in a certificate.
const IDENTITY_SCHEME: &str = "firetower://";

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Metastore,
    Distributor,
    Edge,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Metastore => "metastore",
            Role::Distributor => "distributor",
            Role::Edge => "edge",
        }
    }

    const fn server_name_str(self) -> &'static str {
        match self {
            Role::Metastore => "metastore.firetower",
            Role::Distributor => "distributor.firetower",
            Role::Edge => "edge.firetower",
        }
    }

    /// The server name a client dialling this role checks on its certificate. Edges serve
    /// no node, so their certificates do not carry theirs.
    pub fn server_name(self) -> rustls::pki_types::ServerName<'static> {
        rustls::pki_types::ServerName::DnsName(
            rustls::pki_types::DnsName::try_from(self.server_name_str())
                .unwrap_or_else(|_| unreachable!("a constant, valid DNS name")),
        )
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "metastore" => Some(Role::Metastore),
            "distributor" => Some(Role::Distributor),
            "edge" => Some(Role::Edge),
            _ => None,
        }
    }
}

/// A node's identity, as its certificate proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub role: Role,
    pub id: u64,
}

impl NodeIdentity {
    pub fn new(role: Role, id: u64) -> Self {
        NodeIdentity { role, id }
    }

    /// The subjectAltName URI that carries it.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_SCHEME}{}/{}", self.role.as_str(), self.id)
    }

    /// A file and common name for its certificate: `distributor-3`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.id)
    }

    fn parse_uri(uri: &str) -> Option<NodeIdentity> {
        let rest = uri.strip_prefix(IDENTITY_SCHEME)?;
        let (role, id) = rest.split_once('/')?;
        let id: u64 = id.parse().ok()?;
        (id > 0).then_some(NodeIdentity {
            role: Role::parse(role)?,
            id,
        })
    }

    /// The identity a (verified) certificate carries: exactly one `firetower://` URI in its
    /// subjectAltName; none, several or a malformed one is no identity.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<NodeIdentity> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let san = parsed.subject_alternative_name().ok()??;
        let mut found = None;
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with(IDENTITY_SCHEME) {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(NodeIdentity::parse_uri(uri)?);
                }
            }
        }
        found
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.id)
    }
}

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

impl TlsFiles {
    /// Whether any file is named (the default names none).
    pub fn is_set(&self) -> bool {
        !self.cert.as_os_str().is_empty()
            || !self.key.as_os_str().is_empty()
            || !self.ca.as_os_str().is_empty()
    }
}

/// Loaded TLS material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub ca: Vec<CertificateDer<'static>>,
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn certs_from(
    pem: &[u8],
    what: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

    /// The identity this node's own certificate carries.
    pub fn identity(&self) -> Option<NodeIdentity> {
        self.certs.first().and_then(NodeIdentity::from_cert)
    }

    /// Refuses a certificate that does not name this node: it would fail every peer's
    /// identity check, one call at a time.
    pub fn require_identity(&self, own: NodeIdentity) -> Result<(), TlsError> {
        match self.identity() {
            Some(found) if found == own => Ok(()),
            found => Err(TlsError::Identity {
                expected: own.to_string(),
                found: found.map_or("no node identity".into(), |i| i.to_string()),
            }),
        }
    }

    pub(crate) fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        roots_of(&self.ca)
    }

    /// A TLS 1.3 server presenting this node's certificate and asking for a client
    /// certificate of the CA: required (the relay), or optional (gRPC: backends have none).
    fn server_tls(
        &self,
        client_cert_required: bool,
        alpn: &[u8],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        );
        if !client_cert_required {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        Ok(tls)
    }

    /// A TLS 1.3 client presenting this node's certificate and checking the server's
    /// against the CA.
    fn client_tls(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        client_tls(self.roots()?, Some(self), alpn)
    }

    /// The TLS configuration of a gRPC server: its certificate, and a client certificate
    /// signed by the CA asked for but not required (backends and the CLI have none).
    pub fn grpc_server(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        Ok(Arc::new(self.server_tls(false, GRPC_ALPN)?))
    }

    /// The TLS configuration of a node dialling another over gRPC: presents its
    /// certificate and checks the server's against the CA.
    pub fn grpc_client(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        Ok(Arc::new(self.client_tls(GRPC_ALPN)?))
    }

    #[cfg(feature = "relay")]
    /// The QUIC server configuration of a distributor: requires a client certificate
    /// signed by the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(self.server_tls(true, RELAY_ALPN)?)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }

    #[cfg(feature = "relay")]
    /// The QUIC client configuration of an edge: presents its certificate and checks the
    /// distributor's against the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.client_tls(RELAY_ALPN)?)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }
}

/// The crypto provider every TLS configuration here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store of the CA certificates `ca`.
pub(crate) fn roots_of(
    ca: &[CertificateDer<'static>],
) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A TLS 1.3 client trusting `roots`, presenting `node`'s certificate if given (a backend
/// presents none).
pub(crate) fn client_tls(
    roots: Arc<rustls::RootCertStore>,
    node: Option<&TlsMaterial>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match node {
        Some(node) => builder
            .with_client_auth_cert(node.certs.clone(), node.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

#[cfg(feature = "relay")]
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

#[cfg(feature = "relay")]
/// A CA made here, with node certificates: for `firetower dev`, the tests, and
/// `firetower certs` (which writes the CA's certificate, not its key: a new set means a new
/// CA for every node).
pub struct DevPki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

#[cfg(feature = "relay")]
/// One node's PEM certificate and key.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

#[cfg(feature = "relay")]
impl DevPki {
    /// A new CA with ECDSA P-256 keys, for `dev`, `certs` and the tests: every TLS stack
    /// checks them (gRPC's C core, under Python's grpcio and others, cannot check Ed25519).
    pub fn new() -> Result<Self, TlsError> {
        Self::with_algorithm(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A new CA with Ed25519 keys, for the simulator: Ed25519 signatures have a fixed
    /// length, so every TLS handshake has the same message sizes (ECDSA's vary by a byte or
    /// two), which keeps simulated runs that draw a latency per datagram identical from one
    /// run to the next.
    pub fn ed25519() -> Result<Self, TlsError> {
        Self::with_algorithm(&rcgen::PKCS_ED25519)
    }

    fn with_algorithm(algorithm: &'static rcgen::SignatureAlgorithm) -> Result<Self, TlsError> {
        let key =
            rcgen::KeyPair::generate_for(algorithm).map_err(|e| TlsError::Config(e.to_string()))?;
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
            algorithm,
        })
    }

    /// A certificate for a node: its identity as a subjectAltName URI, and the role's
    /// server name for roles that serve nodes (not edges). Valid as a server and a client.
    pub fn issue(&self, identity: NodeIdentity) -> Result<DevCert, TlsError> {
        let key = rcgen::KeyPair::generate_for(self.algorithm)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut names = Vec::new();
        if identity.role != Role::Edge {
            names.push(identity.role.server_name_str().to_string());
        }
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| TlsError::Config(e.to_string()))?;
        let uri = rcgen::string::Ia5String::try_from(identity.uri())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.name());
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

    /// Writes the CA and a node certificate into `dir` (named after the identity,
    /// `distributor-3.crt`) and returns their paths.
    pub fn write_node(&self, dir: &Path, identity: NodeIdentity) -> Result<TlsFiles, TlsError> {
        let cert = self.issue(identity)?;
        let name = identity.name();
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

#[cfg(all(test, feature = "relay"))]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_carries_its_identity_and_its_roles_server_name() {
        for pki in [DevPki::new().unwrap(), DevPki::ed25519().unwrap()] {
            certificates_carry_identities(&pki);
        }
    }

    fn certificates_carry_identities(pki: &DevPki) {
        for identity in [
            NodeIdentity::new(Role::Metastore, 1),
            NodeIdentity::new(Role::Distributor, 3),
            NodeIdentity::new(Role::Edge, 2),
        ] {
            let cert = pki.issue(identity).unwrap();
            let material =
                TlsMaterial::from_pem(&cert.cert_pem, &cert.key_pem, &pki.ca_pem).unwrap();
            assert_eq!(material.identity(), Some(identity));
            assert!(material.require_identity(identity).is_ok());
            let other = NodeIdentity::new(identity.role, identity.id + 1);
            let err = material.require_identity(other).unwrap_err().to_string();
            assert!(err.contains(&identity.to_string()), "{err}");
            let (_, parsed) =
                x509_parser::parse_x509_certificate(material.certs[0].as_ref()).unwrap();
            let names: Vec<String> = parsed
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect();
            let expected: Vec<String> = match identity.role {
                Role::Edge => vec![],
                role => vec![role.server_name_str().to_string()],
            };
            assert_eq!(names, expected, "{identity}");
        }
    }

    #[test]
    fn identity_uris_parse_strictly() {
        assert_eq!(
            NodeIdentity::parse_uri("firetower://edge/7"),
            Some(NodeIdentity::new(Role::Edge, 7))
        );
        for bad in [
            "firetower://edge/0",
            "firetower://edge/x",
            "firetower://router/1",
            "firetower://edge",
            "https://edge/1",
        ] {
            assert_eq!(NodeIdentity::parse_uri(bad), None, "{bad}");
        }
    }
}
