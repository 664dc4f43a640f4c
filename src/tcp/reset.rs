//! The reply to a segment that reaches no connection (RFC 9293 3.10.7.1, CLOSED state).

use crate::wire::{TcpFlags, TcpOptions, TcpRepr};

/// The RST answering `incoming` (carrying `payload_len` bytes) on a port where
/// nothing listens, or `None` when no reply is due.
///
/// RFC 9293 3.10.7.1: an incoming RST is discarded. If the ACK bit is on,
/// `<SEQ=SEG.ACK><CTL=RST>`; otherwise `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`,
/// where SEG.LEN counts SYN and FIN. Ports swapped, window 0, no options.
pub fn reset_for(incoming: &TcpRepr, payload_len: usize) -> Option<TcpRepr> {
    if incoming.flags.contains(TcpFlags::RST) {
        return None;
    }
    let (seq, ack, flags) = if incoming.flags.contains(TcpFlags::ACK) {
        (incoming.ack, 0, TcpFlags::RST)
    } else {
        let mut len = payload_len as u32;
        if incoming.flags.contains(TcpFlags::SYN) {
            len = len.wrapping_add(1);
        }
        if incoming.flags.contains(TcpFlags::FIN) {
            len = len.wrapping_add(1);
        }
        (
            0,
            incoming.seq.wrapping_add(len),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    Some(TcpRepr {
        src_port: incoming.dst_port,
        dst_port: incoming.src_port,
        seq,
        ack,
        flags,
        window: 0,
        options: TcpOptions::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: TcpFlags) -> TcpRepr {
        TcpRepr {
            src_port: 1234,
            dst_port: 80,
            seq: 1000,
            ack: 5000,
            flags,
            window: 100,
            options: TcpOptions {
                mss: Some(1460),
                ..Default::default()
            },
        }
    }

    #[test]
    fn rst_gets_no_reply() {
        assert_eq!(reset_for(&seg(TcpFlags::RST), 0), None);
        assert_eq!(reset_for(&seg(TcpFlags::RST | TcpFlags::ACK), 10), None);
    }

    #[test]
    fn ack_gets_rst_at_its_ack() {
        let r = reset_for(&seg(TcpFlags::ACK | TcpFlags::PSH), 10).unwrap();
        assert_eq!((r.src_port, r.dst_port), (80, 1234));
        assert_eq!((r.seq, r.ack, r.flags), (5000, 0, TcpFlags::RST));
        assert_eq!(r.window, 0);
        assert_eq!(r.options, TcpOptions::default());
    }

    #[test]
    fn syn_gets_rst_ack_counting_syn() {
        let r = reset_for(&seg(TcpFlags::SYN), 0).unwrap();
        assert_eq!(
            (r.seq, r.ack, r.flags),
            (0, 1001, TcpFlags::RST | TcpFlags::ACK)
        );
    }

    #[test]
    fn syn_fin_with_data_counts_all() {
        let mut s = seg(TcpFlags::SYN | TcpFlags::FIN);
        s.seq = u32::MAX;
        let r = reset_for(&s, 3).unwrap();
        assert_eq!(r.ack, 4); // MAX + 3 + SYN + FIN, wrapped
    }
}
