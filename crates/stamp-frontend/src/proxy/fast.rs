//! The HTTP/1.1 fast path: the common request, proxied by hand.
//!
//! A keep-alive HTTP/1.1 request without a body, for an app with an instance to serve it and no
//! rule in the way, is most of what a front end does. For it, the connection's task reads the
//! head into one buffer, checks and routes it, writes the instance one request head (the
//! client's headers as they came, minus those the front end owns, plus its forwarding headers),
//! reads the response head, writes the client one head, and copies the body through, framed as
//! the instance framed it. No `Request` or `HeaderMap` is built, nothing is spawned, and the
//! connection to the instance comes from, and goes back to, the instance's lock-free pool.
//!
//! Everything else is handed to hyper with the bytes read so far, for the rest of the
//! connection: a request with a body, an upgrade, `Expect`, anything unusual in its framing
//! (`Transfer-Encoding`, several `Content-Length`s, bare LF, obsolete line folding, an
//! absolute-form target), HTTP/1.0, HTTP/2, a peer that is a trusted proxy, and every request
//! the front end answers itself (no such app, access denied, HTTPS only, slot routing, no ready
//! instance, an instance that cannot be reached). So the fast path only ever forwards requests
//! hyper would have parsed the same way, and every error page, retry and edge case is the one
//! the general path has.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use stamp_routes::Lookup;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{AppCx, Attempt, Inner, Instance, UPSTREAM_IDLE, X_REQUEST_ID};
use crate::body::Tracker;
use crate::conn::ConnInfo;
use crate::error::FrontendError;
use crate::metrics;
use crate::{affinity, cookie, forwarded};

/// Headers a fast request may have; more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// A head not complete by this size goes to hyper, which answers 431 beyond its own limit.
const HEAD_LIMIT: usize = 16 * 1024;
/// Headers an instance's response may have, and the size of its head.
const MAX_RESPONSE_HEADERS: usize = 100;
const RESPONSE_HEAD_LIMIT: usize = super::MAX_HEADER_BYTES;
/// Idle connections an instance's pool keeps (besides those client connections hold), as
/// nginx's `keepalive` directive bounds its upstream pool.
pub(super) const IDLE_PER_INSTANCE: usize = 128;
/// Room made in a buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// How a connection left the fast path.
pub(crate) enum Ended {
    Closed,
    /// hyper serves the rest of the connection, starting with these bytes.
    HandOff(Bytes),
}

/// What became of one request.
enum Step {
    Next,
    Close,
    /// Not answered, not consumed: hyper takes it.
    HandOff,
}

/// A keep-alive connection to an instance.
#[derive(Debug)]
pub(crate) struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

