//! Azure App Service's "testing in production": which slot serves a request to a production host
//! whose app has slots with a routing rule ([`AppRoute::ramp`]).
//!
//! In order: the query parameter `x-ms-routing-name=<slot>` (or `self` for production) opts a
//! client in or out and pins it with a cookie of the same name; else that cookie, sent back,
//! keeps the client where it was; else a fresh client (or one whose slot lost its rule) is sent
//! to a slot with that slot's percentage, and pinned. A slot whose rule is 0 % gets only the
//! clients who opt in. Values name a slot of `ramp` or `self`; anything else is ignored.
//!
//! Only requests to a route with a non-empty ramp come here: the request path checks
//! `ramp.is_empty()` first, so apps without rules pay nothing.

use http::{HeaderMap, HeaderValue, Uri};
use stamp_model::slots::{
    ROUTING_COOKIE_MAX_AGE_SECS, ROUTING_NAME, ROUTING_SELF, pick_by_percent,
};
use stamp_routes::{AppRoute, Ramp, RouteTable};

/// Where a request to production goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice<'a> {
    Production,
    Slot(&'a Ramp),
}

impl Choice<'_> {
    /// The value of the routing cookie that pins a client here.
    fn name(&self) -> &str {
        match self {
            Choice::Production => ROUTING_SELF,
            Choice::Slot(ramp) => ramp.slot.as_str(),
        }
    }
}

/// What [`decide`] chose, and whether the response must pin the client to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision<'a> {
    choice: Choice<'a>,
    set_cookie: bool,
}

/// The route that serves a request whose host resolved to `production` (a route with a
/// non-empty ramp), and the `Set-Cookie` value every response to it must carry, if any.
/// `secure`: the request came over TLS, so the cookie gets `Secure`. `dice` returns a uniform
/// number in `0..100` and is called only for a client that is not pinned yet.
pub(crate) fn choose<'a>(
    table: &'a RouteTable,
    production: &'a AppRoute,
    uri: &Uri,
    headers: &HeaderMap,
    secure: bool,
    dice: impl FnOnce() -> u32,
) -> (&'a AppRoute, Option<HeaderValue>) {
    let decision = decide(&production.ramp, uri.query(), headers, dice);
    let route = match decision.choice {
        Choice::Production => production,
        // The table built the ramp with its own indices; production is a safe answer anyway.
        Choice::Slot(ramp) => table.routes().get(ramp.route).unwrap_or(production),
    };
    let cookie = decision
        .set_cookie
        .then(|| set_cookie(decision.choice.name(), secure));
    (route, cookie)
}

/// The query, else the cookie, else the dice (see the module documentation).
fn decide<'a>(
    ramp: &'a [Ramp],
    query: Option<&str>,
    headers: &HeaderMap,
    dice: impl FnOnce() -> u32,
) -> Decision<'a> {
    if let Some(choice) = query
        .into_iter()
        .flat_map(query_values)
        .find_map(|value| resolve(ramp, value))
    {
        return Decision {
            choice,
            set_cookie: true,
        };
    }
    if let Some(choice) =
        cookie_values(headers, ROUTING_NAME).find_map(|value| resolve(ramp, value))
    {
        return Decision {
            choice,
            set_cookie: false,
        };
    }
    let choice = match pick_by_percent(ramp.iter().map(|r| (r, r.percent)), dice()) {
        Some(ramp) => Choice::Slot(ramp),
        None => Choice::Production,
    };
    Decision {
        choice,
        set_cookie: true,
    }
}

/// `self` is production; a slot of `ramp` (whatever its percentage) is that slot; anything else
/// names nothing. ASCII case is ignored, as in slot host names.
fn resolve<'a>(ramp: &'a [Ramp], value: &str) -> Option<Choice<'a>> {
    if value.eq_ignore_ascii_case(ROUTING_SELF) {
        return Some(Choice::Production);
    }
    ramp.iter()
        .find(|r| r.slot.as_str().eq_ignore_ascii_case(value))
        .map(Choice::Slot)
}

/// The values of the routing parameter in a query string, in order. Slot names need no
/// percent-decoding, so an encoded value simply names nothing.
fn query_values(query: &str) -> impl Iterator<Item = &str> {
    query.split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.eq_ignore_ascii_case(ROUTING_NAME).then_some(value)
    })
}

