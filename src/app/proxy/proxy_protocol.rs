//! The PROXY protocol header sent to a backend before any client byte, so
//! the backend learns the client's address (HAProxy's "The PROXY protocol",
//! versions 1 and 2, www.haproxy.org/download/2.6/doc/proxy-protocol.txt),
//! and the parser for the header a trusted balancer in front sends us
//! (`accept_proxy`): [`decode`], which never panics on any bytes.

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

/// The longest header we accept from a balancer in front: v1 is at most
/// 107 bytes (section 2.1); v2 is 16 bytes and its address block, whose
/// TLVs may make it longer ("the receiver must not start processing the
/// connection before it receives a complete and valid PROXY protocol
/// header", section 2.2). 1 KiB holds the TLVs balancers send (cloud
/// balancers' endpoint ids, ALPN, authority); a longer header is refused.
pub const MAX_ACCEPTED: usize = 1024;

/// v1's longest line, CRLF included (section 2.1: "a receiver may reject
/// an incomplete line which does not contain the CRLF sequence in the
/// first 107 characters").
const V1_MAX: usize = 107;

/// What the first bytes of a connection on an `accept_proxy` listener say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid beginning; more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes. `addrs` is (client, the address the
    /// client connected to), or `None` when the header says to use the
    /// connection's own endpoints (v1 `UNKNOWN`, v2 `LOCAL` or `UNSPEC`).
    Header {
        len: usize,
        addrs: Option<(SocketAddrV4, SocketAddrV4)>,
    },
    /// Not a PROXY header (or a malformed one): the connection is reset.
    Invalid,
    /// A well-formed header for what this IPv4 TCP proxy cannot represent
    /// (IPv6, UNIX sockets): the connection is reset.
    Unsupported,
}

/// Parses the PROXY header at the start of `buf` (all the bytes received
/// so far). Total on every input: never panics, never reads past `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    const V1: &[u8] = b"PROXY ";
    if buf.is_empty() {
        return Decoded::Incomplete;
    }
    if buf[0] == V2_SIGNATURE[0] {
        return decode_v2(buf);
    }
    let n = buf.len().min(V1.len());
    if buf[..n] != V1[..n] {
        // Section 2: the receiver "must not try to guess whether the
        // protocol header is present or not": anything else is refused.
        return Decoded::Invalid;
    }
    decode_v1(buf)
}

/// Section 2.1, the human-readable header:
/// "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") [SP src SP dst SP sport SP dport] CRLF.
fn decode_v1(buf: &[u8]) -> Decoded {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.contains(&b'\n') || buf.len() >= V1_MAX {
            return Decoded::Invalid;
        }
        return Decoded::Incomplete;
    };
    match window.get(cr + 1) {
        None if buf.len() < V1_MAX => return Decoded::Incomplete,
        Some(b'\n') => {}
        _ => return Decoded::Invalid,
    }
    let len = cr + 2;
    let Ok(line) = std::str::from_utf8(&buf[..cr]) else {
        return Decoded::Invalid;
    };
    let mut words = line.split(' ');
    let _proxy = words.next();
    match words.next() {
        // "the receiver must ignore anything presented before the CRLF is
        // found" after UNKNOWN, and use the connection's own addresses.
        Some("UNKNOWN") => Decoded::Header { len, addrs: None },
        Some("TCP6") => Decoded::Unsupported,
        Some("TCP4") => {
            let fields: Vec<&str> = words.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Decoded::Invalid;
            };
            match (src.parse(), dst.parse(), v1_port(sport), v1_port(dport)) {
                (Ok(src), Ok(dst), Some(sport), Some(dport)) => Decoded::Header {
                    len,
                    addrs: Some((SocketAddrV4::new(src, sport), SocketAddrV4::new(dst, dport))),
                },
                _ => Decoded::Invalid,
            }
        }
        _ => Decoded::Invalid,
    }
}

