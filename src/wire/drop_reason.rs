//! Why a received frame was dropped before it reached the TCP engine.

/// Why a frame was dropped; [`DropReason::label`] is the Prometheus label value
/// of `turnstile_rx_dropped_total{reason}`.
///
/// Labels: the variants are fine-grained for logs and tests (`Debug`), the
/// labels use the coarse vocabulary of the metrics contract in
/// docs/ARCHITECTURE.md. Both checksum kinds share `bad_checksum` (an operator asks
/// "is something corrupting packets", not which layer noticed), and a TCP
/// header or option list that cannot be walked is `malformed`. Metrics code
/// that keeps one counter per label should iterate [`DropReason::LABELS`]; code
/// that keeps one counter per variant can index by [`DropReason::index`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DropReason {
    /// The frame ends before a header it announces, or before the IPv4 total
    /// length (Ethernet may pad a frame, it never shortens one).
    Truncated,
    /// The EtherType is not IPv4 (ARP, IPv6, VLAN-tagged frames, ...).
    NotIpv4,
    /// An IPv4 datagram that does not carry TCP.
    NotTcp,
    /// IPv4 header that cannot be valid: version not 4, IHL < 5, or total
    /// length shorter than the header.
    BadIpHeader,
    /// An IPv4 fragment (MF set or offset non-zero). We set DF and never
    /// reassemble; the kernel peer does path-MTU discovery (RFC 1191).
    Fragment,
    /// The IPv4 header checksum does not verify.
    BadIpChecksum,
    /// TCP data offset < 5 or pointing past the end of the segment.
    BadTcpHeader,
    /// A TCP option with a length < 2 or running past the header.
    BadTcpOptions,
    /// The TCP checksum over pseudo-header, header and payload does not verify.
    BadTcpChecksum,
    /// An ICMP "fragmentation needed" whose quoted datagram is not an IPv4
    /// TCP header (the XDP program steers only those quoting our ports).
    BadIcmp,
    /// The ICMP checksum does not verify.
    BadIcmpChecksum,
}

impl DropReason {
    /// Every variant, in declaration order (`ALL[r.index()] == r`).
    pub const ALL: [DropReason; 11] = [
        DropReason::Truncated,
        DropReason::NotIpv4,
        DropReason::NotTcp,
        DropReason::BadIpHeader,
        DropReason::Fragment,
        DropReason::BadIpChecksum,
        DropReason::BadTcpHeader,
        DropReason::BadTcpOptions,
        DropReason::BadTcpChecksum,
        DropReason::BadIcmp,
        DropReason::BadIcmpChecksum,
    ];

    /// Every distinct value [`DropReason::label`] returns, without repeats.
    pub const LABELS: [&'static str; 7] = [
        "truncated",
        "not_ipv4",
        "not_tcp",
        "bad_ip_header",
        "fragment",
        "bad_checksum",
        "malformed",
    ];

    /// The Prometheus label value (see the type's documentation for the grouping).
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::NotTcp => "not_tcp",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::Fragment => "fragment",
            DropReason::BadIpChecksum
            | DropReason::BadTcpChecksum
            | DropReason::BadIcmpChecksum => "bad_checksum",
            DropReason::BadTcpHeader | DropReason::BadTcpOptions | DropReason::BadIcmp => {
                "malformed"
            }
        }
    }

    /// Position in [`DropReason::ALL`], for per-variant counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}
