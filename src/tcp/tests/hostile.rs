//! Hostile input: random segments (any flags, numbers near and far from the
//! live ones, absurd options, payloads) at an endpoint holding a listener, an
//! established connection, one closing and a TIME-WAIT entry. Nothing may
//! panic, and the endpoint must keep working.

use super::pair::*;
use crate::wire::{TcpFlags, TcpOptions, TcpRepr, Timestamps};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Clone, Debug)]
struct Fuzz {
    to_client: bool,
    port_pick: u8,
    flags: u8,
    seq_delta: i64,
    ack_delta: i64,
    window: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    ts: Option<(u32, u32)>,
    len: usize,
    advance_ms: u16,
}

fn fuzz() -> impl Strategy<Value = Fuzz> {
    let delta = prop_oneof![
        -3i64..3,
        -70_000i64..70_000,
        any::<u32>().prop_map(i64::from),
    ];
    (
        any::<bool>(),
        0u8..4,
        any::<u8>(),
        delta.clone(),
        delta,
        any::<u16>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of((any::<u32>(), any::<u32>())),
        prop_oneof![Just(0usize), 1usize..3000],
        0u16..3000,
    )
        .prop_map(
            |(
                to_client,
                port_pick,
                flags,
                seq_delta,
                ack_delta,
                window,
                mss,
                ws,
                ts,
                len,
                advance_ms,
            )| Fuzz {
                to_client,
                port_pick,
                flags,
                seq_delta,
                ack_delta,
                window,
                mss,
                ws,
                ts,
                len,
                advance_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_segments_never_panic(segs in proptest::collection::vec(fuzz(), 1..60)) {
        let mut p = Pair::new();
        // A TIME-WAIT entry on A for 40001 <-> 80 ...
        let tw = p.a.connect_from(
            std::net::SocketAddrV4::new(A_IP, 40001),
            p.tuple.remote,
            p.now,
        ).unwrap();
        p.drive();
        p.a.close(tw).unwrap();
        p.drive();
        while let Some((id, _)) = p.b.poll_event() {
            let _ = p.b.close(id);
        }
        p.drive();
        prop_assert_eq!(p.a.time_wait_count(), 1);
        p.a_events();
        p.b_events();
        // ... an established connection and one half-closed by B.
        let (a_id, b_id, a_iss, b_iss) = p.establish();
        p.a.send(a_id, &[1u8; 5000]).unwrap();
        p.drive();
        p.b.shutdown(b_id).unwrap();
        p.drive();
        let payload = vec![0xeeu8; 3000];
        for f in segs {
            p.now = p.now + Duration::from_millis(u64::from(f.advance_ms));
            let (src, dst, sport, dport, base_seq, base_ack) = if f.to_client {
                (B_IP, A_IP, B_PORT, [A_PORT, 1, 40001, 80][f.port_pick as usize], b_iss, a_iss)
            } else {
                (A_IP, B_IP, [A_PORT, 1, 40001, 7][f.port_pick as usize], B_PORT, a_iss, b_iss)
            };
            let seg = Seg {
                src,
                dst,
                tcp: TcpRepr {
                    src_port: sport,
                    dst_port: dport,
                    seq: (i64::from(base_seq) + f.seq_delta) as u32,
                    ack: (i64::from(base_ack) + f.ack_delta) as u32,
                    flags: TcpFlags(f.flags),
                    window: f.window,
                    options: TcpOptions { sack: crate::wire::SackBlocks::EMPTY,
                        mss: f.mss,
                        window_scale: f.ws,
                        sack_permitted: f.flags & 1 == 1,
                        timestamps: f.ts.map(|(tsval, tsecr)| Timestamps { tsval, tsecr }),
                    },
                },
                payload: payload[..f.len].to_vec(),
            };
            if f.to_client { p.deliver_a(&seg) } else { p.deliver_b(&seg) }
            p.a.handle_timeout(p.now);
            p.b.handle_timeout(p.now);
            // Whatever they answer is well formed: payloads within the MSS and
            // made only of bytes the application queued (A sent only 1s, B
            // nothing: stale buffer bytes would show), legal flag sets, ACK on
            // everything but a SYN or a RST, and no timer already due after
            // the timers ran (a busy loop).
            for (from_a, ep) in [(true, &mut p.a), (false, &mut p.b)] {
                let mut buf = [0xa5u8; 2048];
                let mut n = 0;
                while let Some(t) = ep.poll_transmit(p.now, &mut buf) {
                    let fl = t.tcp.flags;
                    prop_assert!(t.payload_len <= 1460, "payload {} > MSS", t.payload_len);
                    let payload = &buf[..t.payload_len];
                    if from_a {
                        prop_assert!(payload.iter().all(|&b| b == 1), "A sent bytes it never queued");
                    } else {
                        prop_assert_eq!(t.payload_len, 0, "B sent data it never queued");
                    }
                    prop_assert!(!(fl.contains(TcpFlags::SYN) && fl.intersects(TcpFlags::RST | TcpFlags::FIN)));
                    if fl.contains(TcpFlags::RST) {
                        prop_assert_eq!(t.payload_len, 0);
                    } else if !fl.contains(TcpFlags::SYN) {
                        prop_assert!(fl.contains(TcpFlags::ACK), "{:?} without ACK", t.tcp);
                    }
                    buf.fill(0xa5);
                    n += 1;
                    prop_assert!(n < 10_000, "poll_transmit does not stop");
                }
                while ep.poll_event().is_some() {}
                if let Some(t) = ep.poll_timeout() {
                    prop_assert!(t > p.now, "a timer at {:?} is already due at {:?}", t, p.now);
                }
            }
        }
        // Still a working endpoint: a new connection completes.
        p.advance(Duration::from_secs(300));
        let fresh = p.a.connect_from(
            std::net::SocketAddrV4::new(A_IP, 50_000),
            p.tuple.remote,
            p.now,
        ).unwrap();
        p.drive();
        prop_assert_eq!(p.a.state(fresh), Some(crate::tcp::State::Established));
    }
}
