//! Real frames captured from Linux 6.18, parsed field by field and rebuilt.
//!
//! How they were captured (as root, 2026-11-22, by `capture_frames.sh` beside
//! this file, which redoes it): two network namespaces
//! `tswire-cli` and `tswire-srv` joined by a veth pair (`tsw-cli0` with
//! 198.18.77.1/24, `tsw-srv0` with 198.18.77.2/24), `ethtool -K <dev> tx off`
//! on both ends so the kernel filled in real checksums instead of leaving
//! them to an offload that veth never performs, `python3 -m http.server 8080`
//! in the server namespace, `tcpdump -i tsw-srv0 -w http.pcap tcp` beside it,
//! then from the client namespace `curl http://198.18.77.2:8080/index.html`
//! and a `curl` to closed port 8081 for the RST. Default sysctls
//! (tcp_timestamps, tcp_sack, tcp_window_scaling all 1). The namespaces were
//! deleted afterwards. tcpdump -v reported every checksum "correct".
//!
//! Rebuilding: Linux stamps a per-socket IP identification on DF datagrams
//! where we send 0 (see `ipv4::write_header`), so before comparing bytes the
//! captured id is set to 0 with an RFC 1624 incremental checksum update;
//! everything else, options included, must match byte for byte.

use std::net::Ipv4Addr;

use super::super::checksum::update_checksum;
use super::super::{
    FrameMeta, TcpFlags, TcpOptions, TcpRepr, Timestamps, build_frame, parse_frame,
};

const CLIENT_MAC: [u8; 6] = [0x12, 0x1c, 0x43, 0x2a, 0x94, 0x4d];
const SERVER_MAC: [u8; 6] = [0x12, 0x86, 0x60, 0x45, 0xc1, 0x18];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 2);

const TO_SERVER: FrameMeta = FrameMeta {
    src_mac: CLIENT_MAC,
    dst_mac: SERVER_MAC,
    src_ip: CLIENT_IP,
    dst_ip: SERVER_IP,
};
const TO_CLIENT: FrameMeta = FrameMeta {
    src_mac: SERVER_MAC,
    dst_mac: CLIENT_MAC,
    src_ip: SERVER_IP,
    dst_ip: CLIENT_IP,
};

/// Client SYN: `Flags [S], seq 1197475054, win 64240, options [mss
/// 1460,sackOK,TS val 522672376 ecr 0,nop,wscale 10]`, IP id 64980.
const SYN: &[&str] = &[
    "12866045c118121c432a944d08004500003cfdd44000400616bfc6124d01c612",
    "4d0298a01f90476004ee00000000a002faf0aa450000020405b40402080a1f27",
    "58f8000000000103030a",
];

/// Server SYN-ACK: `Flags [S.], seq 785667092, ack 1197475055, win 65160,
/// options [mss 1460,sackOK,TS val 138180683 ecr 522672376,nop,wscale 10]`,
/// IP id 0.
const SYN_ACK: &[&str] = &[
    "121c432a944d12866045c11808004500003c0000400040061494c6124d02c612",
    "4d011f9098a02ed45414476004efa012fe88a32c0000020405b40402080a083c",
    "784b1f2758f80103030a",
];

/// Client request: `Flags [P.], seq 1:91, ack 1, win 63, options
/// [nop,nop,TS val 522672376 ecr 138180683], length 90` (the HTTP GET),
/// IP id 64982.
const DATA: &[&str] = &[
    "12866045c118121c432a944d08004500008efdd640004006166bc6124d01c612",
    "4d0298a01f90476004ef2ed454158018003f301e00000101080a1f2758f8083c",
    "784b474554202f696e6465782e68746d6c20485454502f312e310d0a486f7374",
    "3a203139382e31382e37372e323a383038300d0a557365722d4167656e743a20",
    "6375726c2f372e38382e310d0a4163636570743a202a2f2a0d0a0d0a",
];

/// Server FIN (http.server closes first): `Flags [F.], seq 215, ack 91, win
/// 64, options [nop,nop,TS val 138180686 ecr 522672379]`, IP id 45331.
const FIN: &[&str] = &[
    "121c432a944d12866045c118080045000034b113400040066388c6124d02c612",
    "4d011f9098a02ed454eb4760054980110040cf0d00000101080a083c784e1f27",
    "58fb",
];

/// Server RST to a SYN for closed port 8081: `Flags [R.], seq 0, ack
/// 3132229199, win 0, length 0`, IP id 0, no options, 54 bytes (veth does
/// not pad to the Ethernet minimum).
const RST: &[&str] = &[
    "121c432a944d12866045c11808004500002800004000400614a8c6124d02c612",
    "4d011f91c84800000000bab2064f50140000e0cc0000",
];

