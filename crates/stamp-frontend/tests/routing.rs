//! Testing in production through a real front end: app `hello` with a production slot and a
//! `staging` slot, each served by a tiny hyper backend on 127.0.0.1:0 that answers with its
//! slot's name, and clients that carry (or not) the `x-ms-routing-name` cookie and query.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{Scheme, bounded, collect_response, http1_backend, serve_frontend, tls_client};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stamp_frontend::{Frontend, FrontendConfig};
use stamp_model::fixtures::{observed, spec_in};
use stamp_model::{AppName, InstanceState, Millis, SiteConfig, SlotName, WallClock};
use stamp_routes::{RouteTable, SiteRoute};
use tokio::net::TcpStream;

/// A backend that answers every request with `name`.
async fn backend(name: &'static str) -> SocketAddr {
    http1_backend(move |_: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            name.as_bytes(),
        ))))
    })
    .await
}

/// `hello` under `domain`: production (lane 0) at `production`, and `staging` (lane 1) with
/// `routing` at `staging` when given (else staging has no ready instance).
fn table(
    domain: &str,
    production: SocketAddr,
    staging: Option<SocketAddr>,
    routing: Option<u8>,
) -> RouteTable {
    table_with(domain, SiteConfig::default(), production, staging, routing)
}

/// [`table`] with production's front-end configuration `site`.
fn table_with(
    domain: &str,
    site: SiteConfig,
    production: SocketAddr,
    staging: Option<SocketAddr>,
    routing: Option<u8>,
) -> RouteTable {
    let app = AppName::parse("hello").expect("app name");
    let sites = [
        SiteRoute::from((app.clone(), site)),
        SiteRoute {
            app,
            slot: SlotName::parse("staging").expect("slot name"),
            lane: 1,
            site: SiteConfig::default(),
            routing,
        },
    ];
    let mut instances = vec![observed(
        "hello-web-0",
        spec_in("hello", "production", "web", 0, 1),
        InstanceState::Ready,
        production.port(),
    )];
    if let Some(staging) = staging {
        instances.push(observed(
            "hello-staging-web-0",
            spec_in("hello", "staging", "web", 0, 1),
            InstanceState::Ready,
            staging.port(),
        ));
    }
    RouteTable::build_slots(domain, &sites, &instances)
}

/// A plain-HTTP front end on 127.0.0.1:0 serving `routes`, until the test's runtime ends.
async fn frontend(routes: RouteTable) -> SocketAddr {
    let frontend = Frontend::new(FrontendConfig::default());
    frontend.set_routes(routes);
    let (addr, _serving) = serve_frontend(&frontend, Scheme::Http, std::future::pending()).await;
    addr
}

/// A front end serving `hello` with backends `production` and `staging` answering so.
async fn hello(routing: Option<u8>) -> SocketAddr {
    let production = backend("production").await;
    let staging = backend("staging").await;
    frontend(table("localhost", production, Some(staging), routing)).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The routing cookie this response sets, whole, if any.
    fn routing_cookie(&self) -> Option<&str> {
        let mut cookies = self
            .set_cookies()
            .into_iter()
            .filter(|c| c.starts_with("x-ms-routing-name="));
        let first = cookies.next();
        assert_eq!(cookies.next(), None, "one routing cookie at most");
        first
    }

    /// The slot the routing cookie names.
    fn routing_name(&self) -> Option<&str> {
        self.routing_cookie()?
            .strip_prefix("x-ms-routing-name=")?
            .split(';')
            .next()
    }
}

/// No cookie jar: every request is a fresh client unless it sends `cookie` itself. Connections
/// are pooled, which the front end does not see as a client identity.
struct Clients(Client<HttpConnector, Full<Bytes>>);

