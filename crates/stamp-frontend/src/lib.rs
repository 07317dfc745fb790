//! Stamp's front end: the L7 proxy every app request goes through. It resolves the Host to an
//! app in an immutable routing snapshot ([`stamp_routes::RouteTable`]), picks one of the app's
//! ready instances round robin, and forwards the request over a pooled keep-alive connection,
//! streaming bodies both ways.
//!
//! The controller publishes snapshots with [`Frontend::set_routes`], an atomic swap: the request
//! path never takes a lock or waits on the controller. The worker agent asks
//! [`Frontend::is_drained`] before it stops an instance that left rotation.
//!
//! Errors the front end answers itself (no such app, no ready instance, instance failures) are
//! [`FrontendError`]s: small HTML pages with an `X-Stamp-Error` code.

mod body;
mod conn;
mod error;
mod proxy;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stamp_routes::RouteTable;
use tokio::net::TcpListener;

pub use error::{Fault, FrontendError, X_STAMP_ERROR};

/// How the front end serves and forwards.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// The instance's whole response head must arrive within this time (connecting and any
    /// retries included), else the client gets 504 `instance-timeout`. Default 230 s, as Azure
    /// App Service.
    pub request_timeout: Duration,
    /// Time to open a connection to an instance before trying the next one. Default 5 s.
    pub connect_timeout: Duration,
    /// A client must send a request's headers within this time (and its first request within
    /// this time of connecting), else the connection is closed. Default 30 s.
    pub header_read_timeout: Duration,
    /// After shutdown, how long open connections may take to finish their requests before
    /// they are closed anyway. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for FrontendConfig {
    fn default() -> FrontendConfig {
        FrontendConfig {
            domain: "localhost".to_string(),
            request_timeout: Duration::from_secs(230),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Handle to a front end; cheap to clone, every clone serves the same routes.
#[derive(Clone)]
pub struct Frontend {
    inner: Arc<proxy::Inner>,
}

impl Frontend {
    /// A front end that routes nothing until [`Frontend::set_routes`] is called.
    pub fn new(config: FrontendConfig) -> Frontend {
        Frontend {
            inner: Arc::new(proxy::Inner::new(config)),
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
        server::serve(Arc::clone(&self.inner), listener, shutdown).await
    }
}
