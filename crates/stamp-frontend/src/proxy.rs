//! The request path: resolve the host in the current snapshot, pick an instance, forward the
//! request with hop-by-hop headers stripped and forwarding headers added, retry on another
//! instance when a connection could not be made, and stream the answer back.
//!
//! Nothing here takes a lock or waits on the controller: the snapshot is one atomic load, the
//! round-robin cursor and the in-flight counts are atomics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use stamp_routes::{AppRoute, Backend, Lookup, RouteTable};

use crate::FrontendConfig;
use crate::body::{InFlight, RequestBody, ResponseBody};
use crate::conn::ConnInfo;
use crate::error::{FrontendError, PageContext, error_response};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones still seen in the wild. Never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// Where requests for one backend address go, and how many are in flight there.
struct Slot {
    authority: Authority,
    in_flight: Arc<AtomicUsize>,
}

/// One immutable routing state: the table and, per backend address, its slot.
struct Snapshot {
    table: RouteTable,
    slots: HashMap<SocketAddr, Slot>,
}

/// Shared by every clone of a `Frontend` and every connection task.
pub(crate) struct Inner {
    pub(crate) config: FrontendConfig,
    routes: ArcSwap<Snapshot>,
    /// Every address's in-flight counter while anything (a snapshot, a response body) holds
    /// it, so a counter survives snapshot swaps. Touched by `set_routes` and `is_drained`
    /// only, never on the request path.
    counters: Mutex<HashMap<SocketAddr, Weak<AtomicUsize>>>,
    client: Client<HttpConnector, RequestBody>,
}

impl Inner {
    pub(crate) fn new(config: FrontendConfig) -> Inner {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        let table = RouteTable::empty(&config.domain);
        Inner {
            config,
            routes: ArcSwap::from_pointee(Snapshot {
                table,
                slots: HashMap::new(),
            }),
            counters: Mutex::default(),
            client,
        }
    }

    pub(crate) fn set_routes(&self, table: RouteTable) {
        // Held across the store so concurrent callers publish in the order they built.
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut slots = HashMap::new();
        for backend in table.backends() {
            if slots.contains_key(&backend.addr) {
                continue;
            }
            let Ok(authority) = Authority::try_from(backend.addr.to_string()) else {
                tracing::warn!(addr = %backend.addr, "skipping a backend address that is not a valid URI authority");
                continue;
            };
            let in_flight = match counters.get(&backend.addr).and_then(Weak::upgrade) {
                Some(counter) => counter,
                None => {
                    let counter = Arc::new(AtomicUsize::new(0));
                    counters.insert(backend.addr, Arc::downgrade(&counter));
                    counter
                }
            };
            slots.insert(
                backend.addr,
                Slot {
                    authority,
                    in_flight,
                },
            );
        }
        self.routes.store(Arc::new(Snapshot { table, slots }));
        counters.retain(|_, counter| counter.strong_count() > 0);
    }

    /// An address is drained when no route of the current snapshot has it and nothing holds its
    /// counter: no response body from it is still streaming, and no request that loaded an older
    /// snapshot is still deciding where to go (a retry could still pick it).
    pub(crate) fn is_drained(&self, addr: SocketAddr) -> bool {
        if self.routes.load().slots.contains_key(&addr) {
            return false;
        }
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters
            .get(&addr)
            .is_none_or(|counter| counter.strong_count() == 0)
    }

