//! The front end's own responses: every error a request can meet before or instead of an
//! instance's answer, with its status, its `X-Stamp-Error` code, whose fault it is, and the small
//! HTML page a visitor sees.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// Names the error on every response the front end makes itself, so clients and tests can tell
/// a Stamp error from the same status sent by the app.
pub const X_STAMP_ERROR: HeaderName = HeaderName::from_static("x-stamp-error");

/// Whose fault an error is: decides how it is logged and, later, what is counted against an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong (no such host, malformed).
    Client,
    /// The app or its instances failed (none ready, refused, closed, too slow).
    Upstream,
    /// Stamp itself failed.
    Internal,
}

/// Every error the front end answers with itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrontendError {
    #[error("the request has no Host header, so it names no app")]
    MissingHost,
    #[error("the request's Host does not match the server name of its TLS connection")]
    MisdirectedRequest,
    #[error("no app is served at this host")]
    NoSuchApp,
    #[error("the app's access restrictions do not allow the client's address")]
    AccessDenied,
    #[error("the request body is larger than the front end accepts")]
    RequestTooLarge,
    #[error("the app has no ready instance")]
    NoReadyInstance,
    #[error("no instance of the app accepted a connection")]
    InstanceUnreachable,
    #[error("the instance closed the connection without a response")]
    InstanceClosedConnection,
    #[error("the instance did not start its response in time")]
    InstanceTimeout,
    #[error("the front end failed to forward the request")]
    Internal,
    #[error("the app is stopped: it used its daily CPU quota")]
    AppStopped,
}

impl FrontendError {
    /// Every error, in a fixed order: [`FrontendError::index`] is the position here.
    pub const ALL: [FrontendError; 11] = [
        FrontendError::MissingHost,
        FrontendError::MisdirectedRequest,
        FrontendError::NoSuchApp,
        FrontendError::AccessDenied,
        FrontendError::RequestTooLarge,
        FrontendError::NoReadyInstance,
        FrontendError::InstanceUnreachable,
        FrontendError::InstanceClosedConnection,
        FrontendError::InstanceTimeout,
        FrontendError::Internal,
        FrontendError::AppStopped,
    ];

    /// Position in [`FrontendError::ALL`], for per-code counters in a plain array.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn status(self) -> StatusCode {
        match self {
            FrontendError::MissingHost => StatusCode::BAD_REQUEST,
            FrontendError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            FrontendError::NoSuchApp => StatusCode::NOT_FOUND,
            FrontendError::AccessDenied | FrontendError::AppStopped => StatusCode::FORBIDDEN,
            FrontendError::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            FrontendError::NoReadyInstance => StatusCode::SERVICE_UNAVAILABLE,
            FrontendError::InstanceUnreachable | FrontendError::InstanceClosedConnection => {
                StatusCode::BAD_GATEWAY
            }
            FrontendError::InstanceTimeout => StatusCode::GATEWAY_TIMEOUT,
            FrontendError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The value of `X-Stamp-Error`.
    pub fn code(self) -> &'static str {
        match self {
            FrontendError::MissingHost => "missing-host",
            FrontendError::MisdirectedRequest => "misdirected-request",
            FrontendError::NoSuchApp => "no-such-app",
            FrontendError::AccessDenied => "access-denied",
            FrontendError::RequestTooLarge => "request-too-large",
            FrontendError::NoReadyInstance => "no-ready-instance",
            FrontendError::InstanceUnreachable => "instance-unreachable",
            FrontendError::InstanceClosedConnection => "instance-closed-connection",
            FrontendError::InstanceTimeout => "instance-timeout",
            FrontendError::Internal => "internal-error",
            FrontendError::AppStopped => "app-stopped",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            FrontendError::MissingHost
            | FrontendError::MisdirectedRequest
            | FrontendError::NoSuchApp
            | FrontendError::AccessDenied
            | FrontendError::RequestTooLarge => Fault::Client,
            FrontendError::NoReadyInstance
            | FrontendError::InstanceUnreachable
            | FrontendError::InstanceClosedConnection
            | FrontendError::InstanceTimeout
            | FrontendError::AppStopped => Fault::Upstream,
            FrontendError::Internal => Fault::Internal,
        }
    }

    /// Seconds a client should wait before trying again, where waiting helps.
    fn retry_after(self) -> Option<&'static str> {
        match self {
            FrontendError::NoReadyInstance => Some("5"),
            _ => None,
        }
    }
}

/// What an error page may mention.
pub(crate) struct PageContext<'a> {
    /// As the client sent it.
    pub host: &'a str,
    /// The domain apps are served under.
    pub domain: &'a str,
    /// The app, once the host resolved to one.
    pub app: Option<&'a str>,
    /// The app's request timeout, for `instance-timeout`.
    pub request_timeout: Duration,
    /// The front end's body limit, for `request-too-large`.
    pub max_request_body: u64,
}

