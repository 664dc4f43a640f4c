//! Receive-side scaling: where the NIC will deliver a flow's packets.
//!
//! A multi-queue NIC picks a flow's receive queue as
//! `indirection[toeplitz(key, src ip | dst ip | src port | dst port) % len]`
//! (Microsoft's RSS specification, "Verifying the RSS Hash Calculation").
//! Knowing the key and the table lets a shard choose, for an active open, a
//! local port whose *reply* lands on its own queue, so replies need no
//! handoff between shards (Seastar, F-Stack and mTCP do the same). The key
//! and table are read from the NIC at start (ETHTOOL_GRSSH); veth and some
//! virtual NICs have none, and then the caller falls back to handoff.

use std::net::Ipv4Addr;

/// Bytes hashed for TCP over IPv4: source and destination address, source
/// and destination port, all in network byte order.
const INPUT_LEN: usize = 12;

/// The key of Microsoft's RSS verification suite (also Intel's default).
pub const MICROSOFT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// The Toeplitz hash of `input` under `key`: for every set bit of the input
/// (most significant first), XOR in the 32 key bits starting at that bit's
/// position. Key bits past the end of `key` count as zero.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |b| u32::from((b >> (7 - (i % 8))) & 1))
    };
    let mut window: u32 = (0..32).fold(0, |w, i| (w << 1) | key_bit(i));
    let mut hash = 0u32;
    for (n, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | key_bit(n * 8 + bit + 32);
        }
    }
    hash
}

/// The NIC's steering: key, indirection table, and whether TCP ports are
/// part of the hash input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    pub key: Vec<u8>,
    /// Queue of each indirection entry.
    pub table: Vec<u32>,
    /// Where the configuration came from (for the start-up note).
    pub source: &'static str,
}

/// Precomputed hashing for one key and table: the Toeplitz hash is linear
/// in its input bits, so it is the XOR of one table entry per input byte
/// (12 lookups per tuple, no bit loop on the fast path).
pub struct RssSteering {
    bytes: Box<[[u32; 256]; INPUT_LEN]>,
    table: Vec<u32>,
    queues: u32,
}

impl std::fmt::Debug for RssSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RssSteering")
            .field("table_len", &self.table.len())
            .field("queues", &self.queues)
            .finish()
    }
}

impl RssSteering {
    /// None when the table is empty.
    pub fn new(cfg: &RssConfig) -> Option<Self> {
        if cfg.table.is_empty() {
            return None;
        }
        let mut bytes = Box::new([[0u32; 256]; INPUT_LEN]);
        let mut input = [0u8; INPUT_LEN];
        for (pos, row) in bytes.iter_mut().enumerate() {
            for (value, slot) in row.iter_mut().enumerate() {
                input[pos] = value as u8;
                *slot = toeplitz(&cfg.key, &input);
            }
            input[pos] = 0;
        }
        let queues = cfg.table.iter().copied().max().unwrap_or(0) + 1;
        Some(RssSteering {
            bytes,
            table: cfg.table.clone(),
            queues,
        })
    }

    /// The Toeplitz hash of a TCP/IPv4 tuple as the NIC sees it arrive.
    #[inline]
    pub fn hash(&self, src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> u32 {
        let mut input = [0u8; INPUT_LEN];
        input[0..4].copy_from_slice(&src.octets());
        input[4..8].copy_from_slice(&dst.octets());
        input[8..10].copy_from_slice(&src_port.to_be_bytes());
        input[10..12].copy_from_slice(&dst_port.to_be_bytes());
        input
            .iter()
            .zip(self.bytes.iter())
            .fold(0, |h, (&b, row)| h ^ row[usize::from(b)])
    }

    /// The receive queue a packet of this tuple arrives on.
    #[inline]
    pub fn queue(&self, src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16) -> u32 {
        let h = self.hash(src, dst, src_port, dst_port);
        self.table[h as usize % self.table.len()]
    }

    /// Highest queue in the table, plus one.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Whether `queue` appears in the indirection table at all.
    pub fn serves(&self, queue: u32) -> bool {
        self.table.contains(&queue)
    }
}

/// Parses a key given as hex bytes, with or without `:` separators
/// (`ethtool -x` prints `6d:5a:...`).
pub fn parse_key(s: &str) -> Result<Vec<u8>, String> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(format!(
            "RSS key {s:?}: expected an even number of hex digits (e.g. 6d:5a:56:...)"
        ));
    }
    if hex.len() < 2 * (INPUT_LEN + 4) {
        return Err(format!(
            "RSS key {s:?}: {} bytes is too short, TCP/IPv4 hashing needs at least {}",
            hex.len() / 2,
            INPUT_LEN + 4
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("RSS key {s:?}: not hex"))
        })
        .collect()
}

