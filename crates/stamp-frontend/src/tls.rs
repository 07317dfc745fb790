//! TLS termination: reading and checking certificates ([`inspect`]), making the default
//! self-signed wildcard ([`self_signed`]), and choosing a certificate per handshake by SNI.
//!
//! The certificates in use are one immutable `CertSet` behind an `ArcSwap`: the controller
//! replaces it whole (`Frontend::set_default_certificate`, `Frontend::set_certificates`) and a
//! handshake only loads the current one, so rotating certificates never blocks or fails a
//! handshake under way. One `rustls::ServerConfig` serves every connection, which keeps its
//! session cache and ticket keys shared, so returning clients resume instead of paying for a
//! full handshake.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ProtocolVersion, ServerConfig};
use sha2::{Digest, Sha256};
use stamp_model::{Certificate, Millis};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::conn::{ConnInfo, TlsInfo};

/// What is wrong with a certificate or key, worded for the person who supplied it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "no certificate found in the PEM; expected -----BEGIN CERTIFICATE----- blocks, the site's certificate first"
    )]
    NoCertificate,
    #[error("could not read the certificate PEM: {0}")]
    CertificatePem(pem::Error),
    #[error("the certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "certificate has no DNS names (no subject alternative name and no common name that is a host name)"
    )]
    NoHostnames,
    #[error(
        "no private key found in the PEM; expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block"
    )]
    NoKey,
    #[error(
        "the key is encrypted; provide an unencrypted PEM key (for example: openssl pkey -in key.pem -out plain-key.pem)"
    )]
    EncryptedKey,
    #[error("could not read the private key PEM: {0}")]
    KeyPem(pem::Error),
    #[error("the private key cannot be used for TLS: {0}")]
    UnsupportedKey(rustls::Error),
    #[error(
        "the private key does not match the certificate; provide the key the certificate was issued for"
    )]
    KeyMismatch,
    #[error("cannot make a certificate for {0:?}: not a valid domain name")]
    InvalidDomain(String),
    #[error("could not create a self-signed certificate: {0}")]
    SelfSigned(rcgen::Error),
}

/// What the front end learned from a certificate and key pair that it can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Hex sha256 of the leaf certificate (DER).
    pub thumbprint: String,
    /// DNS names from the subject alternative names, lowercase, possibly wildcards
    /// (`*.example.com`); the subject common name when there is no DNS name.
    pub hostnames: Vec<String>,
    /// Expiry, Unix milliseconds. An expired certificate is still accepted: the caller decides
    /// whether to warn or refuse.
    pub not_after: Millis,
}

/// Checks a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 RSA or
/// SEC1 EC): both parse, the key is one rustls can sign with, and it belongs to the leaf.
pub fn inspect(cert_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
    load(cert_pem, key_pem).map(|loaded| loaded.info)
}

/// How long the default self-signed certificate is valid.
const SELF_SIGNED_VALIDITY: Millis = Millis::from_secs(10 * 365 * 24 * 60 * 60);

/// A self-signed ECDSA P-256 certificate for `<domain>` and `*.<domain>`, valid for about ten
/// years from `now`: the front end's default certificate until the user provides one. Returns
/// `(certificate PEM, private key PEM)`.
pub fn self_signed(domain: &str, now: Millis) -> Result<(String, String), TlsError> {
    let domain = normalize_hostname(domain);
    let valid = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(TlsError::InvalidDomain(domain));
    }
    let mut params = rcgen::CertificateParams::new(vec![format!("*.{domain}"), domain.clone()])
        .map_err(TlsError::SelfSigned)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("*.{domain}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Stamp (self-signed)");
    // Backdated a day so a client whose clock is slightly behind still accepts it.
    params.not_before = datetime(now.saturating_sub(Millis::from_secs(24 * 60 * 60)));
    params.not_after = datetime(now + SELF_SIGNED_VALIDITY);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(TlsError::SelfSigned)?;
    let cert = params.self_signed(&key).map_err(TlsError::SelfSigned)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn datetime(at: Millis) -> time::OffsetDateTime {
    let secs = i64::try_from(at.0 / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The one crypto provider, chosen explicitly so nothing depends on a process-wide default.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// A checked certificate and key, ready to serve.
struct Loaded {
    info: CertInfo,
    key: Arc<CertifiedKey>,
}

fn load(cert_pem: &str, key_pem: &str) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::CertificatePem)?;
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let hostnames = hostnames(&parsed)?;
    let not_after = Millis(
        u64::try_from(parsed.validity().not_after.timestamp())
            .unwrap_or(0)
            .saturating_mul(1000),
    );
    let thumbprint = hex::encode(Sha256::digest(leaf));

    // An encrypted key has its own PEM labels, which the parser below would skip as unknown
    // and report as "no key": say what is actually wrong.
    if key_pem.contains("ENCRYPTED PRIVATE KEY") || key_pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::EncryptedKey);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey,
        e => TlsError::KeyPem(e),
    })?;
    let signing_key = PROVIDER
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::UnsupportedKey)?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; rustls's own loader accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch);
        }
        Err(e) => return Err(TlsError::BadCertificate(e.to_string())),
    }
    Ok(Loaded {
        info: CertInfo {
            thumbprint,
            hostnames,
            not_after,
        },
        key: Arc::new(certified),
    })
}

