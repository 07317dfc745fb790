//! Stamp's front end: the L7 proxy every app request goes through. It resolves the Host to an
//! app in an immutable routing snapshot ([`stamp_routes::RouteTable`]), applies the app's
//! front-end rules (access restrictions, HTTPS only, body limit), picks one of its ready
//! instances (affinity cookie, else round robin or least requests), and forwards the request over
//! a pooled keep-alive connection, streaming bodies both ways (and WebSockets).
//!
//! The controller publishes snapshots with [`Frontend::set_routes`], an atomic swap: the request
//! path never takes a lock or waits on the controller. The worker agent asks
//! [`Frontend::is_drained`] before it stops an instance that left rotation.
//!
//! Errors the front end answers itself (no such app, no ready instance, instance failures) are
//! [`FrontendError`]s: small HTML pages with an `X-Stamp-Error` code.
//!
//! [`Frontend::serve_tls`] terminates TLS, choosing the certificate by SNI among those given to
//! [`Frontend::set_certificates`] and [`Frontend::set_default_certificate`] ([`tls`]).

mod affinity;
mod body;
mod budget;
mod conn;
mod cookie;
mod error;
mod forwarded;
mod metrics;
mod proxy;
mod ramp;
mod server;
pub mod tls;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stamp_routes::RouteTable;
use tokio::net::TcpListener;

pub use body::Lingering;
pub use error::{Fault, FrontendError, X_STAMP_ERROR};
pub use metrics::AppMetrics;
pub use tls::{CertInfo, TlsError};

/// How the front end serves and forwards.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// Time to open a connection to an instance before trying the next one. Default 5 s. (How
    /// long the whole response head may take is the app's `SiteConfig::request_timeout`.)
    pub connect_timeout: Duration,
    /// A client must send a request's headers within this time (and its first request within
    /// this time of connecting), else the connection is closed. Default 30 s. This is also the
    /// idle limit of HTTP/1.1 keep-alive connections: hyper starts the timer as soon as a
    /// connection waits for its next request, and offers no separate idle timeout.
    pub header_read_timeout: Duration,
    /// The port HTTPS is served on, for redirects of apps that are HTTPS only. `None` means 443.
    pub https_port: Option<u16>,
    /// Signs ARR affinity cookies. `None`: a random key per front end, so cookies from before a
    /// restart no longer pin (they are replaced on the next response).
    pub affinity_key: Option<[u8; 32]>,
    /// Peers whose `X-Forwarded-For` is believed (a load balancer in front of Stamp). Any other
    /// peer is the client, and what it sends as `X-Forwarded-For` is replaced. Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The largest request body passed on, in bytes; larger gets 413 `request-too-large`.
    /// Default 100 MiB.
    pub max_request_body: u64,
    /// After shutdown, how long open connections may take to finish their requests before
    /// they are closed anyway. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for FrontendConfig {
    fn default() -> FrontendConfig {
        FrontendConfig {
            domain: "localhost".to_string(),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            https_port: None,
            affinity_key: None,
            trusted_proxies: Vec::new(),
            max_request_body: 100 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Handle to a front end; cheap to clone, every clone serves the same routes.
#[derive(Clone)]
pub struct Frontend {
    inner: Arc<proxy::Inner>,
    tls: Arc<tls::Tls>,
}

impl Frontend {
    /// A front end that routes nothing until [`Frontend::set_routes`] is called.
    pub fn new(config: FrontendConfig) -> Frontend {
        Frontend {
            inner: Arc::new(proxy::Inner::new(config)),
            tls: Arc::new(tls::Tls::new()),
        }
    }

    pub fn config(&self) -> &FrontendConfig {
        &self.inner.config
    }

    /// Publishes a new routing snapshot. Requests already under way finish with the snapshot
    /// they started with; new ones see this one. Never blocks a request.
    pub fn set_routes(&self, table: RouteTable) {
        self.inner.set_routes(table);
    }

    /// True when `addr` is in no route of the current snapshot and no request is in flight to it
    /// (nor could still be sent to it by a retry under an older snapshot). The worker agent polls
    /// this before it sends SIGTERM to a draining instance.
    pub fn is_drained(&self, addr: SocketAddr) -> bool {
        self.inner.is_drained(addr)
    }

    /// Requests to `addr` whose response has not finished yet.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.inner.in_flight(addr)
    }

    /// Appends the request metrics in Prometheus text format: `stamp_http_requests_total`,
    /// `stamp_http_request_duration_seconds`, `stamp_http_in_flight`,
    /// `stamp_http_received_bytes_total`, `stamp_http_sent_bytes_total`,
    /// `stamp_frontend_errors_total`.
    pub fn render_metrics(&self, out: &mut String) {
        self.inner.render_metrics(out);
    }

    /// Per-app totals (requests, 5xx, in flight, bytes, latency), sorted by app.
    pub fn app_metrics(&self) -> Vec<AppMetrics> {
        self.inner.app_metrics()
    }

    /// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` until `shutdown` resolves; then
    /// closes the listener, lets open connections finish their requests for up to
    /// [`FrontendConfig::shutdown_grace`], closes the rest, and returns. Accept errors are
    /// logged and retried rather than returned: a front end that stops on a full file table
    /// would turn a transient overload into an outage.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        server::serve(
            Arc::clone(&self.inner),
            server::Transport::Plain,
            listener,
            shutdown,
        )
        .await
    }

    /// As [`Frontend::serve`], after a TLS handshake on each connection: TLS 1.2 or 1.3, ALPN
    /// `h2` or `http/1.1`, the certificate chosen by SNI. The handshake and the first request
    /// together must complete within [`FrontendConfig::header_read_timeout`]. A failed
    /// handshake closes that connection only (see [`Frontend::tls_handshake_failures`]).
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        server::serve(
            Arc::clone(&self.inner),
            server::Transport::Tls(Arc::clone(&self.tls)),
            listener,
            shutdown,
        )
        .await
    }

    /// Sets the certificate served when no uploaded certificate covers the requested name, or
    /// the client sent no SNI (typically the wildcard for `*.<domain>`). Until one is set, such
    /// handshakes fail. An invalid pair is refused and the previous default kept.
    pub fn set_default_certificate(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        self.tls.set_default(cert_pem, key_pem)
    }

    /// Replaces the uploaded certificates, each served for its `hostnames` (exact names, and
    /// `*.parent` for one label under `parent`); where several cover a name, the one expiring
    /// last. Invalid ones are skipped with a warning. Handshakes under way are not disturbed.
    pub fn set_certificates(&self, certs: &[stamp_model::Certificate]) {
        self.tls.set_uploaded(certs);
    }

    /// TLS handshakes that failed or timed out since the front end started.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls.handshake_failures()
    }
}
