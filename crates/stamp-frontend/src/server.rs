//! The accept loop and one task per connection: HTTP/1.1, or HTTP/2 with prior knowledge
//! (h2c), told apart by hyper-util from the first bytes. On shutdown the listener closes at once
//! and open connections get a bounded grace period to finish their requests.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::ConnInfo;
use crate::proxy::Inner;

/// Pause after an accept error that is not about one connection (typically out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inner.config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        Arc::clone(&inner),
                        Arc::clone(&builder),
                        stream,
                        peer,
                        stopped.clone(),
                    ));
                }
                Err(error) => on_accept_error(error).await,
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => log_task_end(done),
        }
    }

    // Refuse new connections from here on.
    drop(listener);
    stop.send_replace(());
    let grace = inner.config.shutdown_grace;
    let finished = tokio::time::timeout(grace, async {
        while let Some(done) = connections.join_next().await {
            log_task_end(done);
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            ?grace,
            "closing connections still open after the shutdown grace period"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    match done {
        Err(error) if error.is_panic() => tracing::error!(%error, "a connection task panicked"),
        _ => {}
    }
}

async fn on_accept_error(error: io::Error) {
    match error.kind() {
        // The client went away before we accepted: nothing to do.
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => {
            tracing::debug!(%error, "failed to accept a connection");
        }
        _ => {
            tracing::warn!(%error, "failed to accept connections; pausing briefly");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
    }
}

async fn serve_connection(
    inner: Arc<Inner>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "failed to set TCP_NODELAY");
    }
    let conn = Arc::new(ConnInfo::plain(peer));
    let header_read_timeout = inner.config.header_read_timeout;
    // hyper's header read timeout starts once HTTP/1 is detected; until then (and for an HTTP/2
    // connection that never sends a request) nothing bounds a silent client, so the connection
    // watches for its first request itself.
    let seen_request = Arc::new(AtomicBool::new(false));
    let service = {
        let seen_request = Arc::clone(&seen_request);
        service_fn(move |request| {
            seen_request.store(true, Ordering::Relaxed);
            let inner = Arc::clone(&inner);
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(inner.handle(request, &conn).await) }
        })
    };
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut first_request_deadline = pin!(tokio::time::sleep(header_read_timeout));
    let mut waiting_for_first_request = true;
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %crate::proxy::Chain(&*error), "connection ended with an error");
                }
                return;
            }
            // Also resolves (with an error) if `serve` is gone: stop then too.
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut first_request_deadline, if waiting_for_first_request => {
                waiting_for_first_request = false;
                if !seen_request.load(Ordering::Relaxed) && !stopping {
                    tracing::debug!(%peer, "closing a connection that sent no request in time");
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