impl Upstream {
    /// Whether the connection may carry another request: not idle for too long, not closed by
    /// the instance, and nothing unread on it (bytes after the end of the last response would
    /// be taken for the next one's). The read costs no syscall unless the runtime saw the
    /// socket become readable since the last response drained it.
    fn usable(&mut self, now: Instant) -> bool {
        if now.duration_since(self.since) >= UPSTREAM_IDLE {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How an instance's response body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    Close,
}

/// One client connection's state on the fast path.
struct Conn<'a> {
    info: &'a ConnInfo,
    peer: std::net::IpAddr,
    /// The peer as an `X-Forwarded-For` value.
    peer_value: http::HeaderValue,
    out: Vec<u8>,
    /// What the client sent while its request was waiting for the instance: the start of its
    /// next request.
    early: BytesMut,
    /// Shutdown: a response under way when it begins says it is the last.
    stop: watch::Receiver<()>,
}

impl Inner {
    /// Serves a connection's HTTP/1.1 requests for as long as they take the fast path.
    pub(crate) async fn serve_fast<IO>(
        &self,
        io: &mut IO,
        info: &ConnInfo,
        first_request_by: Instant,
        stop: &mut watch::Receiver<()>,
    ) -> Ended
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = info.peer_ip();
        if forwarded::peer_trusted(peer, &self.config.trusted_proxies) {
            return Ended::HandOff(Bytes::new());
        }
        let mut conn = Conn {
            info,
            peer,
            peer_value: forwarded::ip_value(peer),
            out: Vec::with_capacity(1024),
            early: BytesMut::new(),
            stop: stop.clone(),
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let timer = tokio::time::sleep_until(first_request_by);
        tokio::pin!(timer);
        loop {
            // A whole head, or the reason there is none.
            loop {
                if !buf.is_empty() {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut request = httparse::Request::new(&mut headers);
                    match request.parse(&buf) {
                        Ok(httparse::Status::Complete(len)) => {
                            let step = self
                                .exchange(io, &mut conn, &request, &buf[..len], timer.as_mut())
                                .await;
                            match step {
                                Step::Next => {
                                    buf.advance(len);
                                    buf.extend_from_slice(&conn.early);
                                    conn.early.clear();
                                    break;
                                }
                                Step::Close => {
                                    // FIN after the response (and TLS close_notify), rather
                                    // than a reset if the client sent more.
                                    let _ = io.shutdown().await;
                                    return Ended::Closed;
                                }
                                Step::HandOff => return Ended::HandOff(buf.freeze()),
                            }
                        }
                        Ok(httparse::Status::Partial) if buf.len() < HEAD_LIMIT => {}
                        _ => return Ended::HandOff(buf.freeze()),
                    }
                }
                buf.reserve(READ_CHUNK);
                tokio::select! {
                    read = io.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => return Ended::Closed,
                        Ok(_) => {}
                    },
                    () = timer.as_mut() => {
                        tracing::debug!(peer = %info.peer, "closing a connection that sent no complete request in time");
                        return Ended::Closed;
                    }
                    // Idle or half a head: nothing was asked yet, nothing to finish.
                    _ = stop.changed() => return Ended::Closed,
                }
            }
            if has_changed(stop) {
                return Ended::Closed;
            }
            timer
                .as_mut()
                .reset(Instant::now() + self.config.header_read_timeout);
        }
    }

    /// One request whose head is `head`, parsed as `request`.
    async fn exchange<IO>(
        &self,
        io: &mut IO,
        conn: &mut Conn<'_>,
        request: &httparse::Request<'_, '_>,
        head: &[u8],
        mut timer: Pin<&mut Sleep>,
    ) -> Step
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = Instant::now();
        let Some(mut vetted) = vet(request, head) else {
            return Step::HandOff;
        };
        let snapshot = self.routes.load_full();
        if let Some(tls) = &conn.info.tls
            && let Some(sni) = &tls.sni
            && !stamp_routes::host_name(vetted.host).is_some_and(|n| n.eq_ignore_ascii_case(sni))
        {
            return Step::HandOff;
        }
        let Lookup::App(route) = snapshot.table.lookup(vetted.host) else {
            return Step::HandOff;
        };
        let state = &snapshot.apps[route.index()];
        let site = &*route.site;
        if !route.ramp.is_empty()
            || !site.allows(conn.peer)
            || site.stopped
            || (site.https_only && conn.info.tls.is_none())
            || route.backends.is_empty()
            || state.instances.is_empty()
        {
            return Step::HandOff;
        }
        let pinned = site
            .client_affinity
            .then(|| {
                let cookies = request
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                    // As `HeaderValue::to_str`: visible ASCII only, else the header is skipped.
                    .filter(|h| {
                        h.value
                            .iter()
                            .all(|&b| b == b'\t' || (32..127).contains(&b))
                    })
                    .filter_map(|h| std::str::from_utf8(h.value).ok());
                state.pinned(affinity::token_in(cookie::pairs_in(cookies)))
            })
            .flatten();
        let Some(first) = state.first(route, pinned) else {
            return Step::HandOff;
        };
        let request_id = match vetted.request_id.take() {
            Some(id) => id,
            None => super::new_request_id(),
        };
        conn.out.clear();
        upstream_head(
            &mut conn.out,
            request,
            &vetted,
            conn.info,
            &conn.peer_value,
            &request_id,
        );

        let app = AppCx {
            route,
            state,
            host: vetted.host,
            domain: snapshot.table.domain(),
        };
        let close = vetted.close || has_changed(&conn.stop);
        let reply = Reply {
            start,
            request_id: &request_id,
            head_only: vetted.head,
            close,
        };

