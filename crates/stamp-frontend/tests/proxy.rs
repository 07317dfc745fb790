//! The front end against real backends: tiny hyper servers on 127.0.0.1:0 that answer with their
//! name and the request they saw, hand-written WebSocket backends on raw TCP, a real front end on
//! 127.0.0.1:0, and real HTTP clients (the hyper-util pooled client, raw TCP writes where the
//! exact bytes matter, an h2 connection, a rustls client for what depends on TLS).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{
    TestFrontend, WAIT, app, bounded, collect_response, http1_backend, instance, tcp_backend,
    tls_client,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::{
    AccessAction, AccessRule, AppName, Balancing, InstanceState, Millis, ObservedInstance,
    SiteConfig,
};
use stamp_routes::RouteTable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

// ---------------------------------------------------------------------------------------------
// Backends

type BackendBody = Either<Full<Bytes>, Incoming>;

/// A backend instance. Paths: `/wait` reports its arrival then waits for a permit on `gate`;
/// `/hang` never answers; `/echo` streams the request body back; `/count` reads the whole body
/// and answers its length; `/hop` answers with hop-by-hop headers; `/refuse-upgrade` answers 400;
/// anything else answers with the backend's name, the request line and its headers.
struct TestBackend {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    arrivals: mpsc::UnboundedReceiver<()>,
}

impl TestBackend {
    async fn start(name: &str) -> TestBackend {
        let gate = Arc::new(Semaphore::new(0));
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let name: Arc<str> = name.into();
        let shared_gate = Arc::clone(&gate);
        let addr = http1_backend(move |request| {
            backend_answer(
                Arc::clone(&name),
                Arc::clone(&shared_gate),
                arrived.clone(),
                request,
            )
        })
        .await;
        TestBackend {
            addr,
            gate,
            arrivals,
        }
    }

    async fn wait_for_arrival(&mut self) {
        bounded("a request to arrive at the backend", self.arrivals.recv())
            .await
            .expect("backend running");
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }
}