/// The error's response: a self-contained HTML page (the status and code in its title) with
/// `X-Stamp-Error`. The caller adds `X-Request-Id`.
pub(crate) fn error_response(error: FrontendError, cx: &PageContext<'_>) -> Response<ResponseBody> {
    let status = error.status();
    let host = escape(cx.host);
    let app = escape(cx.app.unwrap_or("this app"));
    let domain = escape(cx.domain);
    let (heading, advice) = match error {
        FrontendError::MissingHost => (
            "No host in the request".to_string(),
            format!(
                "The request has no <code>Host</code> header, so Stamp cannot tell which app \
                 it is for. Send the app's hostname, <code>&lt;app&gt;.{domain}</code>."
            ),
        ),
        FrontendError::MisdirectedRequest => (
            format!("{host} is not the server this connection is for"),
            "The request's <code>Host</code> names a different server than the one the TLS \
             connection was opened for. Open a new connection to that host."
                .to_string(),
        ),
        FrontendError::AccessDenied => (
            format!("App {app} does not accept requests from your address"),
            format!(
                "The access restrictions of {app} do not allow requests from your network. \
                 If this is your app, check its access rules."
            ),
        ),
        FrontendError::RequestTooLarge => (
            "The request body is too large".to_string(),
            format!(
                "Stamp accepts request bodies of at most {}. Send less data per request, \
                 for example in several parts.",
                human_bytes(cx.max_request_body)
            ),
        ),
        FrontendError::NoSuchApp => (
            format!("No app at {host}"),
            format!(
                "Stamp serves each app at <code>&lt;app&gt;.{domain}</code>, and no app here \
                 answers to <code>{host}</code>. Check the name, or create the app with \
                 <code>stamp app create &lt;app&gt;</code> and deploy to it."
            ),
        ),
        FrontendError::NoReadyInstance => (
            format!("App {app} has no ready instance"),
            format!(
                "If it was never deployed, deploy it. Otherwise its instances are starting or \
                 crashing: see <code>stamp ps {app}</code> and <code>stamp logs {app}</code>. \
                 This page retries in a few seconds."
            ),
        ),
        FrontendError::InstanceUnreachable => (
            format!("App {app} did not accept the connection"),
            format!(
                "No instance of {app} accepted a connection on its port; it may be restarting. \
                 See <code>stamp ps {app}</code> and <code>stamp logs {app}</code>."
            ),
        ),
        FrontendError::InstanceClosedConnection => (
            format!("App {app} closed the connection"),
            format!(
                "An instance of {app} closed the connection without sending a response; it may \
                 have crashed. See <code>stamp logs {app}</code>."
            ),
        ),
        FrontendError::InstanceTimeout => (
            format!("App {app} did not answer in time"),
            format!(
                "An instance of {app} did not start its response within {}. See \
                 <code>stamp logs {app}</code> for what it was doing.",
                human(cx.request_timeout)
            ),
        ),
        FrontendError::AppStopped => (
            format!("This web app is stopped: {app} used its CPU quota for today"),
            format!(
                "Apps on the Free and Shared tiers may use a fixed number of CPU minutes a \
                 day. {app} used them all, so it is stopped until the quota resets at 00:00 \
                 UTC. If this is your app, move it to a Basic or higher plan to run without a \
                 daily quota."
            ),
        ),
        FrontendError::Internal => (
            "Stamp could not forward the request".to_string(),
            "The front end failed to forward this request; its log has the details.".to_string(),
        ),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{code} {name}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;\
         padding:0 1em;color:#222}}code{{background:#f0f0f0;padding:0 .2em}}\
         small{{color:#777}}</style></head>\n<body><h1>{heading}</h1>\n<p>{advice}</p>\n\
         <p><small>{code} &middot; {name} &middot; stamp</small></p></body></html>\n",
        code = status.as_u16(),
        name = error.code(),
    );
    let mut response = Response::new(ResponseBody::page(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_STAMP_ERROR, HeaderValue::from_static(error.code()));
    if let Some(seconds) = error.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

/// `230 s`, or `300 ms` below a second.
fn human(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// `100 MiB`, `512 KiB`, `10 bytes`.
fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The host comes from the client: never put it in a page unescaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_the_host_and_carry_the_code() {
        let cx = PageContext {
            host: "<script>.localhost",
            domain: "localhost",
            app: None,
            request_timeout: Duration::from_secs(230),
            max_request_body: 100 * 1024 * 1024,
        };
        let response = error_response(FrontendError::NoSuchApp, &cx);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[X_STAMP_ERROR], "no-such-app");
        let html = response.into_body().page_text();
        assert!(html.contains("&lt;script&gt;.localhost"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("<title>404 no-such-app</title>"), "{html}");
        assert!(html.contains("stamp app create"), "{html}");
    }

    #[test]
    fn codes_are_distinct_and_indexed() {
        let all = FrontendError::ALL;
        let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for (position, error) in all.iter().enumerate() {
            assert_eq!(error.index(), position, "{error:?}");
        }
        assert_eq!(human_bytes(100 * 1024 * 1024), "100 MiB");
        assert_eq!(human_bytes(1536), "1536 bytes");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(FrontendError::NoSuchApp.fault(), Fault::Client);
        assert_eq!(FrontendError::InstanceTimeout.fault(), Fault::Upstream);
    }
}