        // Sent, or on to the next instance as the general path would: the request has no body.
        // Connecting counts against the app's request timeout too.
        let timeout = site.request_timeout.as_duration();
        let deadline = start + timeout;
        let count = state.instances.len();
        let (mut index, mut tried) = (first, 1);
        let (instance, attempt, mut upstream) = loop {
            let instance = &state.instances[index];
            let attempt = Attempt::start(instance);
            let error = match self.send(conn, instance, deadline).await {
                Ok(upstream) => break (instance, attempt, upstream),
                Err(error) => error,
            };
            drop(attempt);
            if Instant::now() >= deadline {
                tracing::warn!(app = %route.app, ?timeout, "no instance could be reached in time");
                let error = FrontendError::InstanceTimeout;
                return self.fail(io, conn, &app, error, &reply).await;
            }
            let why = if tried >= count {
                "failed to connect to the instance"
            } else if !self.may_retry(state) {
                "failed to connect to the instance; not retrying: the app's retry budget is spent"
            } else {
                tracing::debug!(app = %route.app, instance = %instance.id, addr = %instance.addr, %error, "failed to connect to the instance; trying the next one");
                index = (index + 1) % count;
                tried += 1;
                continue;
            };
            tracing::warn!(app = %route.app, instance = %instance.id, addr = %instance.addr, %error, "{why}");
            let unreachable = FrontendError::InstanceUnreachable;
            return self.fail(io, conn, &app, unreachable, &reply).await;
        };

        // The response head, within the app's request timeout; a client that leaves meanwhile
        // ends the request (as hyper cancels the general path's).
        timer.as_mut().reset(deadline);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let waited = read_response_head(&mut upstream, timer, io, &mut conn.early).await;
        let received = match waited {
            Ok(()) => parse_response(&upstream.buf, &mut headers)
                .map_err(|why| Waited::Failed(FrontendError::InstanceClosedConnection, why.into())),
            Err(waited) => Err(waited),
        };
        let Received {
            len,
            headers: count,
            status,
            length,
            framing,
            reusable,
        } = match received {
            Ok(received) => received,
            Err(Waited::ClientGone) => {
                tracing::debug!(app = %route.app, "the client left before the instance answered");
                return Step::Close;
            }
            Err(Waited::Failed(error, why)) => {
                if error == FrontendError::InstanceTimeout {
                    tracing::warn!(app = %route.app, instance = %instance.id, ?timeout, "the instance did not answer in time");
                } else {
                    tracing::warn!(app = %route.app, instance = %instance.id, addr = %instance.addr, why, "the instance failed the request");
                }
                drop(attempt);
                return self.fail(io, conn, &app, error, &reply).await;
            }
        };
        let framing = if vetted.head || matches!(status.as_u16(), 204 | 304) {
            Framing::Empty
        } else {
            framing
        };
        let close = close || framing == Framing::Close || has_changed(&conn.stop);
        let set_cookie = site.client_affinity && pinned != Some(index);
        conn.out.clear();
        client_head(
            &mut conn.out,
            status,
            &headers[..count],
            ClientFraming { framing, length },
            &request_id,
            set_cookie.then_some(&instance.affinity.set_cookie),
            close,
        );
        upstream.buf.advance(len);
        let instance = Arc::clone(instance);
        let mut tracker = Tracker::new(attempt.keep(), start, metrics::class_of(status));
        // Nothing of the routing state is held while the body streams: a removed instance of
        // another app must not wait for this response to count as drained.

        drop(snapshot);

