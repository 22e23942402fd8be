//! A peer's address, kept small: every byte of a connection counts once per connection.

use std::net::SocketAddr;

/// A peer's address in 19 bytes instead of `SocketAddr`'s 32: every byte of a
/// connection counts once per connection. IPv6 flow info and scope id are not kept:
/// the address serves logs, `Handler::on_request` and `Ctx::peer_addr`, and the
/// handler is told so.
#[derive(Clone, Copy)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        let (ip, v6) = match addr.ip() {
            std::net::IpAddr::V4(ip) => (ip.to_ipv6_mapped().octets(), false),
            std::net::IpAddr::V6(ip) => (ip.octets(), true),
        };
        PeerAddr {
            ip,
            port: addr.port().to_ne_bytes(),
            v6,
        }
    }
}

impl PeerAddr {
    pub fn get(self) -> SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.ip);
        let port = u16::from_ne_bytes(self.port);
        match ip.to_ipv4_mapped() {
            Some(v4) if !self.v6 => SocketAddr::new(v4.into(), port),
            _ => SocketAddr::new(ip.into(), port),
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl std::fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}