async fn backend_answer(
    name: Arc<str>,
    gate: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<()>,
    request: Request<Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    let full = |text: String| Response::new(Either::Left(Full::new(Bytes::from(text))));
    match request.uri().path() {
        "/wait" => {
            let _ = arrived.send(());
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Ok(full(format!("{name}\n")))
        }
        "/hang" => std::future::pending().await,
        "/echo" => Ok(Response::new(Either::Right(request.into_body()))),
        "/count" => {
            let length = match request.into_body().collect().await {
                Ok(body) => body.to_bytes().len().to_string(),
                Err(error) => format!("error: {error}"),
            };
            Ok(full(format!("{name}\n{length}\n")))
        }
        "/refuse-upgrade" => {
            let mut response = full("no upgrade here\n".to_string());
            *response.status_mut() = StatusCode::BAD_REQUEST;
            Ok(response)
        }
        "/hop" => {
            let mut response = full(format!("{name}\n"));
            let headers = response.headers_mut();
            for (header, value) in [
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("x-end-to-end", "1"),
            ] {
                headers.insert(
                    http::HeaderName::from_static(header),
                    http::HeaderValue::from_static(value),
                );
            }
            Ok(response)
        }
        _ => {
            let mut text = format!("{name}\n{} {}\n", request.method(), request.uri());
            for (header, value) in request.headers() {
                text.push_str(&format!(
                    "{header}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            Ok(full(text))
        }
    }
}

/// An address where nothing listens: connecting is refused.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// WebSockets, by hand: the handshake as text, frames as bytes (RFC 6455 §5.2; payloads < 126).

/// Reads up to and including the blank line that ends an HTTP head, byte by byte so nothing
/// after it is consumed.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = bounded("an HTTP head", stream.read_u8())
            .await
            .expect("a complete HTTP head");
        head.push(byte);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), payload: &[u8], masked: bool) {
    let len = u8::try_from(payload.len())
        .ok()
        .filter(|l| *l < 126)
        .expect("a short payload");
    let mut frame = vec![0x81, len | if masked { 0x80 } else { 0 }];
    if masked {
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    bounded("write a frame", stream.write_all(&frame))
        .await
        .expect("write a frame");
}

/// One frame's payload, unmasked; `None` at a close frame or the end of the stream.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut header = [0u8; 2];
    bounded("a frame", stream.read_exact(&mut header))
        .await
        .ok()?;
    if header[0] & 0x0f == 0x8 {
        return None;
    }
    let len = usize::from(header[1] & 0x7f);
    assert!(len < 126, "short frames only");
    let mask = if header[1] & 0x80 != 0 {
        let mut mask = [0u8; 4];
        bounded("a mask", stream.read_exact(&mut mask)).await.ok()?;
        Some(mask)
    } else {
        None
    };
    let mut payload = vec![0u8; len];
    bounded("a payload", stream.read_exact(&mut payload))
        .await
        .ok()?;
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some(payload)
}

/// A WebSocket backend: answers an upgrade request with 101, sends its name as the first
/// message, then echoes every message. `GET /refuse` with an upgrade gets a 400 instead, and any
/// request without one gets `200 <name>`; both close the connection after answering.
async fn start_websocket_backend(name: &'static str) -> SocketAddr {
    tcp_backend(move |_, mut stream| async move {
        let head = read_head(&mut stream).await.to_ascii_lowercase();
        let upgrade = head.contains("\r\nupgrade: websocket\r\n")
            && head.contains("\r\nconnection: upgrade\r\n");
        if !upgrade || head.starts_with("get /refuse ") {
            let (status, body) = if upgrade {
                ("400 Bad Request", "refused")
            } else {
                ("200 OK", name)
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            return;
        }
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\nSec-WebSocket-Accept: unchecked\r\n\r\n",
            )
            .await;
        write_frame(&mut stream, name.as_bytes(), false).await;
        while let Some(message) = read_frame(&mut stream).await {
            write_frame(&mut stream, &message, false).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Routes

/// A table under `localhost`: each app with its site and ready instances at `addrs`, in that
/// order (instance `<app>-web-<i>` on worker `i`).
fn table_with(apps: &[(&str, SiteConfig, &[SocketAddr])]) -> RouteTable {
    let sites: Vec<(AppName, SiteConfig)> = apps
        .iter()
        .map(|(name, site, _)| (app(name), site.clone()))
        .collect();
    let instances: Vec<ObservedInstance> = apps
        .iter()
        .flat_map(|(name, _, addrs)| {
            addrs.iter().enumerate().map(|(worker, addr)| {
                instance(
                    name,
                    u32::try_from(worker).expect("few workers"),
                    InstanceState::Ready,
                    addr.port(),
                )
            })
        })
        .collect();
    RouteTable::build("localhost", &sites, &instances)
}

/// As [`table_with`], every app with the default site (affinity on, round robin).
fn table(apps: &[(&str, &[SocketAddr])]) -> RouteTable {
    let apps: Vec<(&str, SiteConfig, &[SocketAddr])> = apps
        .iter()
        .map(|(name, addrs)| (*name, SiteConfig::default(), *addrs))
        .collect();
    table_with(&apps)
}

fn rule(name: &str, priority: u32, action: AccessAction, network: &str) -> AccessRule {
    AccessRule {
        name: name.to_string(),
        priority,
        action,
        network: network.parse().expect("valid network"),
    }
}

// ---------------------------------------------------------------------------------------------
// The front end and clients

impl TestFrontend {
    fn metrics(&self) -> String {
        let mut out = String::new();
        self.frontend.render_metrics(&mut out);
        out
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend's name, the first line of its answer.
    fn name(&self) -> String {
        self.text().lines().next().unwrap_or_default().to_string()
    }

    /// A request header the backend saw.
    fn seen(&self, header: &str) -> Option<String> {
        let prefix = format!("{header}: ");
        self.text()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The token of the `ARRAffinity` cookie this response sets, if any.
    fn affinity_token(&self) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            c.strip_prefix("ARRAffinity=")
                .and_then(|rest| rest.split(';').next())
                .map(str::to_string)
        })
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    frontend: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{frontend}{path}"))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).expect("valid request");
    let response = bounded("a response", client.request(request))
        .await
        .expect("the front end answers");
    collect(response).await
}

async fn collect(response: Response<Incoming>) -> Answer {
    let (parts, body) = collect_response(response).await;
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    frontend: SocketAddr,
    host: &str,
    path: &str,
) -> Answer {
    send(client, frontend, Method::GET, host, path, &[], Bytes::new()).await
}

/// Parses a response head (status line and headers) and the body after it.
fn parse_answer(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let code = status_line.split(' ').nth(1).unwrap_or_default();
    let status = StatusCode::from_bytes(code.as_bytes()).expect("a status code");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("a header line");
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value.trim()).expect("header value"),
        );
    }
    Answer {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// Writes `request` as is on a new connection (in the background, so a front end that answers
/// before reading it all is seen) and reads until the server closes it (the request should say
/// `Connection: close`). Responses from these tests carry a Content-Length, so the body is what
/// follows the head.
async fn raw(frontend: SocketAddr, request: &str) -> Answer {
    let stream = bounded("connect", TcpStream::connect(frontend))
        .await
        .expect("connect to the front end");
    let (mut reader, mut writer) = stream.into_split();
    let bytes = request.as_bytes().to_vec();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(WAIT, writer.write_all(&bytes)).await;
        // Keep the write half open until the test is done reading.
        tokio::time::sleep(WAIT).await;
    });
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match bounded("read", reader.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    parse_answer(&String::from_utf8_lossy(&bytes))
}

/// Waits (bounded) until `condition` holds: for effects that land just after a client has its
/// answer, such as metrics recorded when the server drops the response body.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    bounded(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Tests: routing, balancing, affinity

#[tokio::test]
async fn routes_by_host() {
    let hello = TestBackend::start("hello-0").await;
    let world = TestBackend::start("world-0").await;
    let shop = TestBackend::start("shop-0").await;
    let shop_site = SiteConfig {
        domains: vec!["shop.example.com".into(), "*.example.org".into()],
        ..SiteConfig::default()
    };
    let routes = vec![
        instance("hello", 0, InstanceState::Ready, hello.addr.port()),
        instance("world", 0, InstanceState::Ready, world.addr.port()),
        instance("shop", 0, InstanceState::Ready, shop.addr.port()),
        instance("empty", 0, InstanceState::Starting, 1),
        instance("empty", 1, InstanceState::Crashed, 2),
    ];
    let table = RouteTable::build(
        "localhost",
        &[
            (app("hello"), SiteConfig::default()),
            (app("world"), SiteConfig::default()),
            (app("shop"), shop_site),
            (app("empty"), SiteConfig::default()),
        ],
        &routes,
    );
    let fe = TestFrontend::with_routes(table).await;
    let client = client();

    for (host, name) in [
        ("hello.localhost", "hello-0"),
        ("world.localhost", "world-0"),
        ("HELLO.localhost:8080", "hello-0"),
        ("world.localhost.", "world-0"),
        ("shop.localhost", "shop-0"),
        ("shop.example.com", "shop-0"),
        ("Shop.Example.com:80", "shop-0"),
        ("www.example.org", "shop-0"),
    ] {
        let answer = get(&client, fe.addr, host, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{host}");
        assert_eq!(answer.name(), name, "{host}");
        assert_eq!(answer.header("x-stamp-error"), None);
    }
    for host in ["example.org", "a.b.example.org", "www.shop.example.com"] {
        let answer = get(&client, fe.addr, host, "/").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{host}");
    }

    let missing = get(&client, fe.addr, "other.localhost", "/").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("x-stamp-error"), Some("no-such-app"));
    assert!(
        missing
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert!(missing.header("x-request-id").is_some());
    let page = missing.text();
    assert!(page.contains("<title>404 no-such-app</title>"), "{page}");
    assert!(page.contains("other.localhost"), "{page}");
    assert!(page.contains("stamp app create"), "{page}");

    let unready = get(&client, fe.addr, "empty.localhost", "/").await;
    assert_eq!(unready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unready.header("x-stamp-error"), Some("no-ready-instance"));
    assert_eq!(unready.header("retry-after"), Some("5"));
    let page = unready.text();
    assert!(page.contains("empty has no ready instance"), "{page}");
    assert!(page.contains("stamp ps empty"), "{page}");
    assert!(page.contains("stamp logs empty"), "{page}");

    for host in ["[::1]:8080", "127.0.0.1", "hello.example.com"] {
        let answer = get(&client, fe.addr, host, "/").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{host}");
    }

    // Absolute form: the URI's authority wins over the Host header.
    let absolute = raw(
        fe.addr,
        "GET http://world.localhost/x HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(absolute.status, StatusCode::OK);
    assert_eq!(absolute.name(), "world-0");
    assert!(absolute.text().contains("GET /x\n"), "origin-form upstream");

    let no_host = raw(fe.addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(no_host.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_host.header("x-stamp-error"), Some("missing-host"));
}

#[tokio::test]
async fn round_robin_over_three_backends() {
    let backends = [
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let fe = TestFrontend::with_routes(table(&[("hello", &addrs)])).await;
    let client = client();
    let mut names = Vec::new();
    for _ in 0..9 {
        let answer = get(&client, fe.addr, "hello.localhost", "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        names.push(answer.name());
    }
    assert_eq!(
        names,
        ["b0", "b1", "b2", "b0", "b1", "b2", "b0", "b1", "b2"]
    );
}

/// Sends `count` requests to `/wait` one after the other, each once the previous one has reached
/// a backend (and, at the fast one, been answered); the slow one holds what it gets. Returns how
/// many reached the slow backend.
async fn requests_to_the_slow_backend(balancing: Balancing, count: usize) -> usize {
    let mut slow = TestBackend::start("slow").await;
    let mut fast = TestBackend::start("fast").await;
    fast.gate.add_permits(count);
    let site = SiteConfig {
        balancing,
        ..SiteConfig::default()
    };
    let fe =
        TestFrontend::with_routes(table_with(&[("hello", site, &[slow.addr, fast.addr])])).await;
    let client = client();
    let mut held = Vec::new();
    let mut to_slow = 0;
    for _ in 0..count {
        let request = tokio::spawn({
            let client = client.clone();
            let addr = fe.addr;
            async move { get(&client, addr, "hello.localhost", "/wait").await }
        });
        tokio::select! {
            () = slow.wait_for_arrival() => {
                to_slow += 1;
                held.push(request);
            }
            () = fast.wait_for_arrival() => {
                let answer = bounded("the fast answer", request).await.expect("task");
                assert_eq!(answer.name(), "fast");
            }
        }
    }
    slow.gate.add_permits(count);
    for request in held {
        let answer = bounded("a held request", request).await.expect("task");
        assert_eq!(answer.name(), "slow");
    }
    to_slow
}

#[tokio::test]
async fn least_requests_avoids_the_slow_instance() {
    let round_robin = requests_to_the_slow_backend(Balancing::RoundRobin, 10).await;
    let least = requests_to_the_slow_backend(Balancing::LeastRequests, 10).await;
    assert_eq!(round_robin, 5, "round robin alternates");
    assert!(
        least <= 2 && least < round_robin,
        "least requests sent {least} of 10 to the busy instance (round robin: {round_robin})"
    );
}

#[tokio::test]
async fn affinity_cookies_pin_clients_to_an_instance_of_their_app() {
    let b0 = TestBackend::start("b0").await;
    let b1 = TestBackend::start("b1").await;
    let w0 = TestBackend::start("w0").await;
    let off = TestBackend::start("off").await;
    let no_affinity = SiteConfig {
        client_affinity: false,
        ..SiteConfig::default()
    };
    let both = [b0.addr, b1.addr];
    let routes = |hello: &[SocketAddr]| {
        table_with(&[
            ("hello", SiteConfig::default(), hello),
            ("world", SiteConfig::default(), &[w0.addr]),
            ("plain", no_affinity.clone(), &[off.addr]),
        ])
    };
    let fe = TestFrontend::with_routes(routes(&both)).await;
    let client = client();
    let with_cookie = |cookie: String| async move {
        let client = self::client();
        send(
            &client,
            fe.addr,
            Method::GET,
            "hello.localhost",
            "/",
            &[("cookie", &cookie)],
            Bytes::new(),
        )
        .await
    };

    // The first answer sets both of Azure's cookies, for the instance that served it.
    let first = get(&client, fe.addr, "hello.localhost", "/").await;
    assert_eq!(first.name(), "b0");
    let t0 = first.affinity_token().expect("an affinity cookie");
    assert_eq!(t0.len(), 32);
    assert_eq!(
        first.set_cookies(),
        [
            format!("ARRAffinity={t0}; Path=/; HttpOnly"),
            format!("ARRAffinitySameSite={t0}; Path=/; HttpOnly; SameSite=None; Secure"),
        ]
    );

    // With it, every request goes to b0 (round robin would alternate), and no cookie is set
    // again; either cookie name works, among other cookies.
    for cookie in [
        format!("ARRAffinity={t0}"),
        format!("session=x; ARRAffinity={t0}"),
        format!("ARRAffinitySameSite={t0}"),
        format!("ARRAffinity={t0}"),
    ] {
        let answer = with_cookie(cookie.clone()).await;
        assert_eq!(answer.name(), "b0", "{cookie}");
        assert!(answer.set_cookies().is_empty(), "{cookie}");
        assert_eq!(answer.seen("cookie").as_deref(), Some(cookie.as_str()));
    }

    // Pinned requests do not move the rotation: the next unpinned one goes to b1.
    let second = get(&client, fe.addr, "hello.localhost", "/").await;
    assert_eq!(second.name(), "b1");
    let t1 = second.affinity_token().expect("an affinity cookie");
    assert_ne!(t0, t1);
    assert_eq!(with_cookie(format!("ARRAffinity={t1}")).await.name(), "b1");

    // A forged token, or one for another app's instance, pins nothing and is replaced.
    let world = get(&client, fe.addr, "world.localhost", "/").await;
    let tw = world.affinity_token().expect("world sets a cookie too");
    for token in ["0123456789abcdef0123456789abcdef".to_string(), tw] {
        let answer = with_cookie(format!("ARRAffinity={token}")).await;
        let fresh = answer.affinity_token().expect("a fresh cookie");
        let expected = if answer.name() == "b0" { &t0 } else { &t1 };
        assert_eq!(&fresh, expected, "{token}");
    }

    // When the pinned instance leaves, the client is served elsewhere and re-pinned.
    fe.frontend.set_routes(RouteTable::build(
        "localhost",
        &[
            (app("hello"), SiteConfig::default()),
            (app("world"), SiteConfig::default()),
        ],
        &[
            instance("hello", 1, InstanceState::Ready, b1.addr.port()),
            instance("world", 0, InstanceState::Ready, w0.addr.port()),
        ],
    ));
    let moved = with_cookie(format!("ARRAffinity={t0}")).await;
    assert_eq!(moved.name(), "b1");
    assert_eq!(moved.affinity_token(), Some(t1.clone()));

    // Without affinity: no cookie set.
    fe.frontend.set_routes(routes(&both));
    let plain = get(&client, fe.addr, "plain.localhost", "/").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.set_cookies().is_empty());

    // A front end with the same key makes the same tokens, so cookies survive a restart.
    let key = [42u8; 32];
    let config = || FrontendConfig {
        affinity_key: Some(key),
        ..FrontendConfig::default()
    };
    let one = TestFrontend::start(config(), routes(&both)).await;
    let two = TestFrontend::start(config(), routes(&both)).await;
    let token = get(&client, one.addr, "hello.localhost", "/")
        .await
        .affinity_token()
        .expect("a cookie");
    let again = send(
        &client,
        two.addr,
        Method::GET,
        "hello.localhost",
        "/",
        &[("cookie", &format!("ARRAffinity={token}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(again.name(), "b0");
    assert!(again.set_cookies().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Tests: headers, client address, access restrictions, HTTPS

#[tokio::test]
async fn forwarding_headers_and_request_ids() {
    let hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[hello.addr])])).await;
    let client = client();

    let kept = send(
        &client,
        fe.addr,
        Method::GET,
        "hello.localhost:8080",
        "/path?q=1",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "abc-123"),
            ("x-forwarded-proto", "https"),
            ("x-appservice-proto", "https"),
            ("x-forwarded-tlsversion", "TLSv1_3"),
            ("x-original-url", "/admin"),
            ("x-forwarded-host", "evil.example"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK);
    assert!(kept.text().contains("GET /path?q=1\n"), "{}", kept.text());
    // The client is not a trusted proxy: what it claims is replaced.
    assert_eq!(kept.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(kept.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(kept.seen("x-appservice-proto").as_deref(), Some("http"));
    assert_eq!(kept.seen("x-forwarded-tlsversion"), None);
    assert_eq!(kept.seen("x-original-url").as_deref(), Some("/path?q=1"));
    assert_eq!(
        kept.seen("x-forwarded-host").as_deref(),
        Some("hello.localhost:8080")
    );
    assert_eq!(kept.seen("host").as_deref(), Some("hello.localhost:8080"));
    assert_eq!(kept.seen("x-request-id").as_deref(), Some("abc-123"));
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));

    for malformed in [None, Some("bad id!"), Some("a/b")] {
        let headers: Vec<(&str, &str)> = malformed
            .map(|id| ("x-request-id", id))
            .into_iter()
            .collect();
        let answer = send(
            &client,
            fe.addr,
            Method::GET,
            "hello.localhost",
            "/",
            &headers,
            Bytes::new(),
        )
        .await;
        let id = answer
            .header("x-request-id")
            .expect("a request id")
            .to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(answer.seen("x-request-id"), Some(id));
        assert_eq!(answer.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    }

    // Headers that describe the client's connection never reach the instance.
    let hop = raw(
        fe.addr,
        "GET / HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close, X-Secret\r\n\
         X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         TE: trailers\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(hop.status, StatusCode::OK);
    for header in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert_eq!(hop.seen(header), None, "{header} reached the instance");
    }
    assert_ne!(hop.seen("connection").as_deref(), Some("close, X-Secret"));
    assert_eq!(hop.seen("x-kept").as_deref(), Some("yes"));

    // Nor do the instance's.
    let answer = get(&client, fe.addr, "hello.localhost", "/hop").await;
    assert_eq!(answer.status, StatusCode::OK);
    for header in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(answer.header(header), None, "{header} reached the client");
    }
    assert_eq!(answer.header("x-end-to-end"), Some("1"));
    assert!(answer.header("x-request-id").is_some());
}

#[tokio::test]
async fn access_restrictions_use_the_client_address_a_trusted_proxy_gives() {
    let hello = TestBackend::start("hello-0").await;
    let open = TestBackend::start("open-0").await;
    let partners = SiteConfig {
        access_rules: vec![
            rule("blocked", 100, AccessAction::Deny, "203.0.113.66/32"),
            rule("partners", 200, AccessAction::Allow, "203.0.113.0/24"),
        ],
        ..SiteConfig::default()
    };
    let local = SiteConfig {
        access_rules: vec![rule("local", 100, AccessAction::Allow, "127.0.0.0/8")],
        ..SiteConfig::default()
    };
    let routes = || {
        table_with(&[
            ("hello", partners.clone(), &[hello.addr]),
            ("open", local.clone(), &[open.addr]),
        ])
    };
    let client = client();
    let request = |fe: SocketAddr, host: &'static str, xff: Option<&'static str>| {
        let client = client.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
            send(&client, fe, Method::GET, host, "/", &headers, Bytes::new()).await
        }
    };

    // The peer (127.0.0.1) is the client: what it claims in X-Forwarded-For changes nothing.
    let direct = TestFrontend::with_routes(routes()).await;
    let denied = request(direct.addr, "hello.localhost", Some("203.0.113.5")).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.header("x-stamp-error"), Some("access-denied"));
    assert!(denied.header("x-request-id").is_some());
    let page = denied.text();
    assert!(page.contains("<title>403 access-denied</title>"), "{page}");
    assert!(page.contains("access restrictions of hello"), "{page}");
    let allowed = request(direct.addr, "open.localhost", Some("203.0.113.5")).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(
        allowed.seen("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );

    // Behind a trusted proxy, the client is the rightmost untrusted address.
    let behind = TestFrontend::start(
        FrontendConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().expect("net")],
            ..FrontendConfig::default()
        },
        routes(),
    )
    .await;
    let partner = request(
        behind.addr,
        "hello.localhost",
        Some("198.51.100.1, 203.0.113.5"),
    )
    .await;
    assert_eq!(partner.status, StatusCode::OK, "{}", partner.text());
    assert_eq!(
        partner.seen("x-forwarded-for").as_deref(),
        Some("198.51.100.1, 203.0.113.5, 127.0.0.1")
    );
    for (xff, status) in [
        (Some("203.0.113.5, 198.51.100.1"), StatusCode::FORBIDDEN),
        (Some("203.0.113.66"), StatusCode::FORBIDDEN),
        (None, StatusCode::FORBIDDEN),
        (Some("203.0.113.7, 127.0.0.5"), StatusCode::OK),
    ] {
        let answer = request(behind.addr, "hello.localhost", xff).await;
        assert_eq!(answer.status, status, "{xff:?}");
    }
}

#[tokio::test]
async fn https_only_apps_redirect_plain_http() {
    let hello = TestBackend::start("hello-0").await;
    let open = TestBackend::start("open-0").await;
    let https_only = SiteConfig {
        https_only: true,
        ..SiteConfig::default()
    };
    let routes = || {
        table_with(&[
            ("hello", https_only.clone(), &[hello.addr]),
            ("open", SiteConfig::default(), &[open.addr]),
        ])
    };
    let client = client();
    for (https_port, location) in [
        (None, "https://hello.localhost/p/a?q=1&r=2"),
        (Some(443), "https://hello.localhost/p/a?q=1&r=2"),
        (Some(8443), "https://hello.localhost:8443/p/a?q=1&r=2"),
    ] {
        let fe = TestFrontend::start(
            FrontendConfig {
                https_port,
                ..FrontendConfig::default()
            },
            routes(),
        )
        .await;
        let answer = get(&client, fe.addr, "hello.localhost:8080", "/p/a?q=1&r=2").await;
        assert_eq!(
            answer.status,
            StatusCode::MOVED_PERMANENTLY,
            "{https_port:?}"
        );
        assert_eq!(answer.header("location"), Some(location));
        assert_eq!(answer.header("x-stamp-error"), None);
        assert!(answer.header("x-request-id").is_some());
        assert!(answer.set_cookies().is_empty());
        let other = get(&client, fe.addr, "open.localhost", "/").await;
        assert_eq!(other.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn over_tls_the_host_must_match_the_sni_and_https_only_apps_are_served() {
    use stamp_model::WallClock;
    let hello = TestBackend::start("hello-0").await;
    let world = TestBackend::start("world-0").await;
    let https_only = SiteConfig {
        https_only: true,
        ..SiteConfig::default()
    };
    let sites = [
        (app("hello"), https_only),
        (app("world"), SiteConfig::default()),
    ];
    let instances = [
        instance("hello", 0, InstanceState::Ready, hello.addr.port()),
        instance("world", 0, InstanceState::Ready, world.addr.port()),
    ];
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls_addr = tls_listener.local_addr().expect("addr");
    let frontend = Frontend::new(FrontendConfig {
        domain: "stamp.test".into(),
        https_port: Some(tls_addr.port()),
        ..FrontendConfig::default()
    });
    frontend.set_routes(RouteTable::build("stamp.test", &sites, &instances));
    let yesterday = Millis(stamp_model::SystemClock.now().0 - 86_400_000);
    let (cert, key) =
        stamp_frontend::tls::self_signed("stamp.test", yesterday).expect("a certificate");
    frontend
        .set_default_certificate(&cert, &key)
        .expect("a valid pair");
    let plain_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain_listener.local_addr().expect("addr");
    tokio::spawn({
        let frontend = frontend.clone();
        async move {
            frontend
                .serve_tls(tls_listener, std::future::pending())
                .await
        }
    });
    tokio::spawn({
        let frontend = frontend.clone();
        async move { frontend.serve(plain_listener, std::future::pending()).await }
    });

    let tcp = bounded("connect", TcpStream::connect(tls_addr))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("hello.stamp.test").expect("a name");
    let tls = bounded("handshake", tls_client(&cert).connect(name, tcp))
        .await
        .expect("a TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    let mut over_tls = async |host: &str| {
        let request = Request::builder()
            .uri("/over-tls")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = bounded("a response over TLS", sender.send_request(request))
            .await
            .expect("a response");
        collect(response).await
    };

    // HTTPS only: over TLS the app is served, and told so.
    let served = over_tls("hello.stamp.test").await;
    assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    assert_eq!(served.seen("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(served.seen("x-appservice-proto").as_deref(), Some("https"));
    assert!(
        served.seen("x-forwarded-tlsversion").is_some(),
        "{}",
        served.text()
    );
    // Same name, other case and a port: still the SNI's host.
    let same = over_tls("HELLO.stamp.test:443").await;
    assert_eq!(same.status, StatusCode::OK);
    // Another app on a connection opened for hello: 421, and the connection stays usable.
    let other = over_tls("world.stamp.test").await;
    assert_eq!(other.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(other.header("x-stamp-error"), Some("misdirected-request"));
    assert_eq!(over_tls("hello.stamp.test").await.status, StatusCode::OK);

    // Plain HTTP to the HTTPS-only app: redirected to the HTTPS port.
    let redirect = get(&client(), plain_addr, "hello.stamp.test", "/x?y=1").await;
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    let location = format!("https://hello.stamp.test:{}/x?y=1", tls_addr.port());
    assert_eq!(redirect.header("location"), Some(location.as_str()));
    // Plain HTTP to another app: no SNI to match, served.
    let world = get(&client(), plain_addr, "world.stamp.test", "/").await;
    assert_eq!(world.name(), "world-0");
}

// ---------------------------------------------------------------------------------------------
// Tests: timeouts, limits, errors, retries

#[tokio::test]
async fn slow_instance_times_out_after_the_apps_request_timeout() {
    let slow = TestBackend::start("slow").await;
    let quick = SiteConfig {
        request_timeout: Millis(300),
        ..SiteConfig::default()
    };
    let fe = TestFrontend::with_routes(table_with(&[("hello", quick, &[slow.addr])])).await;
    let client = client();
    let answer = get(&client, fe.addr, "hello.localhost", "/hang").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.header("x-stamp-error"), Some("instance-timeout"));
    assert!(answer.text().contains("300 ms"), "{}", answer.text());
    // Nothing stays counted in flight for the abandoned request.
    assert_eq!(fe.frontend.in_flight(slow.addr), 0);
}

/// Reads one response with a Content-Length from a kept-alive connection.
async fn read_one_response(stream: &mut TcpStream) -> Answer {
    let head = read_head(stream).await;
    let answer = parse_answer(&head);
    let length: usize = answer
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    bounded("a body", stream.read_exact(&mut body))
        .await
        .expect("the whole body");
    Answer {
        body: Bytes::from(body),
        ..answer
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    let hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::start(
        FrontendConfig {
            header_read_timeout: Duration::from_millis(300),
            ..FrontendConfig::default()
        },
        table(&[("hello", &[hello.addr])]),
    )
    .await;
    let mut stream = TcpStream::connect(fe.addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
            .await
            .expect("write");
        let answer = read_one_response(&mut stream).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.name(), "hello-0");
    }
    // Idle now: the front end closes the connection.
    let mut rest = Vec::new();
    let read = bounded(
        "the idle connection to close",
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(
        read.is_err() || rest.is_empty(),
        "unexpected bytes on an idle connection: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413_before_reaching_the_instance() {
    let mut hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::start(
        FrontendConfig {
            max_request_body: 10,
            ..FrontendConfig::default()
        },
        table(&[("hello", &[hello.addr])]),
    )
    .await;
    let client = client();
    let post = |body: &'static [u8], path: &'static str| {
        let client = client.clone();
        async move {
            send(
                &client,
                fe.addr,
                Method::POST,
                "hello.localhost",
                path,
                &[],
                Bytes::from_static(body),
            )
            .await
        }
    };
    let fits = post(b"0123456789", "/count").await;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(fits.text(), "hello-0\n10\n");

    // Declared too large: refused before any instance sees it (`/wait` would report it).
    let declared = post(b"0123456789a", "/wait").await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(declared.header("x-stamp-error"), Some("request-too-large"));
    assert!(
        declared.text().contains("at most 10 bytes"),
        "{}",
        declared.text()
    );
    assert!(
        hello.arrivals.try_recv().is_err(),
        "the instance saw the request"
    );

    // Chunked, so only known too large on the way: cut at the limit.
    let chunked = raw(
        fe.addr,
        "POST /count HTTP/1.1\r\nHost: hello.localhost\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n6\r\n012345\r\n6\r\n6789ab\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(
        chunked.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        chunked.text()
    );
    assert_eq!(chunked.header("x-stamp-error"), Some("request-too-large"));
}

/// A client still sending a body the front end refused (declared too large, cut at the limit
/// on the way, or for an app that does not exist) finishes sending and reads the answer: its
/// connection is not reset under it.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_reads_the_answer() {
    let hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::start(
        FrontendConfig {
            max_request_body: 1024 * 1024,
            ..FrontendConfig::default()
        },
        table(&[("hello", &[hello.addr])]),
    )
    .await;
    let half = vec![b'x'; 2 * 1024 * 1024];
    let declared = |host: &str| {
        format!(
            "POST /count HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            2 * half.len()
        )
    };
    let chunk = format!("{:x}\r\n", half.len());
    let chunked = "POST /count HTTP/1.1\r\nHost: hello.localhost\r\n\
                   Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    for (what, first, second, status, error) in [
        (
            "declared too large",
            [declared("hello.localhost").as_bytes(), &half].concat(),
            half.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
        ),
        (
            "chunked, cut at the limit",
            [chunked.as_bytes(), chunk.as_bytes(), &half, b"\r\n"].concat(),
            [chunk.as_bytes(), &half, b"\r\n0\r\n\r\n"].concat(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
        ),
        (
            "no such app",
            [declared("nope.localhost").as_bytes(), &half].concat(),
            half.clone(),
            StatusCode::NOT_FOUND,
            "no-such-app",
        ),
    ] {
        let mut stream = bounded("connect", TcpStream::connect(fe.addr))
            .await
            .unwrap();
        bounded("the first half", stream.write_all(&first))
            .await
            .unwrap_or_else(|e| panic!("{what}: the first half: {e}"));
        // Long enough for the front end to have refused it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        bounded("the second half", stream.write_all(&second))
            .await
            .unwrap_or_else(|e| panic!("{what}: the second half: {e}"));
        let mut answer = Vec::new();
        bounded("the answer", stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|e| panic!("{what}: the answer: {e}"));
        let answer = parse_answer(&String::from_utf8_lossy(&answer));
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(answer.header("x-stamp-error"), Some(error), "{what}");
    }
}

#[tokio::test]
async fn request_heads_over_64_kib_get_431() {
    let hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[hello.addr])])).await;
    let head = |size: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        )
    };
    let fits = raw(fe.addr, &head(60 * 1024)).await;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(fits.name(), "hello-0");
    let too_big = raw(fe.addr, &head(70 * 1024)).await;
    assert_eq!(too_big.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn dead_instance_is_skipped_unless_the_request_has_a_body() {
    let live0 = TestBackend::start("live0").await;
    let live1 = TestBackend::start("live1").await;
    let dead = dead_addr().await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[live0.addr, dead, live1.addr])])).await;
    let client = client();

    // Picks go live0, dead (so on to live1), live1, ...: every request succeeds.
    let mut names = Vec::new();
    for _ in 0..6 {
        let answer = get(&client, fe.addr, "hello.localhost", "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        names.push(answer.name());
    }
    assert_eq!(
        names,
        ["live0", "live1", "live1", "live0", "live1", "live1"]
    );

    // A body cannot be sent twice: a request with one that meets the dead instance fails.
    fe.frontend
        .set_routes(table(&[("hello", &[dead, live0.addr])]));
    let post = send(
        &client,
        fe.addr,
        Method::POST,
        "hello.localhost",
        "/",
        &[],
        Bytes::from_static(b"payload"),
    )
    .await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
    assert_eq!(post.header("x-stamp-error"), Some("instance-unreachable"));
    assert!(
        post.text()
            .contains("<title>502 instance-unreachable</title>")
    );
    let get_live = get(&client, fe.addr, "hello.localhost", "/").await;
    assert_eq!(get_live.name(), "live0");
    // An empty POST meets the dead instance too, and is retried.
    let empty_post = send(
        &client,
        fe.addr,
        Method::POST,
        "hello.localhost",
        "/",
        &[("content-length", "0")],
        Bytes::new(),
    )
    .await;
    assert_eq!(empty_post.status, StatusCode::OK);
    assert_eq!(empty_post.name(), "live0");

    // With no live instance at all, each is tried once and the client gets a 502.
    fe.frontend.set_routes(table(&[("hello", &[dead])]));
    let answer = get(&client, fe.addr, "hello.localhost", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("x-stamp-error"), Some("instance-unreachable"));
}

#[tokio::test]
async fn the_retry_budget_stops_retrying_when_most_requests_need_one() {
    let live = TestBackend::start("live").await;
    let dead = [dead_addr().await, dead_addr().await];
    let fe = TestFrontend::with_routes(table(&[("hello", &[dead[0], dead[1], live.addr])])).await;
    let client = client();
    // Round robin starts two requests in three on a dead instance: 3 retries per 3 requests,
    // where the budget earns 0.6 (and 10 per second): the 100 banked run out after about 40
    // rounds, and then a request meets a dead instance without being retried.
    let mut served = 0;
    let mut refused = None;
    for sent in 1..=1_000 {
        let answer = get(&client, fe.addr, "hello.localhost", "/").await;
        if answer.status == StatusCode::OK {
            served += 1;
        } else {
            assert_eq!(answer.header("x-stamp-error"), Some("instance-unreachable"));
            refused = Some(sent);
            break;
        }
    }
    let refused = refused.expect("the budget ran out");
    assert!(
        served >= 100,
        "the first {served} requests were all retried"
    );
    assert!(refused < 1_000);
}

#[tokio::test]
async fn instance_that_closes_without_answering_is_a_502() {
    // A "backend" that reads the request and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    let fe = TestFrontend::with_routes(table(&[("hello", &[addr])])).await;
    let answer = get(&client(), fe.addr, "hello.localhost", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        answer.header("x-stamp-error"),
        Some("instance-closed-connection")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: draining, bodies, protocols, shutdown

#[tokio::test]
async fn route_swap_and_drain() {
    let mut old = TestBackend::start("old").await;
    let new = TestBackend::start("new").await;
    let other = TestBackend::start("other").await;
    let fe =
        TestFrontend::with_routes(table(&[("hello", &[old.addr]), ("world", &[other.addr])])).await;
    let client = client();
    assert!(!fe.frontend.is_drained(old.addr), "in rotation");

    let slow = tokio::spawn({
        let client = client.clone();
        let addr = fe.addr;
        async move { get(&client, addr, "hello.localhost", "/wait").await }
    });
    old.wait_for_arrival().await;

    fe.frontend
        .set_routes(table(&[("hello", &[new.addr]), ("world", &[other.addr])]));
    assert_eq!(fe.frontend.in_flight(old.addr), 1);
    assert!(!fe.frontend.is_drained(old.addr), "a request is in flight");
    assert!(!fe.frontend.is_drained(new.addr), "in rotation");
    for _ in 0..3 {
        let answer = get(&client, fe.addr, "hello.localhost", "/").await;
        assert_eq!(answer.name(), "new");
    }
    assert!(!fe.frontend.is_drained(old.addr), "still in flight");

    old.release();
    let answer = bounded("the slow request", slow).await.expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.name(), "old");
    eventually("the old instance to drain", || {
        fe.frontend.is_drained(old.addr)
    })
    .await;
    assert_eq!(fe.frontend.in_flight(old.addr), 0);
    assert!(!fe.frontend.is_drained(new.addr));

    // A response still streaming from another instance does not hold up a drain.
    let (body_tx, body_rx) = mpsc::channel::<Chunk>(1);
    let streaming = tokio::spawn({
        let client: Client<HttpConnector, StreamBody<tokio_stream_shim::Receiver<Chunk>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let addr = fe.addr;
        async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{addr}/echo"))
                .header("host", "world.localhost")
                .body(StreamBody::new(tokio_stream_shim::Receiver(body_rx)))
                .expect("request");
            let response = client.request(request).await.expect("a response");
            collect(response).await
        }
    });
    body_tx
        .send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .expect("send a chunk");
    eventually("the echo to be in flight", || {
        fe.frontend.in_flight(other.addr) == 1
    })
    .await;
    fe.frontend.set_routes(table(&[("world", &[other.addr])]));
    eventually("the new instance to drain", || {
        fe.frontend.is_drained(new.addr)
    })
    .await;
    drop(body_tx);
    let echoed = bounded("the echo", streaming).await.expect("task");
    assert_eq!(echoed.text(), "part");
}

type Chunk = Result<Frame<Bytes>, Infallible>;

/// A `Stream` over an mpsc receiver, for a streaming request body.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Receiver<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for Receiver<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::test]
async fn request_body_streams_through() {
    let echo = TestBackend::start("echo").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[echo.addr])])).await;
    let body: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into();
    let answer = send(
        &client(),
        fe.addr,
        Method::POST,
        "hello.localhost",
        "/echo",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), body.len());
    assert!(answer.body == body, "the body changed on the way");
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[hello.addr])])).await;
    let stream = TcpStream::connect(fe.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .uri("http://hello.localhost/h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = bounded("an h2 response", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = bounded("an h2 body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("hello-0\nGET /h2\n"), "{text}");
    assert!(text.contains("host: hello.localhost\n"), "{text}");
}

