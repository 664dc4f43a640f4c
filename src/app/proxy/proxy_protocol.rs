//! The PROXY protocol header sent to a backend before any client byte, so
//! the backend learns the client's address (HAProxy's "The PROXY protocol",
//! versions 1 and 2, www.haproxy.org/download/2.6/doc/proxy-protocol.txt).

use std::net::SocketAddrV4;

/// Which header a listener sends upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

impl ProxyProtocol {
    pub fn from_name(name: &str) -> Option<ProxyProtocol> {
        match name {
            "off" => Some(ProxyProtocol::Off),
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            _ => None,
        }
    }
}

/// The longest header we write: v1 for TCP4 is at most 56 bytes ("a
/// 108-byte buffer is always enough to store all the line", section 2.1);
/// v2 for TCP4 is 16 + 12.
pub const MAX_HEADER: usize = 108;

/// The v2 signature (section 2.2): "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Writes the header for a connection from `client` to `dst` (the address
/// the client connected to) into `out`; returns its length (0 for `Off`).
pub fn encode(
    version: ProxyProtocol,
    client: SocketAddrV4,
    dst: SocketAddrV4,
    out: &mut [u8; MAX_HEADER],
) -> usize {
    match version {
        ProxyProtocol::Off => 0,
        ProxyProtocol::V1 => {
            // Section 2.1: "PROXY" SP "TCP4" SP src SP dst SP sport SP dport CRLF.
            use std::io::Write;
            let mut w: &mut [u8] = &mut out[..];
            let before = w.len();
            let _ = write!(
                w,
                "PROXY TCP4 {} {} {} {}\r\n",
                client.ip(),
                dst.ip(),
                client.port(),
                dst.port()
            );
            before - w.len()
        }
        ProxyProtocol::V2 => {
            out[..12].copy_from_slice(&V2_SIGNATURE);
            // Section 2.2: version 2 in the high nibble, command PROXY (1).
            out[12] = 0x21;
            // AF_INET (1) << 4 | STREAM (1).
            out[13] = 0x11;
            // Address block length: 12 for TCP over IPv4 (no TLVs).
            out[14..16].copy_from_slice(&12u16.to_be_bytes());
            out[16..20].copy_from_slice(&client.ip().octets());
            out[20..24].copy_from_slice(&dst.ip().octets());
            out[24..26].copy_from_slice(&client.port().to_be_bytes());
            out[26..28].copy_from_slice(&dst.port().to_be_bytes());
            28
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_the_specs_line() {
        let mut buf = [0u8; MAX_HEADER];
        let n = encode(
            ProxyProtocol::V1,
            "198.18.0.9:51234".parse().unwrap(),
            "198.18.0.1:80".parse().unwrap(),
            &mut buf,
        );
        assert_eq!(&buf[..n], b"PROXY TCP4 198.18.0.9 198.18.0.1 51234 80\r\n");
        let n = encode(
            ProxyProtocol::V1,
            "255.255.255.254:65535".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            &mut buf,
        );
        assert!(n <= 56, "{n}");
    }

    #[test]
    fn v2_is_signature_command_family_and_addresses() {
        let mut buf = [0u8; MAX_HEADER];
        let n = encode(
            ProxyProtocol::V2,
            "198.18.0.9:51234".parse().unwrap(),
            "198.18.0.1:80".parse().unwrap(),
            &mut buf,
        );
        assert_eq!(n, 28);
        let want: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x0c, 198, 18, 0, 9, 198, 18, 0, 1, 0xc8, 0x22, 0x00, 0x50,
        ];
        assert_eq!(buf[..n], want);
        assert_eq!(
            encode(
                ProxyProtocol::Off,
                "1.2.3.4:5".parse().unwrap(),
                "1.2.3.4:5".parse().unwrap(),
                &mut buf
            ),
            0
        );
    }
}
