//! The HTTP/1.1 fast path (`proxy/fast.rs`) against an instance on raw TCP whose answers are
//! scripted bytes, chosen by the request path, and a client on raw TCP that keeps its
//! connection alive and reads each response as its framing says (Content-Length, chunked, or
//! the close).
//!
//! The fast path passes the client's header names on in the case they came in, where hyper (the
//! general path) writes them in lower case: the tests use that to tell which path served a
//! request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestFrontend, bounded, one_app, tcp_backend};
use stamp_routes::RouteTable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The host of the one app these tests route to.
const HOST: &str = "hello.localhost";
/// A header [`Client::request`] sends, in this case: it arrives so only by the fast path.
const MARKER: &str = "X-Fast-Marker";

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 on the wire, by hand (both sides)

/// A stream read through a buffer.
struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Wire<S> {
    fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more into the buffer; `false` at the end of the stream (or an error).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Everything up to and including the first `end`.
    async fn until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return Some(self.buf.drain(..at + end.len()).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Everything until the peer closes.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

/// A request or response head: its first line and its headers, names as they came.
#[derive(Clone, Debug)]
struct Head {
    raw: String,
    first_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let raw = String::from_utf8_lossy(raw).into_owned();
        let mut lines = raw.split("\r\n").filter(|l| !l.is_empty());
        let first_line = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("a header line: {line:?} in {raw:?}"));
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        Head {
            raw,
            first_line,
            headers,
        }
    }

    /// Every value of the header `name` (in any case).
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// How a message body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    Close,
}

/// RFC 9112 §6.3, for the messages these tests exchange.
fn framing_of(head: &Head, no_body: bool, is_request: bool) -> Framing {
    if no_body {
        return Framing::Empty;
    }
    if head
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        return Framing::Chunked;
    }
    match head.get("content-length") {
        Some(length) => Framing::Length(length.parse().expect("a valid Content-Length")),
        None if is_request => Framing::Empty,
        None => Framing::Close,
    }
}

#[derive(Default)]
struct Body {
    data: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// A body framed as `framing` says; `None` if the stream ended (or the chunks were malformed)
/// before it did.
async fn read_body<S: AsyncRead + Unpin>(wire: &mut Wire<S>, framing: Framing) -> Option<Body> {
    let mut body = Body::default();
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => body.data = wire.exact(n).await?,
        Framing::Close => body.data = wire.rest().await,
        Framing::Chunked => loop {
            let line = wire.until(b"\r\n").await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.trim_end().split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                loop {
                    let trailer = wire.until(b"\r\n").await?;
                    if trailer == b"\r\n" {
                        return Some(body);
                    }
                    let trailer = String::from_utf8_lossy(&trailer);
                    let (name, value) = trailer.trim_end().split_once(':')?;
                    body.trailers
                        .push((name.to_string(), value.trim().to_string()));
                }
            }
            let chunk = wire.exact(size + 2).await?;
            if !chunk.ends_with(b"\r\n") {
                return None;
            }
            body.data.extend_from_slice(&chunk[..size]);
        },
    }
    Some(body)
}

// ---------------------------------------------------------------------------------------------
// The instance: scripted bytes on raw TCP

/// What the instance does with the connection after a response.
enum After {
    KeepOpen,
    Close,
    CloseWhenIdleFor(Duration),
}

/// The instance's answer to a request, by path.
fn script(method: &str, path: &str, body: &[u8]) -> (Vec<u8>, After) {
    let keep = |bytes: &[u8]| (bytes.to_vec(), After::KeepOpen);
    match path {
        "/length" => keep(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              X-Script: length\r\n\r\nlength",
        ),
        "/chunked" => keep(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
              5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: 42\r\n\r\n",
        ),
        "/early-hints" => keep(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n\
              final",
        ),
        "/undated" => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nundated"),
        "/head" if method == "HEAD" => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        "/head" => keep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        "/close-delimited" => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, until the close"
                .to_vec(),
            After::Close,
        ),
        "/http10" => (
            b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold ok".to_vec(),
            After::Close,
        ),
        "/garbage" => keep(b"NOT HTTP\r\n\r\n"),
        "/closes-when-idle" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            After::CloseWhenIdleFor(Duration::from_millis(200)),
        ),
        "/echo" => {
            let mut response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            response.extend_from_slice(body);
            (response, After::KeepOpen)
        }
        // Anything else: its own path.
        _ => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                path.len()
            )
            .into_bytes(),
            After::KeepOpen,
        ),
    }
}

/// A request the instance received.
#[derive(Clone, Debug)]
struct Seen {
    head: Head,
    body: Vec<u8>,
}

