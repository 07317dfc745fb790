//! WebSocket pass-through: an HTTP/1.1 `Upgrade: websocket` request goes to the instance with
//! its `Connection: upgrade` and `Upgrade` headers (hop-by-hop, so stripped like the others, then
//! put back); when the instance answers `101 Switching Protocols`, the client's and the
//! instance's connections are spliced until either side closes. Any other answer is an ordinary
//! response and the client's connection stays HTTP. Other upgrade protocols (notably `h2c`,
//! a request-smuggling vector through proxies) are not passed on.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::Tracker;

/// The request's `Upgrade` value when it asks for a WebSocket: HTTP/1.1, GET, `Connection`
/// listing `upgrade` and `Upgrade` listing `websocket` (case-insensitive).
pub(crate) fn websocket_upgrade(
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || method != Method::GET {
        return None;
    }
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, "websocket") {
        return None;
    }
    headers.get(UPGRADE).cloned()
}

/// Whether any `name` header lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Puts back the two hop-by-hop headers an upgrade needs.
pub(crate) fn restore_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

/// Splices the client's and the instance's upgraded connections in a task of its own, until
/// either side closes. The tracker keeps the instance in flight (so it is not stopped under an
/// open WebSocket before its drain grace period ends) and records the bytes both ways.
pub(crate) fn splice(client: OnUpgrade, instance: OnUpgrade, mut tracker: Tracker) {
    tokio::spawn(async move {
        let (client, instance) = match tokio::try_join!(client, instance) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "failed to switch protocols; closing the upgraded connection");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut instance = TokioIo::new(instance);
        match tokio::io::copy_bidirectional(&mut client, &mut instance).await {
            Ok((to_instance, to_client)) => tracker.add_bytes(to_instance, to_client),
            Err(error) => tracing::debug!(%error, "an upgraded connection ended with an error"),
        }
        drop(tracker);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http11_get_websocket_upgrades_pass() {
        let check = |version, method: Method, pairs: &[(&str, &str)], expected: bool| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            assert_eq!(
                websocket_upgrade(version, &method, &headers).is_some(),
                expected,
                "{version:?} {method} {pairs:?}"
            );
        };
        let ws = [("connection", "Upgrade"), ("upgrade", "websocket")];
        check(Version::HTTP_11, Method::GET, &ws, true);
        check(
            Version::HTTP_11,
            Method::GET,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
            true,
        );
        check(Version::HTTP_10, Method::GET, &ws, false);
        check(Version::HTTP_2, Method::GET, &ws, false);
        check(Version::HTTP_11, Method::POST, &ws, false);
        check(
            Version::HTTP_11,
            Method::GET,
            &[("upgrade", "websocket")],
            false,
        );
        check(
            Version::HTTP_11,
            Method::GET,
            &[("connection", "upgrade"), ("upgrade", "h2c")],
            false,
        );
        check(
            Version::HTTP_11,
            Method::GET,
            &[("connection", "close"), ("upgrade", "websocket")],
            false,
        );
    }
}
