//! Names of connections: the 4-tuple on the wire and the handle the application holds.

use std::net::SocketAddrV4;

/// A connection's addresses, seen from this host.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FourTuple {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

impl FourTuple {
    /// The 12 bytes hashed for ISNs, timestamp offsets and cookies.
    pub(crate) fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.local.ip().octets());
        b[4..6].copy_from_slice(&self.local.port().to_be_bytes());
        b[6..10].copy_from_slice(&self.remote.ip().octets());
        b[10..12].copy_from_slice(&self.remote.port().to_be_bytes());
        b
    }
}

/// The application's handle on a connection.
///
/// An index into the endpoint's connection slab plus the slot's generation, so a
/// handle kept after its connection ended is detected (`ConnError::InvalidId`)
/// instead of reaching whatever connection reuses the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}