    pub(crate) fn in_flight(&self, addr: SocketAddr) -> usize {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters
            .get(&addr)
            .and_then(Weak::upgrade)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Answers one request, always with a response: the instance's or an error page. Every
    /// response carries the request's id.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        let client_ip = conn.peer_ip();
        let request_id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) if is_valid_request_id(id) => id.clone(),
            _ => new_request_id(),
        };
        let mut response = self.route(request, client_ip, &request_id).await;
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
        request_id: &HeaderValue,
    ) -> Response<ResponseBody> {
        let snapshot = self.routes.load_full();
        let Some(host) = host_of(&request) else {
            return self.error_page(FrontendError::MissingHost, &snapshot, "", None);
        };
        let host = host.into_owned();
        let route = match snapshot.table.lookup(&host) {
            Lookup::NoSuchApp => {
                return self.error_page(FrontendError::NoSuchApp, &snapshot, &host, None);
            }
            Lookup::App(route) => route,
        };
        if route.backends.is_empty() {
            return self.error_page(
                FrontendError::NoReadyInstance,
                &snapshot,
                &host,
                Some(route),
            );
        }
        match self
            .forward(&snapshot, route, request, &host, client_ip, request_id)
            .await
        {
            Ok(response) => response,
            Err(error) => self.error_page(error, &snapshot, &host, Some(route)),
        }
    }

    fn error_page(
        &self,
        error: FrontendError,
        snapshot: &Snapshot,
        host: &str,
        route: Option<&AppRoute>,
    ) -> Response<ResponseBody> {
        error_response(
            error,
            &PageContext {
                host,
                domain: snapshot.table.domain(),
                app: route.map(|r| r.app.as_str()),
                request_timeout: self.config.request_timeout,
            },
        )
    }

    /// Sends the request to the app's next instance, and to the one after it when a connection
    /// could not be made and the request has no body (so nothing was consumed): each instance at
    /// most once. The whole exchange up to the response head is bounded by `request_timeout`.
    async fn forward(
        &self,
        snapshot: &Snapshot,
        route: &AppRoute,
        request: Request<Incoming>,
        host: &str,
        client_ip: IpAddr,
        request_id: &HeaderValue,
    ) -> Result<Response<ResponseBody>, FrontendError> {
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // hyper has already answered `Expect: 100-continue` on our side when the body is read.
        headers.remove(EXPECT);
        let host_value = HeaderValue::from_str(host).map_err(|_| FrontendError::Internal)?;
        add_forwarded_for(&mut headers, client_ip);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers.insert(X_FORWARDED_HOST, host_value.clone());
        headers.insert(HOST, host_value);
        headers.insert(X_REQUEST_ID, request_id.clone());
        let method = parts.method;
        let path = match parts.uri.path_and_query() {
            Some(path) if path.as_str().starts_with('/') => path.clone(),
            _ => PathAndQuery::from_static("/"),
        };

        let retriable = body.is_end_stream();
        let mut body = if retriable { None } else { Some(body) };

        let attempts = async {
            let (mut index, mut backend) = route.pick().ok_or(FrontendError::NoReadyInstance)?;
            let mut tried = 1;
            loop {
                let slot = snapshot
                    .slots
                    .get(&backend.addr)
                    .ok_or(FrontendError::Internal)?;
                let in_flight = InFlight::start(&slot.in_flight);
                let last = !retriable || tried >= route.backends.len();
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(slot.authority.clone())
                    .path_and_query(path.clone())
                    .build()
                    .map_err(|_| FrontendError::Internal)?;
                let mut upstream = Request::new(match body.take() {
                    Some(body) => RequestBody::Streaming(body),
                    None => RequestBody::Empty,
                });
                *upstream.method_mut() = method.clone();
                *upstream.uri_mut() = uri;
                *upstream.version_mut() = Version::HTTP_11;
                // The client consumes the request even when it fails to connect, so a request
                // that may be retried keeps a copy of its headers.
                *upstream.headers_mut() = if last {
                    std::mem::take(&mut headers)
                } else {
                    headers.clone()
                };
                match self.client.request(upstream).await {
                    Ok(response) => return Ok((response, in_flight)),
                    Err(error) if error.is_connect() => {
                        if last {
                            tracing::warn!(app = %route.app, instance = %backend.instance, addr = %backend.addr, error = %Chain(&error), "failed to connect to the instance");
                            return Err(FrontendError::InstanceUnreachable);
                        }
                        tracing::debug!(app = %route.app, instance = %backend.instance, addr = %backend.addr, error = %Chain(&error), "failed to connect to the instance; trying the next one");
                        (index, backend) = next(route, index)?;
                        tried += 1;
                    }
                    Err(error) => {
                        tracing::warn!(app = %route.app, instance = %backend.instance, addr = %backend.addr, error = %Chain(&error), "the instance failed the request");
                        return Err(FrontendError::InstanceClosedConnection);
                    }
                }
            }
        };
        let (response, in_flight) = match tokio::time::timeout(
            self.config.request_timeout,
            attempts,
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(app = %route.app, timeout = ?self.config.request_timeout, "the instance did not answer in time");
                return Err(FrontendError::InstanceTimeout);
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, in_flight),
        ))
    }
}