/// DNS subject alternative names, else a common name that looks like a host name.
fn hostnames(cert: &X509Certificate<'_>) -> Result<Vec<String>, TlsError> {
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    for name in san.iter().flat_map(|ext| &ext.value.general_names) {
        if let GeneralName::DNSName(dns) = name {
            let dns = normalize_hostname(dns);
            if !dns.is_empty() && !names.contains(&dns) {
                names.push(dns);
            }
        }
    }
    if names.is_empty() {
        let cn = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(normalize_hostname)
            .find(|cn| {
                !cn.is_empty()
                    && cn
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b))
            });
        names.extend(cn);
    }
    if names.is_empty() {
        return Err(TlsError::NoHostnames);
    }
    Ok(names)
}

/// Lowercase, without a trailing root dot.
fn normalize_hostname(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The certificates in use at one moment. Immutable; replaced whole.
#[derive(Default)]
struct CertSet {
    /// Served when no uploaded certificate covers the name, or the client sent no SNI.
    default: Option<Arc<CertifiedKey>>,
    /// Uploaded certificates by exact host name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Uploaded wildcard certificates `*.<parent>`, by `<parent>`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// Exact name, then a wildcard one label up, then the default.
    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let uploaded = sni.and_then(|sni| {
            // rustls lowercases SNI already; this only allocates if that ever changes.
            let sni: Cow<'_, str> = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(sni.to_ascii_lowercase())
            } else {
                Cow::Borrowed(sni)
            };
            self.exact.get(&*sni).or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        uploaded.or(self.default.as_ref()).cloned()
    }

    /// Indexes uploaded certificates; where several cover one name, the one expiring last wins.
    fn index_uploaded(
        certs: &[Certificate],
    ) -> (
        HashMap<String, Arc<CertifiedKey>>,
        HashMap<String, Arc<CertifiedKey>>,
    ) {
        let mut exact: HashMap<String, (Millis, Arc<CertifiedKey>)> = HashMap::new();
        let mut wildcard: HashMap<String, (Millis, Arc<CertifiedKey>)> = HashMap::new();
        for cert in certs {
            let loaded = match load(&cert.cert_pem, &cert.key_pem) {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::warn!(
                        app = %cert.app,
                        thumbprint = %cert.thumbprint,
                        %error,
                        "not serving an uploaded certificate"
                    );
                    continue;
                }
            };
            for name in &cert.hostnames {
                let name = normalize_hostname(name);
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_string()),
                    None => (&mut exact, name),
                };
                if key.is_empty() {
                    continue;
                }
                let candidate = (loaded.info.not_after, Arc::clone(&loaded.key));
                match map.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(candidate);
                    }
                    Entry::Occupied(mut slot) => {
                        if candidate.0 > slot.get().0 {
                            slot.insert(candidate);
                        }
                    }
                }
            }
        }
        let strip = |map: HashMap<String, (Millis, Arc<CertifiedKey>)>| {
            map.into_iter()
                .map(|(name, (_, key))| (name, key))
                .collect()
        };
        (strip(exact), strip(wildcard))
    }
}

/// Chooses the certificate for each handshake from the current `CertSet`.
struct CertResolver {
    set: ArcSwap<CertSet>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.set.load();
        f.debug_struct("CertResolver")
            .field("default", &set.default.is_some())
            .field("exact", &set.exact.len())
            .field("wildcard", &set.wildcard.len())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().lookup(client_hello.server_name())
    }
}

/// The front end's TLS side: certificates, the shared server configuration, and counters.
pub(crate) struct Tls {
    resolver: Arc<CertResolver>,
    acceptor: TlsAcceptor,
    handshake_failures: AtomicU64,
}