/// The values of every cookie called `name` in the request's `Cookie` headers, in order
/// (RFC 6265 §5.4: `a=1; b=2`, possibly over several headers; a quoted value is unquoted).
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    crate::cookie::pairs(headers)
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| {
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// `x-ms-routing-name=<name>; Max-Age=3600; Path=/; HttpOnly`, plus `Secure` over TLS.
fn set_cookie(name: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{ROUTING_NAME}={name}; Max-Age={ROUTING_COOKIE_MAX_AGE_SECS}; Path=/; HttpOnly{secure}"
    );
    HeaderValue::try_from(text)
        .unwrap_or_else(|_| unreachable!("slot names and fixed attributes are a valid header"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stamp_model::SlotName;

    fn ramp() -> Vec<Ramp> {
        [("staging", 30, 1), ("qa", 0, 2)]
            .into_iter()
            .map(|(slot, percent, route)| Ramp {
                slot: SlotName::parse(slot).expect("valid slot"),
                percent,
                route,
            })
            .collect()
    }

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                http::header::COOKIE,
                HeaderValue::from_str(value).expect("valid"),
            );
        }
        headers
    }

    /// Decides with `dice` and returns the chosen name and whether a cookie is set; panics if
    /// the dice is rolled when `dice` is `None`.
    fn check(query: Option<&str>, cookie: &[&str], dice: Option<u32>, expected: (&str, bool)) {
        let ramp = ramp();
        let decision = decide(&ramp, query, &cookies(cookie), || {
            dice.unwrap_or_else(|| panic!("{query:?} {cookie:?}: rolled the dice"))
        });
        assert_eq!(
            (decision.choice.name(), decision.set_cookie),
            expected,
            "{query:?} {cookie:?} {dice:?}"
        );
    }

    #[test]
    fn the_query_opts_in_and_out() {
        check(
            Some("x-ms-routing-name=staging"),
            &[],
            None,
            ("staging", true),
        );
        check(Some("a=1&x-ms-routing-name=qa&b"), &[], None, ("qa", true));
        check(Some("x-ms-routing-name=self"), &[], None, ("self", true));
        check(
            Some("X-MS-Routing-Name=STAGING"),
            &[],
            None,
            ("staging", true),
        );
        // Over a cookie that says otherwise.
        check(
            Some("x-ms-routing-name=self"),
            &["x-ms-routing-name=staging"],
            None,
            ("self", true),
        );
    }

    #[test]
    fn unknown_query_values_fall_through_to_the_cookie_then_the_dice() {
        for query in [
            "x-ms-routing-name=prod",
            "x-ms-routing-name=",
            "x-ms-routing-name",
            "x-ms-routing-name=production",
            "other=staging",
        ] {
            check(Some(query), &["x-ms-routing-name=qa"], None, ("qa", false));
            check(Some(query), &[], Some(99), ("self", true));
        }
    }

    #[test]
    fn the_cookie_pins_without_setting_it_again() {
        check(
            None,
            &["x-ms-routing-name=staging"],
            None,
            ("staging", false),
        );
        check(None, &["x-ms-routing-name=self"], None, ("self", false));
        check(
            None,
            &["a=b", "session=1; x-ms-routing-name=\"qa\"; c=d"],
            None,
            ("qa", false),
        );
        // A slot that lost its rule, or a look-alike cookie, pins nothing.
        check(
            None,
            &["x-ms-routing-name=gone"],
            Some(0),
            ("staging", true),
        );
        check(None, &["xx-ms-routing-name=qa"], Some(50), ("self", true));
    }

    #[test]
    fn fresh_clients_go_by_percentage() {
        // staging has 30 %, qa 0 %: dice 0..30 is staging, the rest production.
        check(None, &[], Some(0), ("staging", true));
        check(None, &[], Some(29), ("staging", true));
        check(None, &[], Some(30), ("self", true));
        check(None, &[], Some(99), ("self", true));
    }

    #[test]
    fn cookies_are_secure_over_tls() {
        assert_eq!(
            set_cookie("staging", false),
            "x-ms-routing-name=staging; Max-Age=3600; Path=/; HttpOnly"
        );
        assert_eq!(
            set_cookie("self", true),
            "x-ms-routing-name=self; Max-Age=3600; Path=/; HttpOnly; Secure"
        );
    }
}