/// Opens a connection and sends a WebSocket handshake for `path` on `chat.localhost`.
async fn websocket_handshake(
    frontend: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (TcpStream, Answer) {
    let mut stream = TcpStream::connect(frontend).await.expect("connect");
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: ARRAffinity={c}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: chat.localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{cookie}\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the handshake");
    let head = read_head(&mut stream).await;
    (stream, parse_answer(&head))
}

#[tokio::test]
async fn websockets_pass_through_with_affinity() {
    let ws0 = start_websocket_backend("ws0").await;
    let ws1 = start_websocket_backend("ws1").await;
    let fe = TestFrontend::with_routes(table(&[("chat", &[ws0, ws1])])).await;

    let (mut first, answer) = websocket_handshake(fe.addr, "/socket", None).await;
    assert_eq!(answer.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(answer.header("upgrade"), Some("websocket"));
    assert!(
        answer
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
    );
    assert!(answer.header("x-request-id").is_some());
    let token = answer
        .affinity_token()
        .expect("an affinity cookie on the 101");
    assert_eq!(read_frame(&mut first).await.as_deref(), Some(&b"ws0"[..]));
    for message in [&b"hello"[..], b"second message"] {
        write_frame(&mut first, message, true).await;
        assert_eq!(read_frame(&mut first).await.as_deref(), Some(message));
    }
    assert_eq!(
        fe.frontend.in_flight(ws0),
        1,
        "an open WebSocket is in flight"
    );

    // The cookie pins later sockets to the same instance (round robin would pick ws1).
    for _ in 0..2 {
        let (mut again, answer) = websocket_handshake(fe.addr, "/socket", Some(&token)).await;
        assert_eq!(answer.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(answer.set_cookies().is_empty());
        assert_eq!(read_frame(&mut again).await.as_deref(), Some(&b"ws0"[..]));
    }

    drop(first);
    eventually("closed WebSockets to leave the in-flight count", || {
        fe.frontend.in_flight(ws0) == 0
    })
    .await;

    // An instance that does not switch: its answer is passed on and the connection stays HTTP.
    let (mut refused, answer) = websocket_handshake(fe.addr, "/refuse", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.header("upgrade"), None);
    let length: usize = answer
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("a length");
    let mut body = vec![0u8; length];
    refused.read_exact(&mut body).await.expect("the body");
    assert_eq!(body, b"refused");
    refused
        .write_all(b"GET /plain HTTP/1.1\r\nHost: chat.localhost\r\n\r\n")
        .await
        .expect("write");
    let plain = read_one_response(&mut refused).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(
        ["ws0", "ws1"].contains(&plain.text().as_str()),
        "{}",
        plain.text()
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_and_refuses_new_connections() {
    let mut hello = TestBackend::start("hello-0").await;
    let mut fe = TestFrontend::with_routes(table(&[("hello", &[hello.addr])])).await;
    let client = client();
    let slow = tokio::spawn({
        let client = client.clone();
        let addr = fe.addr;
        async move { get(&client, addr, "hello.localhost", "/wait").await }
    });
    hello.wait_for_arrival().await;

    let _ = fe.shutdown.take().expect("not yet shut down").send(());
    bounded("the listener to close", async {
        while TcpStream::connect(fe.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!fe.serving.is_finished(), "a request is still in flight");

    hello.release();
    let answer = bounded("the in-flight request", slow).await.expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.name(), "hello-0");
    bounded("serve to return", &mut fe.serving)
        .await
        .expect("task")
        .expect("serve ends cleanly");
    assert!(TcpStream::connect(fe.addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Tests: metrics

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    })
}

#[tokio::test]
async fn metrics_count_requests_latency_bytes_and_errors() {
    let mut hello = TestBackend::start("hello-0").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[hello.addr]), ("empty", &[])])).await;
    let client = client();
    for _ in 0..2 {
        assert_eq!(
            get(&client, fe.addr, "hello.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    let echoed = send(
        &client,
        fe.addr,
        Method::POST,
        "hello.localhost",
        "/echo",
        &[],
        Bytes::from_static(b"12345"),
    )
    .await;
    assert_eq!(echoed.text(), "12345");
    assert_eq!(
        get(&client, fe.addr, "nope.localhost", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&client, fe.addr, "empty.localhost", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let hello_2xx =
        "stamp_http_requests_total{app=\"hello\",instance=\"hello-web-0\",class=\"2xx\"}";
    eventually("three hello requests in the metrics", || {
        sample(&fe.metrics(), hello_2xx) == Some(3.0)
    })
    .await;
    let text = fe.metrics();
    for (series, value) in [
        (hello_2xx, 3.0),
        (
            "stamp_http_requests_total{app=\"hello\",instance=\"hello-web-0\",class=\"5xx\"}",
            0.0,
        ),
        (
            "stamp_http_requests_total{app=\"hello\",instance=\"\",class=\"2xx\"}",
            0.0,
        ),
        (
            "stamp_http_requests_total{app=\"empty\",instance=\"\",class=\"5xx\"}",
            1.0,
        ),
        (
            "stamp_http_request_duration_seconds_bucket{app=\"hello\",le=\"+Inf\"}",
            3.0,
        ),
        (
            "stamp_http_request_duration_seconds_count{app=\"hello\"}",
            3.0,
        ),
        (
            "stamp_http_request_duration_seconds_count{app=\"empty\"}",
            1.0,
        ),
        (
            "stamp_http_in_flight{app=\"hello\",instance=\"hello-web-0\"}",
            0.0,
        ),
        (
            "stamp_http_received_bytes_total{app=\"hello\",instance=\"hello-web-0\"}",
            5.0,
        ),
        (
            "stamp_frontend_errors_total{app=\"\",code=\"no-such-app\"}",
            1.0,
        ),
        (
            "stamp_frontend_errors_total{app=\"empty\",code=\"no-ready-instance\"}",
            1.0,
        ),
        (
            "stamp_frontend_errors_total{app=\"hello\",code=\"no-ready-instance\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    let sent = sample(
        &text,
        "stamp_http_sent_bytes_total{app=\"hello\",instance=\"hello-web-0\"}",
    )
    .expect("sent bytes");
    assert!(sent > 5.0, "{text}");
    for family in [
        "# TYPE stamp_http_requests_total counter",
        "# TYPE stamp_http_request_duration_seconds histogram",
        "# TYPE stamp_http_in_flight gauge",
        "# TYPE stamp_http_received_bytes_total counter",
        "# TYPE stamp_http_sent_bytes_total counter",
        "# TYPE stamp_frontend_errors_total counter",
    ] {
        assert!(text.contains(family), "{family}\n{text}");
    }
    // Buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("stamp_http_request_duration_seconds_bucket{app=\"hello\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(buckets.len(), 14);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // The autoscaler's view, with a request held in flight.
    let held = tokio::spawn({
        let client = client.clone();
        let addr = fe.addr;
        async move { get(&client, addr, "hello.localhost", "/wait").await }
    });
    hello.wait_for_arrival().await;
    let apps = fe.frontend.app_metrics();
    let names: Vec<&str> = apps.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(names, ["empty", "hello"]);
    let (empty, hello_metrics) = (&apps[0], &apps[1]);
    assert_eq!(
        (empty.requests, empty.errors_5xx, empty.in_flight),
        (1, 1, 0)
    );
    assert_eq!(hello_metrics.requests, 3);
    assert_eq!(hello_metrics.errors_5xx, 0);
    assert_eq!(hello_metrics.in_flight, 1);
    assert_eq!(hello_metrics.received_bytes, 5);
    assert_eq!(hello_metrics.latency_count, 3);
    assert!(
        sample(
            &fe.metrics(),
            "stamp_http_in_flight{app=\"hello\",instance=\"hello-web-0\"}"
        ) == Some(1.0)
    );
    hello.release();
    bounded("the held request", held).await.expect("task");
}
