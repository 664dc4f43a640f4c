//! Regressions found by the engine fuzzer (fuzz/harness.rs), as traces.

use super::fixture::*;
use super::pair::ACK;
use crate::wire::TcpRepr;
use std::time::Duration;

/// The peer retransmits old data (SEG.SEQ below SND.WL1) carrying a new ACK
/// and a closed window. RFC 9293's window update rule skips the segment (its
/// sequence number is older), and SND.UNA + SND.WND would then carry the old
/// 2000-byte window forward from the new SND.UNA: the engine sent 536 bytes
/// past the edge the peer ever offered. As Linux (tcp_may_update_window), an
/// ACK that advances SND.UNA updates the window.
#[test]
fn an_old_segment_that_acks_new_data_updates_the_window() {
    let mut f = Fix::new(Spec {
        snd_wnd: 2000,
        mss: 536,
        ..SPEC
    });
    // The peer's latest segment was at peer_seq(4) (SND.WL1).
    f.send(
        TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(0),
            window: 2000,
            ..SEND_TEMPL
        },
        b"abcd",
    );
    f.recv_all();
    f.send(
        TcpRepr {
            seq: f.peer_seq(4),
            ack: f.our_seq(0),
            window: 2000,
            ..SEND_TEMPL
        },
        b"",
    );
    f.app_send(&[7u8; 4000]);
    let sent: usize = f.recv_all().iter().map(|s| s.payload.len()).sum();
    // Three full segments fit (sender SWS avoidance holds the runt).
    assert_eq!(sent, 1608);
    // A retransmission of its first bytes: older SEQ, new ACK, window 0.
    f.send(
        TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(1608),
            window: 0,
            ..SEND_TEMPL
        },
        b"abcd",
    );
    for s in f.recv_all() {
        assert!(s.payload.is_empty(), "data past the closed window: {s:?}");
        s.expect(ACK, f.our_seq(1608), f.peer_seq(4));
    }
    // The window opens again: data flows, as far as the new edge.
    f.advance(Duration::from_millis(10));
    f.send(
        TcpRepr {
            seq: f.peer_seq(4),
            ack: f.our_seq(1608),
            window: 1000,
            ..SEND_TEMPL
        },
        b"",
    );
    let segs = f.recv_all();
    assert_eq!(segs[0].tcp.seq, f.our_seq(1608));
    let end = segs
        .iter()
        .map(|s| s.tcp.seq.wrapping_sub(f.our_seq(0)) as usize + s.payload.len())
        .max();
    assert_eq!(
        end,
        Some(1608 + 536),
        "one segment into the new 1000-byte window"
    );
}

/// An old ACK (below SND.UNA, inside RFC 5961's acceptable range) from a
/// newer segment opens the window it offers from its own, older number. The
/// engine took the window but applied it at SND.UNA, 704 bytes further on,
/// and sent past the edge the peer offered (the fuzzer's crash-635eb27...).
/// RFC 9293 3.10.7.4 updates the window only "If SND.UNA =< SEG.ACK".
#[test]
fn an_old_ack_from_a_newer_segment_does_not_open_the_window() {
    let mut f = Fix::new(Spec {
        snd_wnd: 4000,
        mss: 536,
        ..SPEC
    });
    f.app_send(&[7u8; 8000]);
    let sent: usize = f.recv_all().iter().map(|s| s.payload.len()).sum();
    assert_eq!(sent, 3752, "seven full segments in the 4000-byte window");
    // Everything acknowledged, window closed.
    f.send(
        TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(3752),
            window: 0,
            ..SEND_TEMPL
        },
        b"",
    );
    for s in f.recv_all() {
        assert!(s.payload.is_empty(), "data past the closed window: {s:?}");
    }
    // Peer data, then an old ACK (704 below SND.UNA) on a newer segment
    // offering 1288 bytes from its own number: the edge stays at 3752.
    f.send(
        TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(3752),
            window: 0,
            ..SEND_TEMPL
        },
        b"abcd",
    );
    f.recv_all();
    f.send(
        TcpRepr {
            seq: f.peer_seq(4),
            ack: f.our_seq(3752 - 704),
            window: 1288,
            ..SEND_TEMPL
        },
        b"",
    );
    for s in f.recv_all() {
        assert!(
            s.payload.is_empty(),
            "sent {:?} past the edge the peer offered: {s:?}",
            s.tcp.seq.wrapping_sub(f.our_seq(0)) as usize + s.payload.len()
        );
    }
}