fn next(route: &AppRoute, index: usize) -> Result<(usize, &Backend), FrontendError> {
    route.next_after(index).ok_or(FrontendError::Internal)
}

/// The host a request is for: the URI's authority (absolute-form requests and HTTP/2), else the
/// Host header. A header that is not UTF-8 is kept lossily: it will not resolve, but the error
/// page can still show it.
fn host_of<B>(request: &Request<B>) -> Option<Cow<'_, str>> {
    if let Some(authority) = request.uri().authority() {
        let host = authority.as_str();
        // Drop any `user:password@`.
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        return Some(Cow::Borrowed(host));
    }
    let value = request.headers().get(HOST)?;
    Some(String::from_utf8_lossy(value.as_bytes()))
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For`, keeping what the client sent (several
/// headers are joined into one list).
fn add_forwarded_for(headers: &mut HeaderMap, client_ip: IpAddr) {
    let ip = client_ip.to_canonical().to_string();
    let mut list = BytesMut::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if !value.is_empty() {
            list.put_slice(value.as_bytes());
            list.put_slice(b", ");
        }
    }
    list.put_slice(ip.as_bytes());
    match HeaderValue::from_maybe_shared(list.freeze()) {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        // Not reachable: the parts were valid header values; fall back to the address alone.
        Err(_) => {
            if let Ok(value) = HeaderValue::from_str(&ip) {
                headers.insert(X_FORWARDED_FOR, value);
            }
        }
    }
}

/// A client's request id is kept when it is 1 to 200 characters of `[A-Za-z0-9._-]`, so it can
/// be logged and echoed safely.
fn is_valid_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=200).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 128 random bits as 32 lowercase hex characters.
fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_maybe_shared(Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("00000000000000000000000000000000"))
}

/// Displays an error with its sources, `outer: inner: innermost`, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        for (input, kept) in [
            (&[("x-a", "1")][..], &["x-a"][..]),
            (
                &[
                    ("connection", "close, X-Secret"),
                    ("connection", "x-other"),
                    ("x-secret", "1"),
                    ("x-other", "1"),
                    ("x-kept", "1"),
                ],
                &["x-kept"],
            ),
            (
                &[
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("trailer", "x-t"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-authorization", "Basic eA=="),
                    ("content-length", "3"),
                ],
                &["content-length"],
            ),
        ] {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map);
            assert_eq!(names(&map), kept, "{input:?}");
        }
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().expect("ip");
        for (input, client, expected) in [
            (&[][..], ip, "10.0.0.9"),
            (&[][..], mapped, "10.0.0.9"),
            (&[("x-forwarded-for", "1.2.3.4")], ip, "1.2.3.4, 10.0.0.9"),
            (
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "5.6.7.8"),
                ],
                ip,
                "1.2.3.4, 5.6.7.8, 10.0.0.9",
            ),
        ] {
            let mut map = headers(input);
            add_forwarded_for(&mut map, client);
            let all: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
            assert_eq!(all, [expected], "{input:?}");
        }
    }

    #[test]
    fn request_ids_are_checked() {
        for (id, valid) in [
            ("abc-123", true),
            ("A.b_C-9", true),
            ("bad id", false),
            ("a/b", false),
            ("", false),
            (&"a".repeat(200), true),
            (&"a".repeat(201), false),
        ] {
            let value = HeaderValue::from_str(id).expect("valid value");
            assert_eq!(is_valid_request_id(&value), valid, "{id:?}");
        }
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(is_valid_request_id(&id));
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn host_comes_from_the_authority_then_the_header() {
        let request = |uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(HOST, host);
            }
            builder.body(()).expect("valid request")
        };
        for (uri, host, expected) in [
            ("/", Some("hello.localhost"), Some("hello.localhost")),
            (
                "/x",
                Some("hello.localhost:8080"),
                Some("hello.localhost:8080"),
            ),
            (
                "http://world.localhost/x",
                Some("hello.localhost"),
                Some("world.localhost"),
            ),
            (
                "http://u:p@world.localhost:81/",
                None,
                Some("world.localhost:81"),
            ),
            ("/", None, None),
        ] {
            assert_eq!(
                host_of(&request(uri, host)).as_deref(),
                expected,
                "{uri} {host:?}"
            );
        }
    }
}