impl Tls {
    pub fn new() -> Tls {
        let resolver = Arc::new(CertResolver {
            set: ArcSwap::from_pointee(CertSet::default()),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&PROVIDER))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Stateless tickets on top of the default in-memory session cache: a client that
        // reconnects resumes with one round trip and no signature, the expensive part.
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(error) => {
                tracing::warn!(%error, "failed to set up TLS session tickets; resuming only from the session cache");
            }
        }
        Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_failures: AtomicU64::new(0),
        }
    }

    pub fn set_default(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let loaded = load(cert_pem, key_pem)?;
        self.resolver.set.rcu(|set| CertSet {
            default: Some(Arc::clone(&loaded.key)),
            exact: set.exact.clone(),
            wildcard: set.wildcard.clone(),
        });
        Ok(())
    }

    pub fn set_uploaded(&self, certs: &[Certificate]) {
        let (exact, wildcard) = CertSet::index_uploaded(certs);
        self.resolver.set.rcu(|set| CertSet {
            default: set.default.clone(),
            exact: exact.clone(),
            wildcard: wildcard.clone(),
        });
    }

    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Runs the server side of the handshake. The caller bounds it in time.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, ConnInfo)> {
        match self.acceptor.accept(stream).await {
            Ok(stream) => {
                let (_, session) = stream.get_ref();
                let tls = TlsInfo {
                    sni: session.server_name().map(str::to_ascii_lowercase),
                    version: match session.protocol_version() {
                        Some(ProtocolVersion::TLSv1_3) => "TLSv1_3",
                        Some(ProtocolVersion::TLSv1_2) => "TLSv1_2",
                        _ => "unknown",
                    },
                };
                Some((
                    stream,
                    ConnInfo {
                        peer,
                        tls: Some(tls),
                    },
                ))
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                self.count_failure();
                None
            }
        }
    }

    pub fn count_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str], not_after_days: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_after = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(not_after_days);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn record(names: &[&str], not_after_days: i64) -> Certificate {
        let (cert_pem, key_pem) = pair(names, not_after_days);
        Certificate {
            app: stamp_model::AppName::parse("app").expect("name"),
            thumbprint: String::new(),
            hostnames: names.iter().map(|n| n.to_string()).collect(),
            not_after: Millis::ZERO,
            cert_pem,
            key_pem,
            created_at: Millis::ZERO,
        }
    }

    fn leaf(key: &CertifiedKey) -> &[u8] {
        key.cert[0].as_ref()
    }

    #[test]
    fn lookup_prefers_exact_then_one_label_wildcard_then_default_then_latest_expiry() {
        let (default_cert, default_key) = pair(&["default.test"], 20_000);
        let certs = [
            record(&["www.example.com"], 20_000),
            record(&["*.example.com"], 20_000),
            record(&["Shared.Example.org"], 20_000),
            record(&["shared.example.org"], 30_000),
            record(&["shared.example.org"], 25_000),
        ];
        let tls = Tls::new();
        tls.set_uploaded(&certs);
        tls.set_default(&default_cert, &default_key)
            .expect("default");
        let set = tls.resolver.set.load();
        let served = |sni: Option<&str>| set.lookup(sni).expect("a certificate");
        let der = |record: &Certificate| {
            CertificateDer::from_pem_slice(record.cert_pem.as_bytes()).expect("pem")
        };
        let default_der = CertificateDer::from_pem_slice(default_cert.as_bytes()).expect("pem");

        assert_eq!(
            leaf(&served(Some("www.example.com"))),
            der(&certs[0]).as_ref()
        );
        assert_eq!(
            leaf(&served(Some("WWW.example.com"))),
            der(&certs[0]).as_ref()
        );
        assert_eq!(
            leaf(&served(Some("api.example.com"))),
            der(&certs[1]).as_ref()
        );
        assert_eq!(leaf(&served(Some("a.b.example.com"))), default_der.as_ref());
        assert_eq!(leaf(&served(Some("example.com"))), default_der.as_ref());
        assert_eq!(
            leaf(&served(Some("shared.example.org"))),
            der(&certs[3]).as_ref()
        );
        assert_eq!(leaf(&served(None)), default_der.as_ref());
    }

    #[test]
    fn nothing_is_served_before_a_default_is_set() {
        let tls = Tls::new();
        assert!(
            tls.resolver
                .set
                .load()
                .lookup(Some("x.localhost"))
                .is_none()
        );
    }

    #[test]
    fn self_signed_covers_the_domain_and_its_wildcard() {
        let now = Millis::from_secs(1_800_000_000);
        let (cert, key) = self_signed("Example.TEST", now).expect("self-signed");
        let info = inspect(&cert, &key).expect("valid pair");
        assert_eq!(info.hostnames, ["*.example.test", "example.test"]);
        assert!(info.not_after > now + Millis::from_secs(9 * 365 * 24 * 60 * 60));
        assert!(matches!(
            self_signed("bad domain", now),
            Err(TlsError::InvalidDomain(_))
        ));
    }
}