impl Seen {
    fn method(&self) -> &str {
        self.head.first_line.split(' ').next().unwrap_or_default()
    }

    /// Whether the header `name` arrived in exactly that case: only the fast path keeps the
    /// case of a client's header names.
    fn has_name_as_sent(&self, name: &str) -> bool {
        self.head.headers.iter().any(|(n, _)| n == name)
    }
}

struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> Backend {
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = tcp_backend({
            let accepted = Arc::clone(&accepted);
            let seen = Arc::clone(&seen);
            move |_, stream| {
                accepted.fetch_add(1, Ordering::SeqCst);
                serve_scripted(stream, Arc::clone(&seen))
            }
        })
        .await;
        Backend {
            addr,
            accepted,
            seen,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn serve_scripted(stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut wire = Wire::new(stream);
    loop {
        let Some(raw) = wire.until(b"\r\n\r\n").await else {
            return;
        };
        let head = Head::parse(&raw);
        let Some(body) = read_body(&mut wire, framing_of(&head, false, true)).await else {
            return;
        };
        let mut line = head.first_line.split(' ');
        let method = line.next().unwrap_or_default().to_string();
        let path = line.next().unwrap_or_default().to_string();
        seen.lock().expect("not poisoned").push(Seen {
            head,
            body: body.data.clone(),
        });
        let (response, after) = script(&method, &path, &body.data);
        if wire.stream.write_all(&response).await.is_err() {
            return;
        }
        match after {
            After::KeepOpen => {}
            After::Close => {
                let _ = wire.stream.shutdown().await;
                return;
            }
            After::CloseWhenIdleFor(delay) => {
                tokio::time::sleep(delay).await;
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// The app `hello` under `localhost` (default site) with one ready instance at `addr`.
fn table(addr: SocketAddr) -> RouteTable {
    one_app("localhost", "hello", addr)
}

/// A response as the client read it.
struct Reply {
    head: Head,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Reply {
    fn version(&self) -> &str {
        self.head.first_line.split(' ').next().unwrap_or_default()
    }

    fn status(&self) -> u16 {
        let code = self.head.first_line.split(' ').nth(1).unwrap_or_default();
        code.parse()
            .unwrap_or_else(|_| panic!("a status line: {:?}", self.head.first_line))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A kept-alive client connection to the front end.
struct Client {
    wire: Wire<TcpStream>,
}

impl Client {
    async fn connect(frontend: SocketAddr) -> Client {
        let stream = bounded("connect", TcpStream::connect(frontend))
            .await
            .expect("connect to the front end");
        Client {
            wire: Wire::new(stream),
        }
    }

    async fn send(&mut self, request: &[u8]) {
        bounded("write a request", self.wire.stream.write_all(request))
            .await
            .expect("write a request");
    }

    /// Reads one response; `head_request`: it answers a HEAD, so it has no body.
    async fn response(&mut self, head_request: bool) -> Reply {
        bounded("a response", async {
            let raw = self
                .wire
                .until(b"\r\n\r\n")
                .await
                .expect("a complete response head");
            let head = Head::parse(&raw);
            let status: u16 = head
                .first_line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let no_body = head_request || status == 204 || status == 304 || status < 200;
            let framing = framing_of(&head, no_body, false);
            let body = read_body(&mut self.wire, framing)
                .await
                .unwrap_or_else(|| panic!("a complete {framing:?} body after {:?}", head.raw));
            Reply {
                head,
                body: body.data,
                trailers: body.trailers,
            }
        })
        .await
    }

    async fn request(&mut self, method: &str, path: &str) -> Reply {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{MARKER}: 1\r\n\r\n");
        self.send(request.as_bytes()).await;
        self.response(method == "HEAD").await
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path).await
    }

    /// Whether the front end closed the connection with nothing more to read.
    async fn at_eof(&mut self) -> bool {
        self.wire.buf.is_empty() && !bounded("the end of the stream", self.wire.fill()).await
    }
}

/// Asserts a 200 with `body`.
fn assert_ok(reply: &Reply, body: &str) {
    assert_eq!(reply.status(), 200, "{}{}", reply.head.raw, reply.text());
    assert_eq!(reply.text(), body, "{}", reply.head.raw);
}

/// Asserts that every request in `seen` reached the instance by the fast path.
fn assert_all_fast(seen: &[Seen]) {
    for request in seen {
        assert!(request.has_name_as_sent(MARKER), "{}", request.head.raw);
    }
}

/// An instance, a front end that routes `hello` to it, and a client connection to the front end
/// (dropping the front end shuts it down).
async fn setup() -> (Backend, TestFrontend, Client) {
    let backend = Backend::start().await;
    let fe = TestFrontend::with_routes(table(backend.addr)).await;
    let client = Client::connect(fe.addr).await;
    (backend, fe, client)
}

/// Asks twice, `pause` apart, on one client connection, for `/closes-when-idle` (whose
/// connection the instance closes 200 ms after answering): both are answered, the second over a
/// new connection to the instance.
async fn assert_a_new_connection_after(pause: Duration) {
    let (backend, _fe, mut client) = setup().await;
    assert_ok(&client.get("/closes-when-idle").await, "ok");
    tokio::time::sleep(pause).await;
    assert_ok(&client.get("/closes-when-idle").await, "ok");
    assert_eq!(backend.accepted(), 2);
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_response_framing_comes_through() {
    let (backend, fe, mut client) = setup().await;

    // Content-Length, with the instance's Date kept as it is.
    let reply = client.get("/length").await;
    assert_ok(&reply, "length");
    assert_eq!(reply.version(), "HTTP/1.1");
    assert_eq!(reply.head.all("content-length"), ["6"]);
    assert_eq!(
        reply.head.all("date"),
        ["Sun, 06 Nov 1994 08:49:37 GMT"],
        "{}",
        reply.head.raw
    );
    assert_eq!(reply.head.get("x-script"), Some("length"));
    assert!(reply.head.has("x-request-id"), "{}", reply.head.raw);
    assert!(!reply.head.has("connection"), "{}", reply.head.raw);

    // Chunked, with an extension and a trailer: still chunked, and the connection goes on.
    let reply = client.get("/chunked").await;
    assert_ok(&reply, "hello, world");
    assert_eq!(reply.head.all("transfer-encoding"), ["chunked"]);
    assert!(!reply.head.has("content-length"), "{}", reply.head.raw);
    assert_eq!(
        reply.trailers,
        [("X-Checksum".to_string(), "42".to_string())]
    );

    // An interim 103 before the final response: the client sees only the final one.
    let reply = client.get("/early-hints").await;
    assert_ok(&reply, "final");
    assert!(!reply.head.has("link"), "{}", reply.head.raw);

    // No Date from the instance: the front end adds one.
    let reply = client.get("/undated").await;
    assert_ok(&reply, "undated");
    let dates = reply.head.all("date");
    assert_eq!(dates.len(), 1, "{}", reply.head.raw);
    assert!(
        httpdate::parse_http_date(dates[0]).is_ok(),
        "not an HTTP date: {:?}",
        dates[0]
    );

    // HEAD: the Content-Length of the GET, and no body.
    let reply = client.request("HEAD", "/head").await;
    assert_ok(&reply, "");
    assert_eq!(reply.head.all("content-length"), ["5"]);
    // Nothing followed that head: the next response starts right away.
    assert_ok(&client.get("/length").await, "length");

    // All of this took the fast path, over one connection to the instance.
    let seen = backend.seen();
    assert_eq!(seen.len(), 6);
    assert_all_fast(&seen);
    assert_eq!(backend.accepted(), 1);

    // Close-delimited: the whole body, `Connection: close`, then the end of the connection.
    let mut client = Client::connect(fe.addr).await;
    let reply = client.get("/close-delimited").await;
    assert_ok(&reply, "all of this, until the close");
    assert_eq!(reply.head.get("connection"), Some("close"));
    assert!(!reply.head.has("content-length"), "{}", reply.head.raw);
    assert!(!reply.head.has("transfer-encoding"), "{}", reply.head.raw);
    assert!(client.at_eof().await);

    // An HTTP/1.0 response with a Content-Length: the client's HTTP/1.1 connection goes on.
    let mut client = Client::connect(fe.addr).await;
    let reply = client.get("/http10").await;
    assert_ok(&reply, "old ok");
    assert_eq!(reply.version(), "HTTP/1.1");
    assert!(!reply.head.has("connection"), "{}", reply.head.raw);
    assert_ok(&client.get("/length").await, "length");
    assert_ok(&client.get("/after").await, "/after");
    assert_all_fast(&backend.seen());
}

#[tokio::test]
async fn a_clients_requests_share_one_connection_to_the_instance() {
    let (backend, _fe, mut client) = setup().await;
    for i in 0..20 {
        let path = format!("/request-{i}");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nX_Secret: 1\r\nX-Custom: yes\r\n\r\n"
        );
        client.send(request.as_bytes()).await;
        assert_ok(&client.response(false).await, &path);
    }
    assert_eq!(backend.accepted(), 1);

    let seen = backend.seen();
    assert_eq!(seen.len(), 20);
    let mut ids = Vec::new();
    for (i, request) in seen.iter().enumerate() {
        let head = &request.head;
        assert_eq!(head.first_line, format!("GET /request-{i} HTTP/1.1"));
        assert!(
            request.has_name_as_sent("X-Custom"),
            "not the fast path: {}",
            head.raw
        );
        assert_eq!(head.all("host"), [HOST], "{}", head.raw);
        assert_eq!(head.all("x-forwarded-for"), ["127.0.0.1"], "{}", head.raw);
        assert_eq!(head.all("x-forwarded-proto"), ["http"], "{}", head.raw);
        assert_eq!(head.all("x-custom"), ["yes"], "{}", head.raw);
        let id = head.all("x-request-id");
        assert_eq!(id.len(), 1, "{}", head.raw);
        assert!(!id[0].is_empty());
        ids.push(id[0].to_string());
        for dropped in ["connection", "keep-alive", "x_secret"] {
            assert!(!head.has(dropped), "{dropped} passed on: {}", head.raw);
        }
        assert!(
            !head.headers.iter().any(|(n, _)| n.contains('_')),
            "{}",
            head.raw
        );
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "request ids are not unique");
}

#[tokio::test]
async fn a_connection_handed_to_hyper_keeps_working() {
    let (backend, _fe, mut client) = setup().await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Custom: 1\r\n\r\n");

    client.send(get("/first").as_bytes()).await;
    assert_ok(&client.response(false).await, "/first");

    let post = format!(
        "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nX-Custom: 1\r\nContent-Length: 5\r\n\r\nhello"
    );
    client.send(post.as_bytes()).await;
    assert_ok(&client.response(false).await, "hello");

    client.send(get("/third").as_bytes()).await;
    assert_ok(&client.response(false).await, "/third");

    let seen = backend.seen();
    let methods: Vec<&str> = seen.iter().map(Seen::method).collect();
    assert_eq!(methods, ["GET", "POST", "GET"]);
    assert_eq!(seen[1].body, b"hello");
    // The first GET took the fast path; the POST and everything after it went to hyper.
    assert!(seen[0].has_name_as_sent("X-Custom"), "{}", seen[0].head.raw);
    assert!(
        !seen[1].has_name_as_sent("X-Custom"),
        "{}",
        seen[1].head.raw
    );
    assert!(
        !seen[2].has_name_as_sent("X-Custom"),
        "{}",
        seen[2].head.raw
    );
}

#[tokio::test]
async fn a_connection_the_instance_closed_while_idle_is_not_reused() {
    // Past the time a connection to an instance is taken as open without a check.
    assert_a_new_connection_after(Duration::from_millis(1300)).await;
}

#[tokio::test]
async fn an_instance_that_answers_garbage_gets_a_502() {
    let (backend, _fe, mut client) = setup().await;
    let reply = client.get("/garbage").await;
    assert_eq!(reply.status(), 502, "{}{}", reply.head.raw, reply.text());
    assert_eq!(
        reply.head.get("x-stamp-error"),
        Some("instance-closed-connection"),
        "{}",
        reply.head.raw
    );
    assert_eq!(
        reply.head.all("content-length").len(),
        1,
        "{}",
        reply.head.raw
    );
    assert!(!reply.head.has("connection"), "{}", reply.head.raw);
    assert_ok(&client.get("/length").await, "length");
    assert_all_fast(&backend.seen());
}

#[tokio::test]
async fn a_pipelined_pair_is_answered_in_order() {
    let (backend, _fe, mut client) = setup().await;
    let pair = format!(
        "GET /one HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /two HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    client.send(pair.as_bytes()).await;
    assert_ok(&client.response(false).await, "/one");
    assert_ok(&client.response(false).await, "/two");
    // And the connection goes on.
    assert_ok(&client.get("/three").await, "/three");
    assert_eq!(backend.accepted(), 1);
    let paths: Vec<String> = backend
        .seen()
        .iter()
        .map(|r| r.head.first_line.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "GET /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]
    );
}

/// A client connection's own connection to the instance goes back to the instance's pool when
/// the client connection ends, so the next client connection need not open one.
#[tokio::test]
async fn a_client_connections_connection_to_the_instance_goes_back_to_the_pool() {
    let backend = Backend::start().await;
    let fe = TestFrontend::with_routes(table(backend.addr)).await;
    for _ in 0..3 {
        let mut client = Client::connect(fe.addr).await;
        assert_ok(&client.get("/x").await, "/x");
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.accepted(), 1);
}

/// An instance may close an idle keep-alive connection at any time (here 200 ms after its
/// answer, with no `Connection: close`); the general path then opens a new connection, and so
/// must the fast path, even within the second it takes a connection as open without a check.
#[tokio::test]
async fn a_connection_the_instance_closed_soon_after_answering_is_not_a_502() {
    assert_a_new_connection_after(Duration::from_millis(500)).await;
}
