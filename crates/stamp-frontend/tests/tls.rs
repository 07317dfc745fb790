//! TLS termination against real sockets: a front end serving TLS on 127.0.0.1:0 in front of a
//! tiny hyper backend, certificates made here with rcgen, and rustls clients that either verify
//! against a custom root store (to prove the served chain is valid for the name) or accept any
//! certificate and report which one they got (to prove SNI selection).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{
    AcceptAnyCertificate, Scheme, bounded, collect_response, http1_backend, one_app, provider,
    serve_until_stopped,
};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};
use stamp_frontend::tls::{TlsError, inspect, self_signed};
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::{AppName, Certificate, Millis, SystemClock, WallClock};
use stamp_routes::RouteTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The front end's domain: apps are `<app>.stamp.test`, the default certificate `*.stamp.test`.
/// (Not `localhost`: clients refuse a wildcard with a single label after it, `*.localhost`.)
const DOMAIN: &str = "stamp.test";

/// Waits until the front end has counted `n` failed handshakes. The server may close the socket
/// just before it counts, so a client cannot simply read the counter once it sees the close.
async fn wait_for_failures(frontend: &Frontend, n: u64) {
    bounded("handshake failures to be counted", async {
        while frontend.tls_handshake_failures() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate and key as PEM, and the leaf as DER to compare with what a client was served.
struct Pair {
    cert_pem: String,
    key_pem: String,
    leaf: CertificateDer<'static>,
}

impl Pair {
    fn from_pem(cert_pem: String, key_pem: String) -> Pair {
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("certificate PEM");
        Pair {
            cert_pem,
            key_pem,
            leaf,
        }
    }

    /// A self-signed certificate for `names`, expiring `days` after the epoch.
    fn self_signed(names: &[&str], days: i64) -> Pair {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        params.not_after = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        Pair::from_pem(cert.pem(), key.serialize_pem())
    }

    /// A certificate for `names` issued by a fresh CA; the PEM chain is leaf then CA.
    fn issued(names: &[&str]) -> Pair {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        Pair::from_pem(
            format!("{}{}", cert.pem(), ca_cert.pem()),
            key.serialize_pem(),
        )
    }

    fn record(&self, app: &str, names: &[&str]) -> Certificate {
        let info = inspect(&self.cert_pem, &self.key_pem).expect("a valid pair");
        Certificate {
            app: AppName::parse(app).expect("app name"),
            thumbprint: info.thumbprint,
            hostnames: names.iter().map(|n| n.to_string()).collect(),
            not_after: info.not_after,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            created_at: Millis::ZERO,
        }
    }
}

/// The front end's default certificate, as `stamp up` makes it (valid from today, as clients
/// check with the real clock).
fn default_pair() -> Pair {
    let (cert_pem, key_pem) = self_signed(DOMAIN, SystemClock.now()).expect("self-signed default");
    Pair::from_pem(cert_pem, key_pem)
}

// ---------------------------------------------------------------------------------------------
// Backend, routes, front end

/// A backend that answers with the request's version and headers, one per line.
async fn start_backend() -> SocketAddr {
    http1_backend(|request: Request<Incoming>| async move {
        let mut text = format!("backend {:?}\n", request.version());
        for (name, value) in request.headers() {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    })
    .await
}

/// Routes `hello.stamp.test` to the backend at `addr`.
fn routes(addr: SocketAddr) -> RouteTable {
    one_app(DOMAIN, "hello", addr)
}

struct TestFrontend {
    frontend: Frontend,
    addr: SocketAddr,
    default: Pair,
    shutdown: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl TestFrontend {
    /// A TLS front end with the default certificate set and `hello` routed to a backend.
    async fn start(config: FrontendConfig) -> TestFrontend {
        let backend = start_backend().await;
        let frontend = Frontend::new(config);
        frontend.set_routes(routes(backend));
        let default = default_pair();
        frontend
            .set_default_certificate(&default.cert_pem, &default.key_pem)
            .expect("default certificate accepted");
        let (addr, shutdown, serving) = serve_until_stopped(&frontend, Scheme::Https).await;
        TestFrontend {
            frontend,
            addr,
            default,
            shutdown: Some(shutdown),
            serving,
        }
    }

    async fn started() -> TestFrontend {
        TestFrontend::start(FrontendConfig {
            domain: DOMAIN.to_string(),
            ..FrontendConfig::default()
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        bounded("serve_tls to return after shutdown", &mut self.serving)
            .await
            .expect("serve task")
            .expect("serve_tls result");
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client that trusts only `roots` and offers `alpn`.
fn verifying_client(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("root certificate");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that takes any certificate.
fn curious_client() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(ALL_VERSIONS)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = bounded("connect", TcpStream::connect(addr))
        .await
        .expect("connect to the front end");
    bounded(
        "TLS handshake",
        TlsConnector::from(Arc::clone(config)).connect(name, tcp),
    )
    .await
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("DNS name")
}

/// The leaf certificate the front end serves for `sni` (no SNI at all when `None`).
async fn served_leaf(addr: SocketAddr, sni: Option<&str>) -> CertificateDer<'static> {
    let name = match sni {
        Some(sni) => dns(sni),
        // rustls sends no SNI when connecting by address.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let stream = connect(addr, &curious_client(), name)
        .await
        .expect("handshake");
    let (_, session) = stream.get_ref();
    session.peer_certificates().expect("a certificate chain")[0].clone()
}

struct Answer {
    status: StatusCode,
    version: Version,
    text: String,
}

impl Answer {
    /// A request header the backend saw.
    fn seen(&self, header: &str) -> Option<&str> {
        let prefix = format!("{header}: ");
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
    }
}

async fn answer(response: Response<Incoming>) -> Answer {
    let (parts, body) = collect_response(response).await;
    Answer {
        status: parts.status,
        version: parts.version,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One HTTP/1.1 GET over `stream`.
async fn get_http1(stream: TlsStream<TcpStream>, host: &str) -> Answer {
    let (mut sender, connection) = bounded(
        "HTTP/1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = bounded("the response", sender.send_request(request))
        .await
        .expect("response");
    answer(response).await
}

/// One HTTP/2 GET over `stream`.
async fn get_http2(stream: TlsStream<TcpStream>, host: &str) -> Answer {
    let (mut sender, connection) = bounded(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = Request::get(format!("https://{host}/"))
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = bounded("the response", sender.send_request(request))
        .await
        .expect("response");
    answer(response).await
}

// ---------------------------------------------------------------------------------------------
// Certificate selection

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default() {
    let fe = TestFrontend::started().await;
    let www = Pair::issued(&["www.example.com"]);
    let wildcard = Pair::self_signed(&["*.example.com"], 30_000);
    let broken = Pair::self_signed(&["broken.example.com"], 30_000);
    let mut broken_record = broken.record("hello", &["broken.example.com"]);
    broken_record.key_pem = www.key_pem.clone();
    fe.frontend.set_certificates(&[
        www.record("hello", &["www.example.com"]),
        wildcard.record("hello", &["*.example.com"]),
        broken_record,
    ]);
    let default = &fe.default.leaf;

    // Exact beats the wildcard that also covers it; the chain comes as uploaded.
    assert_eq!(
        served_leaf(fe.addr, Some("www.example.com")).await,
        www.leaf
    );
    let stream = connect(fe.addr, &curious_client(), dns("www.example.com"))
        .await
        .expect("handshake");
    assert_eq!(
        stream.get_ref().1.peer_certificates().map(<[_]>::len),
        Some(2)
    );

    // A wildcard covers exactly one label.
    assert_eq!(
        served_leaf(fe.addr, Some("api.example.com")).await,
        wildcard.leaf
    );
    assert_eq!(
        served_leaf(fe.addr, Some("a.b.example.com")).await,
        *default
    );
    assert_eq!(served_leaf(fe.addr, Some("example.com")).await, *default);
    // A certificate whose key does not match is not served.
    assert_eq!(
        served_leaf(fe.addr, Some("broken.example.com")).await,
        wildcard.leaf
    );
    // Names nobody uploaded, and no SNI at all, get the default.
    assert_eq!(
        served_leaf(fe.addr, Some("other.localhost")).await,
        *default
    );
    assert_eq!(served_leaf(fe.addr, None).await, *default);
    fe.stop().await;
}

#[tokio::test]
async fn certificates_are_replaced_for_new_handshakes_and_the_latest_expiry_wins() {
    let fe = TestFrontend::started().await;
    let older = Pair::self_signed(&["shop.example.com"], 25_000);
    let newer = Pair::self_signed(&["shop.example.com"], 30_000);
    fe.frontend
        .set_certificates(&[older.record("hello", &["shop.example.com"])]);
    assert_eq!(
        served_leaf(fe.addr, Some("shop.example.com")).await,
        older.leaf
    );

    // Renewal: the new certificate is uploaded beside the old one, and wins on expiry.
    fe.frontend.set_certificates(&[
        newer.record("hello", &["shop.example.com"]),
        older.record("hello", &["shop.example.com"]),
    ]);
    assert_eq!(
        served_leaf(fe.addr, Some("shop.example.com")).await,
        newer.leaf
    );

    // Removing every upload falls back to the default.
    fe.frontend.set_certificates(&[]);
    assert_eq!(
        served_leaf(fe.addr, Some("shop.example.com")).await,
        fe.default.leaf
    );

    // A new default replaces the old one; an invalid default is refused and the old one kept.
    let replacement = Pair::self_signed(&["*.stamp.test"], 30_000);
    fe.frontend
        .set_default_certificate(&replacement.cert_pem, &replacement.key_pem)
        .expect("valid default");
    assert_eq!(served_leaf(fe.addr, None).await, replacement.leaf);
    let refused = fe
        .frontend
        .set_default_certificate(&replacement.cert_pem, &older.key_pem);
    assert!(matches!(refused, Err(TlsError::KeyMismatch)), "{refused:?}");
    assert_eq!(served_leaf(fe.addr, None).await, replacement.leaf);
    fe.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP over TLS

#[tokio::test]
async fn http1_over_tls_reaches_the_app_with_a_trusted_default_certificate() {
    let fe = TestFrontend::started().await;
    let client = verifying_client(&[&fe.default.leaf], ALL_VERSIONS, &[b"http/1.1"]);
    let stream = connect(fe.addr, &client, dns("hello.stamp.test"))
        .await
        .expect("the self-signed default verifies for hello.stamp.test");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answer = get_http1(stream, "hello.stamp.test").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.text.starts_with("backend"), "{}", answer.text);
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(
        answer.seen("x-forwarded-proto"),
        Some("https"),
        "{}",
        answer.text
    );
    fe.stop().await;
}

#[tokio::test]
async fn alpn_h2_serves_http2_over_tls() {
    let fe = TestFrontend::started().await;
    let client = verifying_client(&[&fe.default.leaf], ALL_VERSIONS, &[b"h2", b"http/1.1"]);
    let stream = connect(fe.addr, &client, dns("hello.stamp.test"))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let answer = get_http2(stream, "hello.stamp.test").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.version, Version::HTTP_2);
    assert!(answer.text.starts_with("backend"), "{}", answer.text);
    fe.stop().await;
}

#[tokio::test]
async fn tls12_and_tls13_both_work_and_sessions_resume() {
    let fe = TestFrontend::started().await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        // One client config: it keeps the session (ticket) from the first connection.
        let client = verifying_client(&[&fe.default.leaf], &[version], &[b"http/1.1"]);
        let first = connect(fe.addr, &client, dns("hello.stamp.test"))
            .await
            .expect("handshake");
        assert_eq!(first.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // TLS 1.3 tickets arrive after the handshake: a request makes sure they were read.
        let answer = get_http1(first, "hello.stamp.test").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{expected:?}: {}",
            answer.text
        );

        let second = connect(fe.addr, &client, dns("hello.stamp.test"))
            .await
            .expect("handshake");
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{expected:?}"
        );
        let answer = get_http1(second, "hello.stamp.test").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{expected:?}: {}",
            answer.text
        );
    }
    fe.stop().await;
}

/// A TLS 1.1 ClientHello (no `supported_versions` extension), written by hand since rustls
/// clients cannot speak 1.1.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // no session id
    // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x09]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression only
    // signature_algorithms: ecdsa_secp256r1_sha256, so that the server could sign and the
    // version is the only reason left to refuse.
    body.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let len = u32::try_from(body.len()).expect("short");
    let mut handshake = vec![0x01]; // client_hello
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let len = u16::try_from(handshake.len()).expect("short");
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Reads until the server closes the connection (bounded), returning everything it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    // A reset also counts as closed.
    let _ = bounded(
        "the server to close the connection",
        stream.read_to_end(&mut received),
    )
    .await;
    received
}

#[tokio::test]
async fn a_tls11_client_is_refused_with_a_protocol_version_alert() {
    let fe = TestFrontend::started().await;
    let mut tcp = TcpStream::connect(fe.addr).await.expect("connect");
    tcp.write_all(&tls11_client_hello())
        .await
        .expect("send hello");
    let received = read_until_closed(&mut tcp).await;
    // One alert record: content type 21, level fatal (2), description protocol_version (70).
    assert!(received.len() >= 7, "{received:?}");
    assert_eq!(received[0], 0x15, "expected an alert, got {received:?}");
    assert_eq!(&received[5..7], &[2, 70], "{received:?}");
    wait_for_failures(&fe.frontend, 1).await;

    // The loop goes on serving good clients.
    let client = verifying_client(&[&fe.default.leaf], ALL_VERSIONS, &[b"http/1.1"]);
    let stream = connect(fe.addr, &client, dns("hello.stamp.test"))
        .await
        .expect("handshake after a refused one");
    assert_eq!(
        get_http1(stream, "hello.stamp.test").await.status,
        StatusCode::OK
    );
    fe.stop().await;
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_closed_after_the_header_read_timeout() {
    let fe = TestFrontend::start(FrontendConfig {
        domain: DOMAIN.to_string(),
        header_read_timeout: Duration::from_millis(300),
        ..FrontendConfig::default()
    })
    .await;

    // Silent from the start.
    let mut silent = TcpStream::connect(fe.addr).await.expect("connect");
    assert!(read_until_closed(&mut silent).await.is_empty());

    // Sends the first bytes of a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(fe.addr).await.expect("connect");
    let hello = tls11_client_hello();
    stalled.write_all(&hello[..10]).await.expect("send part");
    assert!(read_until_closed(&mut stalled).await.is_empty());

    wait_for_failures(&fe.frontend, 2).await;
    fe.stop().await;
}

#[tokio::test]
async fn without_any_certificate_handshakes_fail_but_serving_goes_on() {
    let frontend = Frontend::new(FrontendConfig::default());
    let (addr, shutdown, serving) = serve_until_stopped(&frontend, Scheme::Https).await;
    let failed = connect(addr, &curious_client(), dns("hello.localhost")).await;
    assert!(failed.is_err(), "handshake succeeded without a certificate");
    wait_for_failures(&frontend, 1).await;

    let default = default_pair();
    frontend
        .set_default_certificate(&default.cert_pem, &default.key_pem)
        .expect("default");
    assert_eq!(
        served_leaf(addr, Some("hello.localhost")).await,
        default.leaf
    );

    let _ = shutdown.send(());
    bounded("serve_tls to return", serving)
        .await
        .expect("task")
        .expect("serve_tls");
}

// ---------------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_reads_names_expiry_and_thumbprint() {
    let pair = Pair::self_signed(&["Www.Example.com", "*.example.com"], 20_000);
    let info = inspect(&pair.cert_pem, &pair.key_pem).expect("valid");
    assert_eq!(info.hostnames, ["www.example.com", "*.example.com"]);
    assert_eq!(info.not_after, Millis::from_secs(20_000 * 24 * 60 * 60));
    assert_eq!(info.thumbprint.len(), 64);
    assert!(info.thumbprint.bytes().all(|b| b.is_ascii_hexdigit()));

    // A chain (leaf first) is read by its leaf.
    let chain = Pair::issued(&["shop.example.com"]);
    let info = inspect(&chain.cert_pem, &chain.key_pem).expect("valid chain");
    assert_eq!(info.hostnames, ["shop.example.com"]);

    // No subject alternative name: the common name stands in.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "legacy.example.com");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let info = inspect(&cert.pem(), &key.serialize_pem()).expect("CN only");
    assert_eq!(info.hostnames, ["legacy.example.com"]);

    // An expired certificate is accepted; the caller sees when it expired.
    let expired = Pair::self_signed(&["old.example.com"], 1);
    let info = inspect(&expired.cert_pem, &expired.key_pem).expect("expired is readable");
    assert_eq!(info.not_after, Millis::from_secs(24 * 60 * 60));
}

#[test]
fn inspect_says_what_is_wrong() {
    let pair = Pair::self_signed(&["www.example.com"], 20_000);
    let other = Pair::self_signed(&["www.example.com"], 20_000);
    let check = |cert: &str, key: &str, expected: &str| {
        let error = inspect(cert, key).expect_err("should be refused");
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "{message:?} should say {expected:?}"
        );
    };
    check(
        &pair.cert_pem,
        &other.key_pem,
        "the private key does not match the certificate",
    );
    check("garbage", &pair.key_pem, "no certificate found in the PEM");
    check("", &pair.key_pem, "no certificate found in the PEM");
    check(
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        &pair.key_pem,
        "could not read the certificate PEM",
    );
    check(
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        &pair.key_pem,
        "the certificate could not be parsed",
    );
    check(&pair.cert_pem, "", "no private key found in the PEM");
    // A certificate file given twice: still no key.
    check(
        &pair.cert_pem,
        &pair.cert_pem,
        "no private key found in the PEM",
    );
    check(
        &pair.cert_pem,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
        "the key is encrypted; provide an unencrypted PEM key",
    );
    check(
        &pair.cert_pem,
        "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
        "the private key cannot be used for TLS",
    );

    // Neither a DNS name nor a host-like common name.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "My Certificate");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    check(
        &cert.pem(),
        &key.serialize_pem(),
        "certificate has no DNS names",
    );
}