        let (sent, complete) = match copy_body(io, conn, &mut upstream, framing).await {
            Ok(sent) => (sent, true),
            Err(sent) => (sent, false),
        };
        tracker.add_bytes(0, sent);
        drop(tracker);
        if !complete {
            return Step::Close;
        }
        if reusable && framing != Framing::Close && upstream.buf.is_empty() {
            upstream.since = Instant::now();
            // A full pool closes the connection.
            let _ = instance.idle.push(upstream);
        }
        if close { Step::Close } else { Step::Next }
    }

    /// Writes the prepared head to a connection to `instance`: an idle one from its pool, else a
    /// new one, made by `deadline`. An error means no connection could be made, so nothing was
    /// sent.
    async fn send(
        &self,
        conn: &mut Conn<'_>,
        instance: &Instance,
        deadline: Instant,
    ) -> io::Result<Upstream> {
        let now = Instant::now();
        while let Some(mut pooled) = instance.idle.pop() {
            // A write that fails means the instance closed the connection under us: nothing
            // of the request can have been processed, so a new connection may carry it.
            if pooled.usable(now) && pooled.stream.write_all(&conn.out).await.is_ok() {
                return Ok(pooled);
            }
        }
        let connect = TcpStream::connect(instance.addr);
        let by = deadline.min(now + self.config.connect_timeout);
        let stream = tokio::time::timeout_at(by, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = stream.set_nodelay(true);
        let mut upstream = Upstream {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            since: now,
        };
        upstream.stream.write_all(&conn.out).await?;
        Ok(upstream)
    }

    /// Answers with the front end's own page for `error`, as the general path would.
    async fn fail<IO>(
        &self,
        io: &mut IO,
        conn: &mut Conn<'_>,
        app: &AppCx<'_>,
        error: FrontendError,
        reply: &Reply<'_>,
    ) -> Step
    where
        IO: AsyncWrite + Unpin,
    {
        let mut response = self.app_error(error, app, reply.start);
        response
            .headers_mut()
            .insert(X_REQUEST_ID, reply.request_id.clone());
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let out = &mut conn.out;
        out.clear();
        status_line(out, parts.status);
        for (name, value) in &parts.headers {
            header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        header(out, b"content-length", body.len().to_string().as_bytes());
        DATE.with(|date| header(out, b"date", &date.borrow_mut().now()));
        if reply.close {
            header(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !reply.head_only {
            out.extend_from_slice(&body);
        }
        if write(io, out).await.is_err() || reply.close {
            return Step::Close;
        }
        Step::Next
    }
}

/// What an answer to the request needs whoever makes it.
struct Reply<'a> {
    start: Instant,
    request_id: &'a http::HeaderValue,
    /// A `HEAD` request: no body.
    head_only: bool,
    /// The last response on the client connection.
    close: bool,
}

/// Why no response head came.
enum Waited {
    /// The instance failed (or timed out): the error page to answer with, and what happened.
    Failed(FrontendError, String),
    /// The client closed its connection: nobody to answer.
    ClientGone,
}

/// Reads from the instance until a whole final response head is at the front of its buffer,
/// until `timer` fires. Meanwhile the client's connection is watched for a close; bytes it
/// sends (its next request, pipelined) are kept in `early`.
async fn read_response_head<IO: AsyncRead + Unpin>(
    upstream: &mut Upstream,
    mut timer: Pin<&mut Sleep>,
    client: &mut IO,
    early: &mut BytesMut,
) -> Result<(), Waited> {
    let closed = |why: String| Waited::Failed(FrontendError::InstanceClosedConnection, why);
    loop {
        match response_head_ready(&mut upstream.buf) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(why) => return Err(closed(why.to_string())),
        }
        upstream.buf.reserve(READ_CHUNK);
        tokio::select! {
            read = upstream.stream.read_buf(&mut upstream.buf) => match read {
                Ok(n) if n > 0 => {}
                Ok(_) => return Err(closed("closed the connection without a response".into())),
                Err(error) => return Err(closed(error.to_string())),
            },
            // Only until the client has sent something more: its next request waits then.
            read = client.read_buf(early), if early.is_empty() => match read {
                Ok(n) if n > 0 => {}
                _ => return Err(Waited::ClientGone),
            },
            () = timer.as_mut() => {
                return Err(Waited::Failed(FrontendError::InstanceTimeout, String::new()));
            }
        }
    }
}

/// Whether `stop` fired, without waiting.
fn has_changed(stop: &watch::Receiver<()>) -> bool {
    stop.has_changed().unwrap_or(true)
}

/// What the fast path needs of a request head it takes.
struct Vetted<'h> {
    host: &'h str,
    request_id: Option<http::HeaderValue>,
    /// `Connection: close`.
    close: bool,
    head: bool,
}