/// Parses an indirection table: comma-separated queues, each optionally
/// repeated as `QUEUE*COUNT` (`0*124,1*4` is 124 entries of queue 0 then 4 of
/// queue 1).
pub fn parse_table(s: &str) -> Result<Vec<u32>, String> {
    let mut table = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (q, n) = part.split_once('*').unwrap_or((part, "1"));
        let q: u32 = q
            .trim()
            .parse()
            .map_err(|_| format!("RSS table entry {part:?}: expected QUEUE or QUEUE*COUNT"))?;
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| format!("RSS table entry {part:?}: COUNT must be 1-4096"))?;
        table.extend(std::iter::repeat_n(q, n));
    }
    if table.is_empty() || table.len() > 65536 {
        return Err(format!("RSS table {s:?}: expected 1-65536 entries"));
    }
    Ok(table)
}

/// Why the NIC's steering could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// The driver reports no RSS (veth, ENA without the key, ...).
    NotReported(String),
    /// RSS with a function other than Toeplitz, or a symmetric transform.
    Function(String),
    /// TCP/IPv4 is hashed without the ports: the port cannot choose the queue.
    NoPorts,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unknown::NotReported(e) => write!(f, "the driver reports no RSS key/table ({e})"),
            Unknown::Function(what) => write!(f, "the NIC hashes with {what}, not plain Toeplitz"),
            Unknown::NoPorts => f.write_str("TCP/IPv4 flows are hashed without their ports"),
        }
    }
}

// linux/ethtool.h
const ETHTOOL_GRXFH: u32 = 0x29;
const ETHTOOL_GRSSH: u32 = 0x46;
const TCP_V4_FLOW: u32 = 0x01;
const RXH_L4_B_0_1: u64 = 1 << 6;
const RXH_L4_B_2_3: u64 = 1 << 7;
const ETH_RSS_HASH_TOP: u8 = 1 << 0;
/// Bytes of `struct ethtool_rxfh` before `rss_config[]`.
const RXFH_HEADER: usize = 24;