/// A v1 port: 1 to 5 decimal digits, no sign, no leading zero (section
/// 2.1: "decimal integer ... in the range 0..65535 inclusive").
fn v1_port(s: &str) -> Option<u16> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// Section 2.2, the binary header: the 12-byte signature, version and
/// command, family and transport, the address block's length, the block.
fn decode_v2(buf: &[u8]) -> Decoded {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Decoded::Invalid;
    }
    if buf.len() < 16 {
        return Decoded::Incomplete;
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + block;
    // "The highest four bits contains the version ... must always be 0x2";
    // commands: 0x0 LOCAL, 0x1 PROXY, others "must be rejected".
    if ver_cmd >> 4 != 2 || ver_cmd & 0xf > 1 || len > MAX_ACCEPTED {
        return Decoded::Invalid;
    }
    // Family (high nibble) 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX; transport
    // (low) 0 UNSPEC, 1 STREAM, 2 DGRAM. A TCP connection carries STREAM.
    let valid_fam = matches!(fam, 0x00 | 0x11 | 0x21 | 0x31);
    if !valid_fam && !matches!(fam, 0x12 | 0x22 | 0x32) {
        return Decoded::Invalid;
    }
    let min_block = match fam {
        0x11 => 12,
        0x21 => 36,
        0x31 => 216,
        _ => 0,
    };
    if block < min_block {
        return Decoded::Invalid;
    }
    if buf.len() < len {
        return Decoded::Incomplete;
    }
    // LOCAL: "the receiver must accept this connection as valid and must
    // use the real connection endpoints and discard the protocol block".
    if ver_cmd & 0xf == 0 {
        return Decoded::Header { len, addrs: None };
    }
    match fam {
        // UNSPEC with PROXY: "the receiver should ... use the real
        // connection endpoints".
        0x00 => Decoded::Header { len, addrs: None },
        0x11 => {
            let a = &buf[16..28];
            let ip = |o: usize| std::net::Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            // TLVs after the 12 address bytes are skipped (`len` covers them).
            Decoded::Header {
                len,
                addrs: Some((
                    SocketAddrV4::new(ip(0), port(8)),
                    SocketAddrV4::new(ip(4), port(10)),
                )),
            }
        }
        0x21 | 0x31 => Decoded::Unsupported,
        // DGRAM over a TCP connection.
        _ => Decoded::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn decodes_the_specs_examples() {
        let v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        assert_eq!(
            decode(v1),
            Decoded::Header {
                len: 47,
                addrs: Some((
                    "192.168.0.1:56324".parse().unwrap(),
                    "192.168.0.11:443".parse().unwrap()
                ))
            }
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Decoded::Header {
                len: 35,
                addrs: None
            }
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Decoded::Header {
                len: 15,
                addrs: None
            }
        );
        assert_eq!(decode(b"PROXY TCP6 ::1 ::1 1 2\r\n"), Decoded::Unsupported);
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\0\x0c",
            b"\r\n\r\nX",
        ] {
            assert_eq!(
                decode(bad),
                Decoded::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // 107 bytes and no CRLF: refused, not waited for.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(decode(&long), Decoded::Invalid);
        assert_eq!(decode(&long[..V1_MAX - 1]), Decoded::Incomplete);
        assert_eq!(decode(b"PRO"), Decoded::Incomplete);
        assert_eq!(decode(b""), Decoded::Incomplete);
    }

    #[test]
    fn decodes_v2_local_tlvs_and_refuses_the_rest() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&h),
            Decoded::Header {
                len: 16,
                addrs: None
            }
        );
        // PROXY over TCP4 with a 7-byte TLV after the addresses.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([
            0x21, 0x11, 0, 19, 10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0, 80,
        ]);
        h.extend([0x04, 0, 4, b'n', b'o', b'o', b'p']);
        assert_eq!(decode(&h[..30]), Decoded::Incomplete);
        assert_eq!(
            decode(&h),
            Decoded::Header {
                len: 35,
                addrs: Some((
                    "10.0.0.1:4660".parse().unwrap(),
                    "10.0.0.2:80".parse().unwrap()
                ))
            }
        );
        let with = |ver_cmd: u8, fam: u8, block: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend([ver_cmd, fam]);
            h.extend(block.to_be_bytes());
            h.resize(16 + usize::from(block), 0);
            decode(&h)
        };
        assert_eq!(with(0x21, 0x21, 36), Decoded::Unsupported);
        assert_eq!(with(0x21, 0x31, 216), Decoded::Unsupported);
        assert_eq!(with(0x21, 0x12, 12), Decoded::Invalid);
        assert_eq!(with(0x21, 0x11, 11), Decoded::Invalid);
        assert_eq!(with(0x22, 0x11, 12), Decoded::Invalid);
        assert_eq!(with(0x11, 0x11, 12), Decoded::Invalid);
        assert_eq!(with(0x21, 0x41, 12), Decoded::Invalid);
        assert_eq!(
            with(0x21, 0x11, (MAX_ACCEPTED - 15) as u16),
            Decoded::Invalid
        );
        assert_eq!(
            with(0x21, 0x00, 0),
            Decoded::Header {
                len: 16,
                addrs: None
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bytes: a verdict, never a panic, and a header never longer
        /// than the bytes or the bound.
        #[test]
        fn any_bytes_get_a_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Decoded::Header { len, .. } = decode(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_ACCEPTED);
            }
        }

        /// Bytes after a valid start (the signature or "PROXY "), where the
        /// parser's branches are.
        #[test]
        fn any_tail_after_a_signature_gets_a_verdict(
            v2 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend(tail);
            if let Decoded::Header { len, .. } = decode(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        /// What we send, we read back: every prefix is incomplete, the
        /// whole header gives the addresses, client bytes after it are not
        /// part of it.
        #[test]
        fn encode_then_decode(
            v2 in any::<bool>(),
            src in any::<[u8; 4]>(), sport in any::<u16>(),
            dst in any::<[u8; 4]>(), dport in any::<u16>(),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (src, dst) = (SocketAddrV4::new(src.into(), sport), SocketAddrV4::new(dst.into(), dport));
            let version = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
            let mut buf = [0u8; MAX_HEADER];
            let n = encode(version, src, dst, &mut buf);
            for k in 0..n {
                prop_assert_eq!(decode(&buf[..k]), Decoded::Incomplete, "prefix {}", k);
            }
            let mut bytes = buf[..n].to_vec();
            bytes.extend(after);
            prop_assert_eq!(decode(&bytes), Decoded::Header { len: n, addrs: Some((src, dst)) });
        }
    }
}
