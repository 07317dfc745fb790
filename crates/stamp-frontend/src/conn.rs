//! What the request path knows about the connection a request came on: set once per
//! connection by the accept loop (plain or TLS), read by every request on it.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The socket peer: the client, or a proxy in front of Stamp.
    pub peer: SocketAddr,
    /// Present when the connection is TLS.
    pub tls: Option<TlsInfo>,
}

#[derive(Debug, Clone)]
pub(crate) struct TlsInfo {
    /// The server name the client asked for in the handshake (lowercase), if any.
    pub sni: Option<String>,
    /// The negotiated protocol version, e.g. `TLSv1_3`.
    pub version: &'static str,
}

impl ConnInfo {
    pub fn plain(peer: SocketAddr) -> ConnInfo {
        ConnInfo { peer, tls: None }
    }

    /// The peer's address, IPv4-mapped IPv6 shown as IPv4.
    pub fn peer_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    /// `https` on a TLS connection, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
