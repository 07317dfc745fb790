//! Request cookies, read the way every cookie of the front end (affinity, slot routing) reads
//! them: across all `Cookie` headers, `name=value` pairs separated by `;`, whitespace trimmed.

use http::HeaderMap;
use http::header::COOKIE;

/// Every `(name, value)` pair of the request's cookies, in order. Headers that are not text and
/// pairs without `=` are skipped.
pub(crate) fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    pairs_in(
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    )
}

/// The same, over `Cookie` header values already read as text.
pub(crate) fn pairs_in<'a>(
    values: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    values
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}