/// The request head, if the fast path takes it: HTTP/1.1 in origin form, one valid `Host`, no
/// body, no upgrade, no `Expect`, nothing in `Connection` but `keep-alive` and `close`, CRLF line
/// ends. `None` hands the request to hyper.
fn vet<'h>(request: &httparse::Request<'_, 'h>, head: &[u8]) -> Option<Vetted<'h>> {
    if request.version != Some(1) {
        return None;
    }
    let method = request.method?;
    let path = request.path?;
    // A fragment never belongs in a request; hyper's URI parsing drops it, so hyper decides.
    if method == "CONNECT"
        || !path.starts_with('/')
        || path.contains('#')
        || PathAndQuery::try_from(path).is_err()
    {
        return None;
    }
    // httparse takes a bare LF as a line end; hyper is the one to judge such a head.
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return None;
    }
    let mut host = None;
    let mut request_id = None;
    let mut request_id_seen = false;
    let mut zero_length = false;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            let value = std::str::from_utf8(header.value).ok()?;
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            // One, and zero: a body, or a second length, is hyper's to judge.
            if header.value != b"0" || zero_length {
                return None;
            }
            zero_length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("x-request-id") && !request_id_seen {
            // The first one counts, as `HeaderMap::get` has it.
            request_id_seen = true;
            let id = http::HeaderValue::from_bytes(header.value).ok();
            request_id = id.filter(super::is_valid_request_id);
        }
    }
    Some(Vetted {
        host: host?,
        request_id,
        close,
        head: method == "HEAD",
    })
}

/// Whether a client's header is passed on as it is. The rest are hop-by-hop, named with an
/// underscore, claims only a trusted proxy may make, or the front end's own (set afresh).
fn forwarded_as_is(name: &str) -> bool {
    !name.contains('_')
        && !super::HOP_BY_HOP
            .iter()
            .chain(&super::UNTRUSTED_CLAIMS)
            .chain(&super::SET_BY_FRONT_END)
            .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// `super::HOP_BY_HOP`, by name as it came.
fn is_hop_by_hop(name: &str) -> bool {
    super::HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// The request head an instance gets: what `Forwarding::apply` makes of the client's.
fn upstream_head(
    out: &mut Vec<u8>,
    request: &httparse::Request<'_, '_>,
    vetted: &Vetted<'_>,
    info: &ConnInfo,
    peer: &http::HeaderValue,
    request_id: &http::HeaderValue,
) {
    let path = request.path.unwrap_or("/");
    out.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in request.headers.iter() {
        if forwarded_as_is(h.name) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    let host = vetted.host.as_bytes();
    let scheme = info.scheme().as_bytes();
    header(out, b"host", host);
    header(out, b"x-forwarded-for", peer.as_bytes());
    header(out, b"x-forwarded-proto", scheme);
    header(out, b"x-appservice-proto", scheme);
    if let Some(tls) = &info.tls {
        header(out, b"x-forwarded-tlsversion", tls.version.as_bytes());
    }
    header(out, b"x-forwarded-host", host);
    header(out, b"x-original-url", path.as_bytes());
    header(out, b"x-request-id", request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head: its length, status, framing, and whether the connection may carry
/// another request.
struct Received {
    len: usize,
    /// How many of the headers array were filled.
    headers: usize,
    status: StatusCode,
    /// The instance's `Content-Length`, when it counts.
    length: Option<u64>,
    framing: Framing,
    reusable: bool,
}

/// Whether a complete final response head is at the front of `buf`, once any interim (1xx)
/// responses before it are dropped: they carry nothing the client of a request without a body
/// needs.
fn response_head_ready(buf: &mut BytesMut) -> Result<bool, &'static str> {
    loop {
        let mut scratch = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut scratch);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if !(100..200).contains(&code) || code == 101 {
                    return Ok(true);
                }
                buf.advance(len);
            }
            Ok(httparse::Status::Partial) if buf.len() < RESPONSE_HEAD_LIMIT => return Ok(false),
            Ok(httparse::Status::Partial) => return Err("a response head too large"),
            Err(_) => return Err("a malformed response head"),
        }
    }
}

/// A `Content-Length` value as hyper reads it: digits only, or a list of the same number.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The complete response head at the front of `buf`, its headers parsed into `headers`.
fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Received, &'static str> {
    let mut response = httparse::Response::new(headers);
    let Ok(httparse::Status::Complete(len)) = response.parse(buf) else {
        return Err("a malformed response head");
    };
    // An HTTP/1.0 server (Python's `http.server` by default) closes after its response.
    let Some(version) = response.version else {
        return Err("a malformed response head");
    };
    let status =
        StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| "an invalid status code")?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 to a request that asked for no upgrade");
    }
    let mut length = None;
    let mut chunked = None;
    let mut reusable = version == 1;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = content_length(h.value).ok_or("an invalid Content-Length")?;
            if length.is_some_and(|l| l != value) {
                return Err("conflicting Content-Length headers");
            }
            length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked ends the body, anything else runs to the close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|&b| b == b',')
                .any(|o| o.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            reusable = false;
        }
    }
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::Close,
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Close,
    };
    Ok(Received {
        len,
        headers: response.headers.len(),
        status,
        // With Transfer-Encoding, Content-Length means nothing (RFC 9112 §6.3).
        length: length.filter(|_| chunked.is_none()),
        framing,
        reusable,
    })
}