fn bytes(hex: &[&str]) -> Vec<u8> {
    let hex: String = hex.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The captured frame with IP identification 0, checksum updated per RFC 1624.
fn with_ip_id_zero(mut frame: Vec<u8>) -> Vec<u8> {
    let id = u16::from_be_bytes([frame[18], frame[19]]);
    let csum = u16::from_be_bytes([frame[24], frame[25]]);
    frame[18..20].copy_from_slice(&[0, 0]);
    frame[24..26].copy_from_slice(&update_checksum(csum, id, 0).to_be_bytes());
    frame
}

/// Parses the capture, checks it against the expected header, payload and IP
/// id, then rebuilds it and compares bytes.
fn check(hex: &[&str], meta: FrameMeta, tcp: TcpRepr, payload: &[u8], ip_id: u16) {
    let captured = bytes(hex);
    assert_eq!(u16::from_be_bytes([captured[18], captured[19]]), ip_id);
    let parsed = parse_frame(&captured).expect("a frame Linux sent parses");
    assert_eq!(parsed.meta, meta);
    assert_eq!(parsed.tcp, tcp);
    assert_eq!(parsed.payload, payload);

    let mut buf = [0u8; 256];
    buf[100..100 + payload.len()].copy_from_slice(payload);
    let len = build_frame(&mut buf, &meta, &tcp, 100, payload.len()).unwrap();
    let expected = with_ip_id_zero(captured);
    assert!(
        parse_frame(&expected).is_ok(),
        "incremental update verifies"
    );
    assert_eq!(hex_of(&buf[..len]), hex_of(&expected));
}

/// Hex for readable assertion failures.
fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn linux_syn_with_mss_sack_ts_ws() {
    let tcp = TcpRepr {
        src_port: 39072,
        dst_port: 8080,
        seq: 1_197_475_054,
        ack: 0,
        flags: TcpFlags::SYN,
        window: 64240,
        options: TcpOptions {
            sack: crate::wire::SackBlocks::EMPTY,
            mss: Some(1460),
            window_scale: Some(10),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                tsval: 522_672_376,
                tsecr: 0,
            }),
        },
    };
    check(SYN, TO_SERVER, tcp, b"", 64980);
}

#[test]
fn linux_syn_ack() {
    let tcp = TcpRepr {
        src_port: 8080,
        dst_port: 39072,
        seq: 785_667_092,
        ack: 1_197_475_055,
        flags: TcpFlags::SYN | TcpFlags::ACK,
        window: 65160,
        options: TcpOptions {
            sack: crate::wire::SackBlocks::EMPTY,
            mss: Some(1460),
            window_scale: Some(10),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                tsval: 138_180_683,
                tsecr: 522_672_376,
            }),
        },
    };
    check(SYN_ACK, TO_CLIENT, tcp, b"", 0);
}

#[test]
fn linux_data_segment_with_payload() {
    let tcp = TcpRepr {
        src_port: 39072,
        dst_port: 8080,
        seq: 1_197_475_055,
        ack: 785_667_093,
        flags: TcpFlags::PSH | TcpFlags::ACK,
        window: 63,
        options: TcpOptions {
            timestamps: Some(Timestamps {
                tsval: 522_672_376,
                tsecr: 138_180_683,
            }),
            ..TcpOptions::default()
        },
    };
    let payload = b"GET /index.html HTTP/1.1\r\nHost: 198.18.77.2:8080\r\n\
User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    assert_eq!(payload.len(), 90);
    check(DATA, TO_SERVER, tcp, payload, 64982);
}

#[test]
fn linux_fin() {
    let tcp = TcpRepr {
        src_port: 8080,
        dst_port: 39072,
        seq: 785_667_092 + 215,
        ack: 1_197_475_054 + 91,
        flags: TcpFlags::FIN | TcpFlags::ACK,
        window: 64,
        options: TcpOptions {
            timestamps: Some(Timestamps {
                tsval: 138_180_686,
                tsecr: 522_672_379,
            }),
            ..TcpOptions::default()
        },
    };
    check(FIN, TO_CLIENT, tcp, b"", 45331);
}

#[test]
fn linux_rst_ack_without_options() {
    let tcp = TcpRepr {
        src_port: 8081,
        dst_port: 51272,
        seq: 0,
        ack: 3_132_229_199,
        flags: TcpFlags::RST | TcpFlags::ACK,
        window: 0,
        options: TcpOptions::default(),
    };
    check(RST, TO_CLIENT, tcp, b"", 0);
}

#[test]
fn linux_frames_padded_to_60_bytes_still_parse() {
    // A NIC (not veth) would pad the 54-byte RST to the Ethernet minimum.
    let mut rst = bytes(RST);
    rst.resize(60, 0);
    let parsed = parse_frame(&rst).unwrap();
    assert_eq!(parsed.tcp.flags, TcpFlags::RST | TcpFlags::ACK);
    assert!(parsed.payload.is_empty());
}
