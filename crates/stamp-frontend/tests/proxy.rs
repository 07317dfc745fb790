//! The front end against real backends: tiny hyper servers on 127.0.0.1:0 that answer with their
//! name and the request they saw, a real front end on 127.0.0.1:0, and real HTTP clients (the
//! hyper-util pooled client, raw TCP writes where the exact bytes matter, an h2 connection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::{AppName, InstanceState, ObservedInstance};
use stamp_routes::RouteTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this, so a failure fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Backends

type BackendBody = Either<Full<Bytes>, Incoming>;

/// A backend instance. Paths: `/wait` reports its arrival then waits for a permit on `gate`;
/// `/hang` never answers; `/echo` streams the request body back; `/hop` answers with hop-by-hop
/// headers; anything else answers with the backend's name, the request line and its headers.
struct TestBackend {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    arrivals: mpsc::UnboundedReceiver<()>,
}

impl TestBackend {
    async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let gate = Arc::new(Semaphore::new(0));
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let name: Arc<str> = name.into();
        let shared_gate = Arc::clone(&gate);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = Arc::clone(&name);
                let gate = Arc::clone(&shared_gate);
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        backend_answer(
                            Arc::clone(&name),
                            Arc::clone(&gate),
                            arrived.clone(),
                            request,
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
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
// Routes

fn app(name: &str) -> AppName {
    AppName::parse(name).expect("valid app name")
}

fn instance(app_name: &str, worker: u32, state: InstanceState, port: u16) -> ObservedInstance {
    let spec = stamp_model::fixtures::spec(app_name, worker, 1);
    stamp_model::fixtures::observed(&format!("{app_name}-web-{worker}"), spec, state, port)
}

/// A table under `localhost`: each app with ready instances at `addrs`, in that order.
fn table(apps: &[(&str, &[SocketAddr])]) -> RouteTable {
    let names: Vec<AppName> = apps.iter().map(|(name, _)| app(name)).collect();
    let instances: Vec<ObservedInstance> = apps
        .iter()
        .flat_map(|(name, addrs)| {
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
    RouteTable::build("localhost", &names, &instances)
}

// ---------------------------------------------------------------------------------------------
// The front end and clients

struct TestFrontend {
    frontend: Frontend,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

impl TestFrontend {
    async fn start(config: FrontendConfig, routes: RouteTable) -> TestFrontend {
        let frontend = Frontend::new(config);
        frontend.set_routes(routes);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind front end");
        let addr = listener.local_addr().expect("front end addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = tokio::spawn({
            let frontend = frontend.clone();
            async move {
                frontend
                    .serve(listener, async move {
                        let _ = stop.await;
                    })
                    .await
            }
        });
        TestFrontend {
            frontend,
            addr,
            shutdown: Some(shutdown),
            serving,
        }
    }

    async fn with_routes(routes: RouteTable) -> TestFrontend {
        TestFrontend::start(FrontendConfig::default(), routes).await
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
    let (parts, body) = response.into_parts();
    let body = bounded("a response body", body.collect())
        .await
        .expect("a whole body")
        .to_bytes();
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

/// Writes `request` as is on a new connection and reads until the server closes it (the request
/// should say `Connection: close`). Responses from these tests carry a Content-Length, so the
/// body is what follows the head.
async fn raw(frontend: SocketAddr, request: &str) -> Answer {
    let mut stream = bounded("connect", TcpStream::connect(frontend))
        .await
        .expect("connect to the front end");
    bounded("write", stream.write_all(request.as_bytes()))
        .await
        .expect("write request");
    let mut bytes = Vec::new();
    bounded("read", stream.read_to_end(&mut bytes))
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&bytes).into_owned();
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

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn routes_by_host() {
    let hello = TestBackend::start("hello-0").await;
    let world = TestBackend::start("world-0").await;
    let mut routes = vec![
        instance("hello", 0, InstanceState::Ready, hello.addr.port()),
        instance("world", 0, InstanceState::Ready, world.addr.port()),
        instance("empty", 0, InstanceState::Starting, 1),
    ];
    routes.push(instance("empty", 1, InstanceState::Crashed, 2));
    let table = RouteTable::build(
        "localhost",
        &[app("hello"), app("world"), app("empty")],
        &routes,
    );
    let fe = TestFrontend::with_routes(table).await;
    let client = client();

    for (host, name) in [
        ("hello.localhost", "hello-0"),
        ("world.localhost", "world-0"),
        ("HELLO.localhost:8080", "hello-0"),
        ("world.localhost.", "world-0"),
    ] {
        let answer = get(&client, fe.addr, host, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{host}");
        assert_eq!(answer.name(), name, "{host}");
        assert_eq!(answer.header("x-stamp-error"), None);
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
        &[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "abc-123")],
        Bytes::new(),
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK);
    assert!(kept.text().contains("GET /path?q=1\n"), "{}", kept.text());
    assert_eq!(
        kept.seen("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(kept.seen("x-forwarded-proto").as_deref(), Some("http"));
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
         TE: trailers\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(hop.status, StatusCode::OK);
    for header in ["x-secret", "keep-alive", "proxy-authorization", "te"] {
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
async fn slow_instance_times_out() {
    let slow = TestBackend::start("slow").await;
    let config = FrontendConfig {
        request_timeout: Duration::from_millis(300),
        ..FrontendConfig::default()
    };
    let fe = TestFrontend::start(config, table(&[("hello", &[slow.addr])])).await;
    let client = client();
    let answer = get(&client, fe.addr, "hello.localhost", "/hang").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.header("x-stamp-error"), Some("instance-timeout"));
    assert!(answer.text().contains("300 ms"), "{}", answer.text());
    // Nothing stays counted in flight for the abandoned request.
    assert_eq!(fe.frontend.in_flight(slow.addr), 0);
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

#[tokio::test]
async fn route_swap_and_drain() {
    let mut old = TestBackend::start("old").await;
    let new = TestBackend::start("new").await;
    let fe = TestFrontend::with_routes(table(&[("hello", &[old.addr])])).await;
    let client = client();
    assert!(!fe.frontend.is_drained(old.addr), "in rotation");

    let slow = tokio::spawn({
        let client = client.clone();
        let addr = fe.addr;
        async move { get(&client, addr, "hello.localhost", "/wait").await }
    });
    old.wait_for_arrival().await;

    fe.frontend.set_routes(table(&[("hello", &[new.addr])]));
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
    bounded("the old instance to drain", async {
        while !fe.frontend.is_drained(old.addr) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(fe.frontend.in_flight(old.addr), 0);
    assert!(!fe.frontend.is_drained(new.addr));
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