/// How the body the client gets is framed: as the instance framed it (the framing) and, for a
/// body of known length or a response without one, the length to announce.
struct ClientFraming {
    framing: Framing,
    length: Option<u64>,
}

/// The response head the client gets: the instance's, minus hop-by-hop headers (and those its
/// `Connection` names) and its `X-Request-Id`, plus the front end's.
fn client_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &[httparse::Header<'_>],
    ClientFraming { framing, length }: ClientFraming,
    request_id: &http::HeaderValue,
    set_cookie: Option<&[http::HeaderValue; 2]>,
    close: bool,
) {
    let named = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|o| o.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    status_line(out, status);
    let mut dated = false;
    for h in headers {
        let name = h.name;
        dated |= name.eq_ignore_ascii_case("date");
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-request-id")
            || name.eq_ignore_ascii_case("content-length")
            || named(name)
        {
            continue;
        }
        header(out, name.as_bytes(), h.value);
    }
    if !dated {
        // RFC 9110 §6.6.1: a recipient with a clock adds the Date an origin left out.
        DATE.with(|date| header(out, b"date", &date.borrow_mut().now()));
    }
    match (framing, length) {
        (Framing::Chunked, _) => header(out, b"transfer-encoding", b"chunked"),
        // Written afresh: one value, digits only.
        (_, Some(length)) => header(out, b"content-length", length.to_string().as_bytes()),
        _ => {}
    }
    header(out, b"x-request-id", request_id.as_bytes());
    if let Some(cookies) = set_cookie {
        for cookie in cookies {
            header(out, b"set-cookie", cookie.as_bytes());
        }
    }
    if close {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE: std::cell::RefCell<Date> = const { std::cell::RefCell::new(Date { second: 0, text: [0; 29] }) };
}

/// `Date` as an IMF-fixdate, formatted once a second per thread.
struct Date {
    second: u64,
    text: [u8; 29],
}

impl Date {
    fn now(&mut self) -> [u8; 29] {
        use stamp_model::time::WallClock;
        let second = stamp_model::time::SystemClock.now().0 / 1000;
        if second != self.second {
            let time = std::time::UNIX_EPOCH + Duration::from_secs(second);
            let text = httpdate::fmt_http_date(time);
            if let Ok(text) = <[u8; 29]>::try_from(text.as_bytes()) {
                self.text = text;
                self.second = second;
            }
        }
        self.text
    }
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the prepared head and the body after it to the client. `Ok`: all of the body went
/// out. `Err`: either side failed, and the client connection must close (its response is cut
/// short). Either way, the body's data bytes sent (chunk framing left out).
async fn copy_body<IO>(
    io: &mut IO,
    conn: &mut Conn<'_>,
    upstream: &mut Upstream,
    framing: Framing,
) -> Result<u64, u64>
where
    IO: AsyncWrite + Unpin,
{
    let mut copied = 0u64;
    let mut chunks = Chunks::default();
    // The head goes out with whatever of the body came with it.
    let mut pending = std::mem::take(&mut conn.out);
    let outcome = copy(
        io,
        upstream,
        framing,
        &mut pending,
        &mut copied,
        &mut chunks,
    )
    .await;
    pending.clear();
    conn.out = pending;
    let sent = if framing == Framing::Chunked {
        chunks.data
    } else {
        copied
    };
    outcome.map(|()| sent).map_err(|()| sent)
}

async fn copy<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    upstream: &mut Upstream,
    framing: Framing,
    pending: &mut Vec<u8>,
    copied: &mut u64,
    chunks: &mut Chunks,
) -> Result<(), ()> {
    let mut remaining = match framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    loop {
        let take = match framing {
            Framing::Empty => 0,
            Framing::Length(_) => usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(upstream.buf.len()),
            Framing::Chunked => match chunks.advance(&upstream.buf) {
                Ok(Some(end)) => {
                    remaining = 0;
                    end
                }
                Ok(None) => upstream.buf.len(),
                Err(()) => {
                    tracing::warn!("an instance sent a malformed chunked body");
                    return Err(());
                }
            },
            Framing::Close => upstream.buf.len(),
        };
        pending.extend_from_slice(&upstream.buf[..take]);
        upstream.buf.advance(take);
        *copied += take as u64;
        if let Framing::Length(_) = framing {
            remaining -= take as u64;
        }
        if !pending.is_empty() {
            write(io, pending).await.map_err(|_| ())?;
            pending.clear();
        }
        if remaining == 0 {
            return Ok(());
        }
        upstream.buf.reserve(READ_CHUNK);
        match upstream.stream.read_buf(&mut upstream.buf).await {
            Ok(n) if n > 0 => {}
            Ok(_) if framing == Framing::Close => return Ok(()),
            _ => return Err(()),
        }
    }
}

/// Writes all of `bytes` and flushes: a TLS stream may hold back what it could not send yet.
async fn write<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Where a chunked body ends (RFC 9112 §7.1), read as it streams by: chunk sizes, extensions,
/// data, the last chunk and trailer lines, each line ended by CRLF. What it passes on verbatim
/// it holds to what hyper would accept: no control characters in extensions or trailers,
/// whitespace after a size only before `;`, a colon in every trailer line.
#[derive(Default, Debug)]
struct Chunks {
    state: ChunkState,
    /// Data bytes seen, framing left out.
    data: u64,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
enum ChunkState {
    /// At the start of a chunk-size line.
    #[default]
    SizeStart,
    Size(u64),
    /// Whitespace after the size: only `;` (an extension) or the line end may follow.
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty one.
    TrailerStart,
    /// In a trailer line, before or after its colon.
    Trailer {
        colon: bool,
    },
    TrailerLf,
    EndLf,
    Done,
}

/// A byte allowed inside an extension or a trailer line: visible, a space or a tab.
fn is_line_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl Chunks {
    /// Looks at `data`, the bytes after those already seen. `Ok(Some(n))`: the body ends after
    /// the first `n` of them.
    fn advance(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if let Data(n) = self.state {
                let skip = usize::try_from(n).unwrap_or(usize::MAX).min(data.len() - i);
                i += skip;
                self.data += skip as u64;
                let left = n - skip as u64;
                self.state = if left == 0 { DataCr } else { Data(left) };
                continue;
            }
            let b = data[i];
            self.state = match (self.state, b) {
                (SizeStart, _) => Size(u64::from(hex(b).ok_or(())?)),
                (Size(n) | SizeSpace(n), b'\r') => SizeLf(n),
                (Size(n) | SizeSpace(n), b';') => Extension(n),
                (Size(n) | SizeSpace(n), b' ' | b'\t') => SizeSpace(n),
                (Size(n), _) => {
                    let digit = u64::from(hex(b).ok_or(())?);
                    Size(n.checked_mul(16).ok_or(())? + digit)
                }
                (Extension(n), b'\r') => SizeLf(n),
                (Extension(n), _) if is_line_text(b) => Extension(n),
                (SizeLf(0), b'\n') => TrailerStart,
                (SizeLf(n), b'\n') => Data(n),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b':') => return Err(()),
                (TrailerStart, _) if is_line_text(b) => Trailer { colon: false },
                (Trailer { colon: true }, b'\r') => TrailerLf,
                (Trailer { colon }, _) if is_line_text(b) => Trailer {
                    colon: colon || b == b':',
                },
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(()),
            };
            i += 1;
            if self.state == Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A stream that first yields bytes already read from it: how a connection goes to hyper.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut chunks = Chunks::default();
        let mut offset = 0;
        for part in parts {
            if let Some(end) = chunks.advance(part)? {
                return Ok(Some(offset + end));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(&[body]), Ok(Some(body.len() - 4)));
        // Split anywhere, the end is the same.
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                end_of(&[a, b]),
                Ok(Some(body.len() - 4)),
                "split at {split}"
            );
        }
        let with_trailer = b"A;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(&[with_trailer]), Ok(Some(with_trailer.len())));
        assert_eq!(end_of(&[b"5\r\nhel"]), Ok(None));
        let spaced = b"5 ;x\r\nhello\r\n0 \r\n\r\n";
        assert_eq!(end_of(&[spaced]), Ok(Some(spaced.len())));
        // Data bytes are counted without the framing.
        let mut chunks = Chunks::default();
        assert_eq!(chunks.advance(with_trailer), Ok(Some(with_trailer.len())));
        assert_eq!(chunks.data, 10);
    }

    #[test]
    fn content_lengths_are_digits_or_a_list_of_one_number() {
        assert_eq!(content_length(b"12"), Some(12));
        assert_eq!(content_length(b"5, 5"), Some(5));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"5, 6",
            b"",
            b"5,",
            b" ",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"0\r\n\n",
            b"fffffffffffffffff\r\n",
            b"5 xyz\r\nhello\r\n",
            b"5;a=\x00\r\nhello\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: value\r\n\r\n",
        ] {
            assert_eq!(
                end_of(&[bad]),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn vetted(head: &str) -> Option<(String, bool, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = request.parse(head.as_bytes()) else {
            return None;
        };
        vet(&request, head.as_bytes()).map(|v| (v.host.to_string(), v.close, v.head))
    }

    #[test]
    fn only_plain_bodiless_requests_take_the_fast_path() {
        assert_eq!(
            vetted("GET /a?b HTTP/1.1\r\nHost: x.localhost\r\n\r\n"),
            Some(("x.localhost".to_string(), false, false))
        );
        assert_eq!(
            vetted("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\n\r\n"),
            Some(("x".to_string(), true, true))
        );
        for refused in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a#frag/../b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(vetted(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn the_front_ends_own_and_connection_headers_are_not_passed_on() {
        for name in [
            "Connection",
            "x-forwarded-for",
            "X-Request-Id",
            "Host",
            "Transfer_Encoding",
            "Forwarded",
            "TE",
        ] {
            assert!(!forwarded_as_is(name), "{name}");
        }
        for name in ["Accept", "Cookie", "Content-Length", "X-Forwarded-Server"] {
            assert!(forwarded_as_is(name), "{name}");
        }
    }

    fn response(head: &str) -> Result<Option<(u16, Framing, bool)>, &'static str> {
        let mut buf = BytesMut::from(head.as_bytes());
        if !response_head_ready(&mut buf)? {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        parse_response(&buf, &mut headers).map(|r| Some((r.status.as_u16(), r.framing, r.reusable)))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Ok(Some((200, Framing::Length(5), true)))
        );
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            Ok(Some((200, Framing::Chunked, true)))
        );
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
            Ok(Some((200, Framing::Close, false)))
        );
        assert_eq!(
            response("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
            Ok(Some((204, Framing::Close, true)))
        );
        assert_eq!(response("HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
        assert!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(response("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert_eq!(
            response("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Ok(Some((200, Framing::Length(2), false)))
        );
    }
}
