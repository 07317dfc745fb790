//! The accept loop and one task per connection, for plain TCP and for TLS alike: a TLS
//! connection first completes its handshake (in its own task, so a slow client never holds up
//! the loop), then both serve HTTP/1.1 or HTTP/2 the same way, told apart by hyper-util from the
//! first bytes (h2c with prior knowledge in plain text; over TLS the client sends the h2 preface
//! exactly when ALPN chose `h2`). On shutdown the listener closes at once and open connections
//! get a bounded grace period to finish their requests.

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::conn::ConnInfo;
use crate::proxy::{Ended, Inner, Rewind};
use crate::tls::Tls;

/// Pause after an accept error that is not about one connection (typically out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What a listener speaks before HTTP.
#[derive(Clone)]
pub(crate) enum Transport {
    Plain,
    Tls(Arc<Tls>),
}

pub(crate) async fn serve(
    inner: Arc<Inner>,
    transport: Transport,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inner.config.header_read_timeout)
        // A request head must fit in the read buffer: larger ones get 431 from hyper.
        .max_buf_size(crate::proxy::MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(crate::proxy::MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);

    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        Arc::clone(&inner),
                        Arc::clone(&builder),
                        transport.clone(),
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

async fn connection(
    inner: Arc<Inner>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    transport: Transport,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "failed to set TCP_NODELAY");
    }
    // One deadline from accept: the TLS handshake and the first request together must fit in
    // the header read timeout, so a client that goes silent at any point before its first
    // request cannot hold the socket.
    let first_request_by = Instant::now() + inner.config.header_read_timeout;
    match transport {
        Transport::Plain => {
            let conn = ConnInfo::plain(peer);
            serve_http1(inner, builder, stream, conn, first_request_by, stop).await;
        }
        Transport::Tls(tls) => {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout_at(first_request_by, tls.accept(stream, peer)) => handshake,
                // Nothing was asked on this connection yet: nothing to finish.
                _ = stop.changed() => return,
            };
            match handshake {
                Ok(Some((stream, conn))) => {
                    // HTTP/2 (chosen by ALPN) is hyper's from the start.
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        serve_connection(inner, builder, stream, conn, first_request_by, stop)
                            .await;
                        return;
                    }
                    serve_http1(inner, builder, stream, conn, first_request_by, stop).await;
                }
                // Logged and counted by `accept`.
                Ok(None) => {}
                Err(_elapsed) => {
                    tracing::debug!(%peer, "closing a connection that did not complete the TLS handshake in time");
                    tls.count_failure();
                }
            }
        }
    }
}

/// An HTTP/1.1 connection (or one that may be: hyper tells h2c apart): the fast path's for as
/// long as its requests take it, then hyper's with the bytes read so far.
async fn serve_http1<IO>(
    inner: Arc<Inner>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stream: IO,
    conn: ConnInfo,
    first_request_by: Instant,
    mut stop: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ended = inner
        .serve_fast(&mut stream, &conn, first_request_by, &mut stop)
        .await;
    if let Ended::HandOff(read) = ended {
        // The first-request deadline is over once a request is under way: hyper's header read
        // timeout bounds the one it takes first.
        let by = first_request_by.max(Instant::now() + inner.config.header_read_timeout);
        let stream = Rewind::new(read, stream);
        serve_connection(inner, builder, stream, conn, by, stop).await;
    }
}

async fn serve_connection<IO>(
    inner: Arc<Inner>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: IO,
    conn: ConnInfo,
    first_request_by: Instant,
    mut stop: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
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
    let mut connection =
        pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let mut first_request_deadline = pin!(tokio::time::sleep_until(first_request_by));
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
