//! ARR affinity (Azure's sticky sessions): a cookie that pins a client to one instance of an
//! app. Its value is a token that names an instance *of that app* and that only this front end
//! (or one sharing its key) can make: the first 128 bits of HMAC-SHA256(key, app ‖ 0 ‖ instance
//! id), in hex. A token from another app, or a made-up one, matches no backend and is ignored.
//!
//! Tokens and the two `Set-Cookie` values are computed once per instance when a routing
//! snapshot is built, so the request path only compares strings.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use stamp_model::{AppName, InstanceId};

/// Azure's cookie names: the first for old browsers, the second with `SameSite=None; Secure`.
pub(crate) const COOKIE_NAME: &str = "ARRAffinity";
pub(crate) const COOKIE_NAME_SAME_SITE: &str = "ARRAffinitySameSite";
/// Hex characters in a token.
const TOKEN_LEN: usize = 32;

/// The secret that signs tokens.
#[derive(Clone)]
pub(crate) struct AffinityKey([u8; 32]);

impl AffinityKey {
    pub(crate) fn new(key: Option<[u8; 32]>) -> AffinityKey {
        AffinityKey(key.unwrap_or_else(rand::random))
    }

    pub(crate) fn cookie(&self, app: &AppName, instance: &InstanceId) -> AffinityCookie {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(app.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(instance.0.as_bytes());
        let digest = mac.finalize().into_bytes();
        let token = hex::encode(&digest[..TOKEN_LEN / 2]);
        let header = |text: String| {
            HeaderValue::try_from(text)
                .unwrap_or_else(|_| unreachable!("hex and fixed attributes are a valid header"))
        };
        AffinityCookie {
            set_cookie: [
                header(format!("{COOKIE_NAME}={token}; Path=/; HttpOnly")),
                header(format!(
                    "{COOKIE_NAME_SAME_SITE}={token}; Path=/; HttpOnly; SameSite=None; Secure"
                )),
            ],
            token,
        }
    }
}

impl std::fmt::Debug for AffinityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AffinityKey(..)")
    }
}

/// One instance's token and the `Set-Cookie` values that carry it.
#[derive(Debug)]
pub(crate) struct AffinityCookie {
    pub(crate) token: String,
    pub(crate) set_cookie: [HeaderValue; 2],
}

/// The affinity token the request carries, if any: the value of `ARRAffinity`, else of
/// `ARRAffinitySameSite`, when it has the shape of a token.
pub(crate) fn token_of(headers: &HeaderMap) -> Option<&str> {
    token_in(crate::cookie::pairs(headers))
}

/// The same, over cookie pairs already split.
pub(crate) fn token_in<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Option<&'a str> {
    let mut same_site = None;
    for (name, token) in pairs {
        if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        match name {
            COOKIE_NAME => return Some(token),
            COOKIE_NAME_SAME_SITE => same_site = same_site.or(Some(token)),
            _ => {}
        }
    }
    same_site
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name).expect("valid app name")
    }

    fn id(name: &str) -> InstanceId {
        InstanceId(name.to_string())
    }

    #[test]
    fn tokens_name_an_instance_of_one_app_under_one_key() {
        let key = AffinityKey::new(Some([7; 32]));
        let a = key.cookie(&app("hello"), &id("i-1"));
        assert_eq!(a.token.len(), TOKEN_LEN);
        assert_eq!(a.token, key.cookie(&app("hello"), &id("i-1")).token);
        assert_ne!(a.token, key.cookie(&app("hello"), &id("i-2")).token);
        assert_ne!(a.token, key.cookie(&app("world"), &id("i-1")).token);
        // The separator keeps `ab`+`c` apart from `a`+`bc`.
        assert_ne!(
            key.cookie(&app("ab"), &id("c")).token,
            key.cookie(&app("a"), &id("bc")).token
        );
        assert_ne!(
            a.token,
            AffinityKey::new(Some([8; 32]))
                .cookie(&app("hello"), &id("i-1"))
                .token
        );
        assert_ne!(
            AffinityKey::new(None)
                .cookie(&app("hello"), &id("i-1"))
                .token,
            AffinityKey::new(None)
                .cookie(&app("hello"), &id("i-1"))
                .token,
            "a random key per front end"
        );
        assert_eq!(
            a.set_cookie[0],
            format!("ARRAffinity={}; Path=/; HttpOnly", a.token)
        );
        assert_eq!(
            a.set_cookie[1],
            format!(
                "ARRAffinitySameSite={}; Path=/; HttpOnly; SameSite=None; Secure",
                a.token
            )
        );
    }

    #[test]
    fn token_is_read_from_either_cookie() {
        let t1 = "0123456789abcdef0123456789abcdef";
        let t2 = "fedcba9876543210fedcba9876543210";
        let check = |cookies: &[&str], expected: Option<&str>| {
            let mut headers = HeaderMap::new();
            for cookie in cookies {
                headers.append(
                    http::header::COOKIE,
                    HeaderValue::from_str(cookie).expect("valid"),
                );
            }
            assert_eq!(token_of(&headers), expected, "{cookies:?}");
        };
        check(&[], None);
        check(&[&format!("ARRAffinity={t1}")], Some(t1));
        check(&[&format!("a=b; ARRAffinity={t1}; c=d")], Some(t1));
        check(&[&format!("ARRAffinitySameSite={t2}")], Some(t2));
        check(
            &[
                &format!("ARRAffinitySameSite={t2}"),
                &format!("ARRAffinity={t1}"),
            ],
            Some(t1),
        );
        check(&["ARRAffinity=short"], None);
        check(&["ARRAffinity=0123456789abcdef0123456789abcdeg"], None);
        check(&[&format!("arraffinity={t1}")], None);
        check(&[&format!("XARRAffinity={t1}")], None);
    }
}