/// Reads the RSS key, hash function and indirection table of `iface`
/// (ETHTOOL_GRSSH), and which TCP/IPv4 fields it hashes (ETHTOOL_GRXFH).
/// Runs once at start, never on a shard.
pub fn read_nic(iface: &str) -> Result<RssConfig, Unknown> {
    // First call: sizes only (indir_size = key_size = 0).
    let mut head = [0u32; RXFH_HEADER / 4];
    head[0] = ETHTOOL_GRSSH;
    crate::iface::ethtool(iface, head.as_mut_ptr().cast())
        .map_err(|e| Unknown::NotReported(format!("ETHTOOL_GRSSH: {e}")))?;
    let (indir_size, key_size) = (head[2] as usize, head[3] as usize);
    if indir_size == 0 || key_size == 0 || indir_size > 65536 || key_size > 1024 {
        return Err(Unknown::NotReported(format!(
            "indirection table of {indir_size} entries, key of {key_size} bytes"
        )));
    }
    let words = (RXFH_HEADER + indir_size * 4 + key_size).div_ceil(4);
    let mut buf = vec![0u32; words];
    buf[0] = ETHTOOL_GRSSH;
    buf[2] = indir_size as u32;
    buf[3] = key_size as u32;
    crate::iface::ethtool(iface, buf.as_mut_ptr().cast())
        .map_err(|e| Unknown::NotReported(format!("ETHTOOL_GRSSH: {e}")))?;
    let hfunc = (buf[4] & 0xff) as u8;
    let input_xfrm = ((buf[4] >> 8) & 0xff) as u8;
    if hfunc != ETH_RSS_HASH_TOP {
        return Err(Unknown::Function(format!("hash function bits {hfunc:#x}")));
    }
    if input_xfrm != 0 {
        return Err(Unknown::Function(format!(
            "input transform {input_xfrm:#x} (symmetric hashing)"
        )));
    }
    let table = buf[RXFH_HEADER / 4..RXFH_HEADER / 4 + indir_size].to_vec();
    let key_bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let key_at = RXFH_HEADER + indir_size * 4;
    let key = key_bytes[key_at..key_at + key_size].to_vec();

    // struct ethtool_rxnfc: cmd, flow_type, data (u64), then more we ignore.
    let mut nfc = [0u64; 32];
    nfc[0] = u64::from(ETHTOOL_GRXFH) | (u64::from(TCP_V4_FLOW) << 32);
    if cfg!(target_endian = "big") {
        nfc[0] = (u64::from(ETHTOOL_GRXFH) << 32) | u64::from(TCP_V4_FLOW);
    }
    match crate::iface::ethtool(iface, nfc.as_mut_ptr().cast()) {
        Ok(()) if nfc[1] & (RXH_L4_B_0_1 | RXH_L4_B_2_3) != (RXH_L4_B_0_1 | RXH_L4_B_2_3) => {
            return Err(Unknown::NoPorts);
        }
        // Drivers that cannot report the fields hash TCP on the 4-tuple
        // (the RSS specification's default for TCP).
        _ => {}
    }
    Ok(RssConfig {
        key,
        table,
        source: "the NIC",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(src: &str, dst: &str, sport: u16, dport: u16, ports: bool) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(src.parse::<Ipv4Addr>().unwrap().octets());
        v.extend(dst.parse::<Ipv4Addr>().unwrap().octets());
        if ports {
            v.extend(sport.to_be_bytes());
            v.extend(dport.to_be_bytes());
        }
        v
    }

    /// Microsoft's "Verifying the RSS Hash Calculation" IPv4 vectors:
    /// (destination, source, hash with ports, hash of the addresses only).
    const VECTORS: [(&str, u16, &str, u16, u32, u32); 5] = [
        (
            "161.142.100.80",
            1766,
            "66.9.149.187",
            2794,
            0x51cc_c178,
            0x323e_8fc2,
        ),
        (
            "65.69.140.83",
            4739,
            "199.92.111.2",
            14230,
            0xc626_b0ea,
            0xd718_262a,
        ),
        (
            "12.22.207.184",
            38024,
            "24.19.198.95",
            12898,
            0x5c2b_394a,
            0xd2d0_a5de,
        ),
        (
            "209.142.163.6",
            2217,
            "38.27.205.30",
            48228,
            0xafc7_327f,
            0x8298_9176,
        ),
        (
            "202.188.127.2",
            1303,
            "153.39.163.191",
            44251,
            0x10e8_28a2,
            0x5d18_09c5,
        ),
    ];

    #[test]
    fn published_vectors_with_and_without_ports() {
        for (dst, dport, src, sport, with_ports, ips_only) in VECTORS {
            let h = toeplitz(&MICROSOFT_KEY, &input(src, dst, sport, dport, true));
            assert_eq!(h, with_ports, "{src}:{sport} -> {dst}:{dport}");
            let h = toeplitz(&MICROSOFT_KEY, &input(src, dst, sport, dport, false));
            assert_eq!(h, ips_only, "{src} -> {dst}");
        }
    }

    #[test]
    fn byte_tables_match_the_bit_loop() {
        let cfg = RssConfig {
            key: MICROSOFT_KEY.to_vec(),
            table: vec![0],
            source: "test",
        };
        let s = RssSteering::new(&cfg).unwrap();
        for (dst, dport, src, sport, with_ports, _) in VECTORS {
            let h = s.hash(src.parse().unwrap(), dst.parse().unwrap(), sport, dport);
            assert_eq!(h, with_ports);
        }
    }

    #[test]
    fn queue_follows_the_indirection_table() {
        // 128 entries alternating 0,1,2,3: the queue is the hash's low 2 bits.
        let table: Vec<u32> = (0..128).map(|i| i % 4).collect();
        let cfg = RssConfig {
            key: MICROSOFT_KEY.to_vec(),
            table,
            source: "test",
        };
        let s = RssSteering::new(&cfg).unwrap();
        assert_eq!(s.queues(), 4);
        let q = s.queue(
            "66.9.149.187".parse().unwrap(),
            "161.142.100.80".parse().unwrap(),
            2794,
            1766,
        );
        assert_eq!(q, 0x51cc_c178 % 128 % 4);
    }

    #[test]
    fn keys_and_tables_parse_with_clear_errors() {
        let text: Vec<String> = MICROSOFT_KEY.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_key(&text.join(":")).unwrap(), MICROSOFT_KEY.to_vec());
        assert_eq!(parse_key(&text.concat()).unwrap(), MICROSOFT_KEY.to_vec());
        assert!(parse_key("6d:5a").unwrap_err().contains("too short"));
        assert!(parse_key("zz").is_err());
        assert!(parse_key("abc").is_err());
        assert_eq!(parse_table("0*3,1,2*2").unwrap(), vec![0, 0, 0, 1, 2, 2]);
        assert!(parse_table("").is_err());
        assert!(parse_table("0*0").is_err());
        assert!(parse_table("x").is_err());
    }

    #[test]
    fn veth_reports_no_rss_and_a_missing_interface_is_an_error() {
        // Loopback, like veth, has no RSS: the caller must fall back.
        assert!(matches!(read_nic("lo"), Err(Unknown::NotReported(_))));
        assert!(matches!(
            read_nic("no-such-if0"),
            Err(Unknown::NotReported(_))
        ));
    }
}