impl Clients {
    fn new() -> Clients {
        Clients(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn get(&self, fe: SocketAddr, host: &str, path: &str, cookie: Option<&str>) -> Answer {
        let mut request = Request::builder()
            .uri(format!("http://{fe}{path}"))
            .header("host", host);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let response = bounded("a response", self.0.request(request))
            .await
            .expect("the front end answers");
        collect(response).await
    }
}

async fn collect(response: Response<Incoming>) -> Answer {
    let (parts, body) = collect_response(response).await;
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The routing name that pins a client to the slot that answered `body`.
fn name_of(body: &str) -> &str {
    match body {
        "production" => "self",
        other => other,
    }
}

#[tokio::test]
async fn fresh_clients_are_split_by_percentage_and_pinned() {
    let fe = hello(Some(30)).await;
    let clients = Clients::new();
    let mut staging = 0;
    for _ in 0..1000 {
        let answer = clients.get(fe, "hello.localhost", "/", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(
            answer.routing_name(),
            Some(name_of(&answer.body)),
            "{:?}",
            answer.set_cookies()
        );
        assert_eq!(
            answer
                .routing_cookie()
                .map(|c| c.split_once(';').map(|s| s.1)),
            Some(Some(" Max-Age=3600; Path=/; HttpOnly")),
            "no Secure over plain HTTP"
        );
        // Appended next to the affinity cookies, not instead of them.
        assert_eq!(answer.set_cookies().len(), 3, "{:?}", answer.set_cookies());
        if answer.body == "staging" {
            staging += 1;
        }
    }
    // Binomial(1000, 0.3): sd ≈ 14.5, so ±60 is more than 4 sd.
    assert!(
        (240..=360).contains(&staging),
        "{staging} of 1000 to staging"
    );
}

#[tokio::test]
async fn the_cookie_keeps_a_client_on_its_slot() {
    let fe = hello(Some(30)).await;
    let clients = Clients::new();
    for (cookie, expected) in [
        ("x-ms-routing-name=staging", "staging"),
        ("x-ms-routing-name=self", "production"),
        // Among other cookies.
        ("a=1; x-ms-routing-name=staging; b=2", "staging"),
    ] {
        for _ in 0..50 {
            let answer = clients.get(fe, "hello.localhost", "/", Some(cookie)).await;
            assert_eq!(answer.body, expected, "{cookie}");
            assert_eq!(answer.routing_cookie(), None, "{cookie}: already pinned");
        }
    }
    // A slot with no rule (or none of that name) pins nothing: the client is placed afresh.
    let answer = clients
        .get(fe, "hello.localhost", "/", Some("x-ms-routing-name=qa"))
        .await;
    assert_eq!(answer.routing_name(), Some(name_of(&answer.body)));
}

#[tokio::test]
async fn the_query_opts_in_and_out() {
    let fe = hello(Some(30)).await;
    let clients = Clients::new();
    let staging = clients
        .get(fe, "hello.localhost", "/?x-ms-routing-name=staging", None)
        .await;
    assert_eq!(staging.body, "staging");
    assert_eq!(
        staging.routing_cookie(),
        Some("x-ms-routing-name=staging; Max-Age=3600; Path=/; HttpOnly")
    );
    // Opting out wins over a cookie, and replaces it.
    let production = clients
        .get(
            fe,
            "hello.localhost",
            "/path?a=1&x-ms-routing-name=self",
            Some("x-ms-routing-name=staging"),
        )
        .await;
    assert_eq!(production.body, "production");
    assert_eq!(production.routing_name(), Some("self"));
    // An unknown name is ignored: the cookie decides, else the dice.
    let pinned = clients
        .get(
            fe,
            "hello.localhost",
            "/?x-ms-routing-name=nope",
            Some("x-ms-routing-name=staging"),
        )
        .await;
    assert_eq!(pinned.body, "staging");
    assert_eq!(pinned.routing_cookie(), None);
    for _ in 0..20 {
        let fresh = clients
            .get(fe, "hello.localhost", "/?x-ms-routing-name=nope", None)
            .await;
        assert_eq!(fresh.routing_name(), Some(name_of(&fresh.body)));
    }
}

#[tokio::test]
async fn a_zero_percent_rule_is_opt_in_only() {
    let fe = hello(Some(0)).await;
    let clients = Clients::new();
    for _ in 0..100 {
        let answer = clients.get(fe, "hello.localhost", "/", None).await;
        assert_eq!(answer.body, "production");
        assert_eq!(answer.routing_name(), Some("self"));
    }
    let opted = clients
        .get(fe, "hello.localhost", "/?x-ms-routing-name=staging", None)
        .await;
    assert_eq!(opted.body, "staging");
    assert_eq!(opted.routing_name(), Some("staging"));
    let pinned = clients
        .get(
            fe,
            "hello.localhost",
            "/",
            Some("x-ms-routing-name=staging"),
        )
        .await;
    assert_eq!(pinned.body, "staging");
}

#[tokio::test]
async fn without_a_rule_there_is_no_routing() {
    let fe = hello(None).await;
    let clients = Clients::new();
    for (path, cookie) in [
        ("/?x-ms-routing-name=staging", None),
        ("/", Some("x-ms-routing-name=staging")),
        ("/", None),
    ] {
        let answer = clients.get(fe, "hello.localhost", path, cookie).await;
        assert_eq!(answer.body, "production", "{path} {cookie:?}");
        assert_eq!(answer.routing_cookie(), None, "{path} {cookie:?}");
    }
}

#[tokio::test]
async fn the_slot_host_is_served_directly() {
    let fe = hello(Some(30)).await;
    let clients = Clients::new();
    for (path, cookie) in [
        ("/", None),
        ("/?x-ms-routing-name=self", None),
        ("/", Some("x-ms-routing-name=self")),
    ] {
        let answer = clients
            .get(fe, "hello-staging.localhost", path, cookie)
            .await;
        assert_eq!(answer.body, "staging", "{path} {cookie:?}");
        assert_eq!(answer.routing_cookie(), None, "{path} {cookie:?}");
    }
}

#[tokio::test]
async fn front_end_error_pages_carry_the_routing_cookie() {
    // All new clients go to staging, which has no ready instance.
    let production = backend("production").await;
    let fe = frontend(table("localhost", production, None, Some(100))).await;
    let clients = Clients::new();
    let answer = clients.get(fe, "hello.localhost", "/", None).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(
        answer
            .headers
            .get("x-stamp-error")
            .and_then(|v| v.to_str().ok()),
        Some("no-ready-instance")
    );
    assert_eq!(answer.routing_name(), Some("staging"));
    // Opting out reaches production.
    let out = clients
        .get(fe, "hello.localhost", "/?x-ms-routing-name=self", None)
        .await;
    assert_eq!(out.body, "production");
}

#[tokio::test]
async fn over_tls_the_routing_cookie_is_secure() {
    const DOMAIN: &str = "stamp.test";
    let production = backend("production").await;
    let staging = backend("staging").await;
    let frontend = Frontend::new(FrontendConfig {
        domain: DOMAIN.into(),
        ..FrontendConfig::default()
    });
    frontend.set_routes(table(DOMAIN, production, Some(staging), Some(30)));
    // Valid from yesterday, as the client checks with the real clock.
    let yesterday = Millis(stamp_model::SystemClock.now().0 - 86_400_000);
    let (cert, key) = stamp_frontend::tls::self_signed(DOMAIN, yesterday).expect("a certificate");
    frontend
        .set_default_certificate(&cert, &key)
        .expect("a valid pair");
    let (addr, _serving) = serve_frontend(&frontend, Scheme::Https, std::future::pending()).await;

    let tcp = bounded("connect", TcpStream::connect(addr))
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
    let request = Request::builder()
        .uri("/?x-ms-routing-name=staging")
        .header("host", "hello.stamp.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = bounded("a response over TLS", sender.send_request(request))
        .await
        .expect("a response");
    let answer = collect(response).await;
    assert_eq!(answer.body, "staging");
    assert_eq!(
        answer.routing_cookie(),
        Some("x-ms-routing-name=staging; Max-Age=3600; Path=/; HttpOnly; Secure")
    );
}

#[tokio::test]
async fn production_gate_applies_before_a_request_is_routed_to_a_slot() {
    // Production denies loopback clients; staging takes every client.
    let mut site = SiteConfig::default();
    site.access_rules.push(stamp_model::AccessRule {
        name: "no-loopback".into(),
        priority: 1,
        action: stamp_model::AccessAction::Deny,
        network: "127.0.0.0/8".parse().expect("network"),
    });
    let fe = gated(site).await;
    let clients = Clients::new();
    for query in ["/", "/?x-ms-routing-name=staging"] {
        let answer = clients.get(fe, "hello.localhost", query, None).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{query}: {}",
            answer.body
        );
        assert_eq!(
            answer.routing_cookie(),
            None,
            "{query}: refused before routing"
        );
    }
    // HTTPS only: plain HTTP is redirected before any slot is chosen.
    let fe = gated(SiteConfig {
        https_only: true,
        ..SiteConfig::default()
    })
    .await;
    for query in ["/", "/?x-ms-routing-name=staging"] {
        let answer = clients.get(fe, "hello.localhost", query, None).await;
        assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY, "{query}");
        assert_eq!(
            answer.routing_cookie(),
            None,
            "{query}: redirected before routing"
        );
    }
}

/// A front end where production has `site` and staging takes 100 % of its clients.
async fn gated(site: SiteConfig) -> SocketAddr {
    let production = backend("production").await;
    let staging = backend("staging").await;
    frontend(table_with(
        "localhost",
        site,
        production,
        Some(staging),
        Some(100),
    ))
    .await
}
