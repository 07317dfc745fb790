//! Who the client is, and what the instance is told about it. The client is the socket peer,
//! unless the peer is a trusted proxy: then it is the rightmost address in `X-Forwarded-For`
//! that is not itself a trusted proxy. A client that is not a trusted proxy cannot choose what
//! the instance sees: its `X-Forwarded-For` is replaced by its own address.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address (IPv4-mapped IPv6 shown as IPv4). `peer` is the socket peer, already
/// canonical.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Headers in order, entries right to left: the last header's last entry is the nearest hop.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            // Anything but an address: whoever wrote it is not someone we can trust further.
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678` (Azure's form), `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Sets `X-Forwarded-For` for the instance: the peer alone when it is not trusted (what the
/// client sent is dropped), else what the trusted proxy sent with the peer appended.
pub(crate) fn set_forwarded_for(headers: &mut HeaderMap, peer: IpAddr, peer_trusted: bool) {
    let peer_value = ip_value(peer);
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, peer_value);
        return;
    }
    let mut list = BytesMut::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if !value.is_empty() {
            list.put_slice(value.as_bytes());
            list.put_slice(b", ");
        }
    }
    list.put_slice(peer_value.as_bytes());
    let value = HeaderValue::from_maybe_shared(list.freeze()).unwrap_or(peer_value);
    headers.insert(X_FORWARDED_FOR, value);
}

pub(crate) fn peer_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && is_trusted(peer, trusted)
}

thread_local! {
    /// The last address rendered on this thread: clients keep their connections, and a busy
    /// front end sees the same few addresses again and again (a load balancer, a benchmark).
    static LAST_IP: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// An address as a header value, without formatting it again when this thread just did.
pub(crate) fn ip_value(ip: IpAddr) -> HeaderValue {
    LAST_IP.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last
            && *cached == ip
        {
            return value.clone();
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| unreachable!("an address is a valid header value"));
        *last = Some((ip, value.clone()));
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append(
                X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("valid"),
            );
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("valid net")).collect()
    }

    #[test]
    fn client_is_the_rightmost_untrusted_address() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        for (peer, xff, trusted, expected) in [
            // Untrusted peers are the client, whatever they claim.
            ("203.0.113.7", &["1.2.3.4"][..], &trusted[..], "203.0.113.7"),
            ("10.0.0.1", &["1.2.3.4"], &[], "10.0.0.1"),
            // A trusted proxy speaks for the client.
            ("10.0.0.1", &["1.2.3.4"], &trusted, "1.2.3.4"),
            ("10.0.0.1", &["9.9.9.9, 1.2.3.4"], &trusted, "1.2.3.4"),
            (
                "10.0.0.1",
                &["9.9.9.9, 1.2.3.4, 10.0.0.2"],
                &trusted,
                "1.2.3.4",
            ),
            (
                "10.0.0.1",
                &["9.9.9.9", "1.2.3.4, 10.0.0.2"],
                &trusted,
                "1.2.3.4",
            ),
            ("10.0.0.1", &["1.2.3.4:5678"], &trusted, "1.2.3.4"),
            ("10.0.0.1", &["[2001:db8::1]:80"], &trusted, "2001:db8::1"),
            ("10.0.0.1", &["::ffff:1.2.3.4"], &trusted, "1.2.3.4"),
            ("fd00::1", &["2001:db8::2"], &trusted, "2001:db8::2"),
            // Only trusted hops: the leftmost is as far as we can see.
            ("10.0.0.1", &["10.0.0.3, 10.0.0.2"], &trusted, "10.0.0.3"),
            // No header: the proxy itself.
            ("10.0.0.1", &[], &trusted, "10.0.0.1"),
            // Garbage stops the walk at the last trusted hop.
            (
                "10.0.0.1",
                &["1.2.3.4, junk, 10.0.0.2"],
                &trusted,
                "10.0.0.2",
            ),
            ("10.0.0.1", &["1.2.3.4, junk"], &trusted, "10.0.0.1"),
        ] {
            let peer: IpAddr = peer.parse().expect("ip");
            let got = client_ip(peer, &headers(xff), trusted);
            assert_eq!(got.to_string(), expected, "{peer} {xff:?}");
        }
    }

    #[test]
    fn forwarded_for_is_replaced_unless_the_peer_is_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        for (input, trusted, expected) in [
            (&[][..], false, "10.0.0.9"),
            (&["1.2.3.4"], false, "10.0.0.9"),
            (&[][..], true, "10.0.0.9"),
            (&["1.2.3.4"], true, "1.2.3.4, 10.0.0.9"),
            (&["1.2.3.4", "5.6.7.8"], true, "1.2.3.4, 5.6.7.8, 10.0.0.9"),
        ] {
            let mut map = headers(input);
            set_forwarded_for(&mut map, peer, trusted);
            let all: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
            assert_eq!(all, [expected], "{input:?} trusted: {trusted}");
        }
        assert!(peer_trusted(peer, &nets(&["10.0.0.0/8"])));
        assert!(!peer_trusted(peer, &[]));
        assert_eq!(ip_value(peer), "10.0.0.9");
        assert_eq!(ip_value("::1".parse().expect("ip")), "::1");
        assert_eq!(ip_value(peer), "10.0.0.9");
    }
}
