//! Helpers the integration tests of `stamp-frontend` share: bounded waits, route tables, test
//! backends and a front end on 127.0.0.1:0, and client-side plumbing (whole responses, rustls).

// Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::{AppName, InstanceState, ObservedInstance, SiteConfig};
use stamp_routes::RouteTable;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this, so a failure fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Routes

pub fn app(name: &str) -> AppName {
    AppName::parse(name).expect("valid app name")
}

pub fn instance(app_name: &str, worker: u32, state: InstanceState, port: u16) -> ObservedInstance {
    let spec = stamp_model::fixtures::spec(app_name, worker, 1);
    stamp_model::fixtures::observed(&format!("{app_name}-web-{worker}"), spec, state, port)
}

/// The app `app_name` under `domain`, with the default site and one ready instance
/// (`<app_name>-web-0`) at `addr`; any other host is the front end's 404.
pub fn one_app(domain: &str, app_name: &str, addr: SocketAddr) -> RouteTable {
    let sites = [(app(app_name), SiteConfig::default())];
    let instances = [instance(app_name, 0, InstanceState::Ready, addr.port())];
    RouteTable::build(domain, &sites, &instances)
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A server on 127.0.0.1:0 that hands each connection it accepts, with its number (0, 1, ... in
/// the order accepted), to `serve` and runs what that returns in a task of its own, until the
/// test's runtime ends.
pub async fn tcp_backend<F, Fut>(mut serve: F) -> SocketAddr
where
    F: FnMut(usize, TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(conn, stream));
            conn += 1;
        }
    });
    addr
}

/// A hyper HTTP/1.1 backend on 127.0.0.1:0 that answers each request with `answer(request)`.
pub async fn http1_backend<F, Fut, B>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tcp_backend(move |_, stream| {
        let service = service_fn(answer.clone());
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The front end

/// Which of the front end's servers a listener gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// [`Frontend::serve`].
    Http,
    /// [`Frontend::serve_tls`].
    Https,
}

/// Serves `frontend` on 127.0.0.1:0 (as `scheme` says) in a task of its own until `shutdown`
/// resolves: the address, and the task.
pub async fn serve_frontend(
    frontend: &Frontend,
    scheme: Scheme,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind front end");
    let addr = listener.local_addr().expect("front end addr");
    let frontend = frontend.clone();
    let serving = tokio::spawn(async move {
        match scheme {
            Scheme::Http => frontend.serve(listener, shutdown).await,
            Scheme::Https => frontend.serve_tls(listener, shutdown).await,
        }
    });
    (addr, serving)
}

/// [`serve_frontend`] until the sender this returns is used or dropped.
pub async fn serve_until_stopped(
    frontend: &Frontend,
    scheme: Scheme,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let (shutdown, stop) = oneshot::channel::<()>();
    let (addr, serving) = serve_frontend(frontend, scheme, async move {
        let _ = stop.await;
    })
    .await;
    (addr, shutdown, serving)
}

/// A front end serving plain HTTP on 127.0.0.1:0 until `shutdown` is sent, or dropped with the
/// rest of it.
pub struct TestFrontend {
    pub frontend: Frontend,
    pub addr: SocketAddr,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub serving: JoinHandle<std::io::Result<()>>,
}

impl TestFrontend {
    pub async fn start(config: FrontendConfig, routes: RouteTable) -> TestFrontend {
        let frontend = Frontend::new(config);
        frontend.set_routes(routes);
        let (addr, shutdown, serving) = serve_until_stopped(&frontend, Scheme::Http).await;
        TestFrontend {
            frontend,
            addr,
            shutdown: Some(shutdown),
            serving,
        }
    }

    pub async fn with_routes(routes: RouteTable) -> TestFrontend {
        TestFrontend::start(FrontendConfig::default(), routes).await
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A response's head and its whole body.
pub async fn collect_response(response: Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let body = bounded("a response body", body.collect())
        .await
        .expect("a whole body")
        .to_bytes();
    (parts, body)
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client that trusts `leaf` (the front end's self-signed certificate).
pub fn tls_client(leaf_pem: &str) -> tokio_rustls::TlsConnector {
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).expect("certificate PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf).expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Accepts any certificate: for tests about which certificate is served, or about what happens
/// after the handshake, not about trust. Signatures are still checked, so the server proves it
/// holds the key.
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
