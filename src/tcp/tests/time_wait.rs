//! TIME-WAIT recycling: a SYN on a tuple in TIME-WAIT (passive side, RFC 6191
//! and RFC 1122 4.2.2.13), safe reuse by active opens, the bound on entries.

use super::pair::*;
use crate::tcp::{Config, ConnectError, Event, FourTuple, State};
use crate::wire::{TcpOptions, TcpRepr, Timestamps};
use std::net::SocketAddrV4;
use std::time::Duration;

/// B (the server) closes first and holds TIME-WAIT; A's side is gone.
/// Returns the tuple's last segment from A (for its timestamp).
fn server_in_time_wait(p: &mut Pair) -> Seg {
    let (a_id, b_id, ..) = p.establish();
    p.b.close(b_id).unwrap();
    p.drive();
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    p.deliver_b(&fin);
    p.drive();
    assert_eq!(p.b.state_of(&p.b_tuple()), State::TimeWait);
    assert_eq!(p.a.state_of(&p.tuple), State::Closed);
    p.a_events();
    p.b_events();
    fin
}

#[test]
fn syn_with_newer_timestamp_reopens_a_time_wait_tuple() {
    let mut p = Pair::new();
    let last = server_in_time_wait(&mut p);
    let old_b_fin_ack = last.tcp.ack; // B's SND.NXT in TIME-WAIT
    p.advance(Duration::from_secs(1));
    // The client reconnects from the same port: its TS clock has moved on.
    let a_id = p.connect();
    let syn = p.a_sends();
    assert!(syn.tcp.options.timestamps.unwrap().tsval > last.tcp.options.timestamps.unwrap().tsval);
    p.deliver_b(&syn);
    let synack = p.b_sends();
    synack.expect(SYN | ACK, synack.tcp.seq, add(syn.tcp.seq, 1));
    // The new ISN starts well past the old incarnation's sequence space.
    let gap = synack.tcp.seq.wrapping_sub(old_b_fin_ack);
    assert!((65537..1 << 30).contains(&gap), "gap {gap}");
    p.deliver_a(&synack);
    let ack = p.a_sends();
    p.deliver_b(&ack);
    assert_eq!(p.b.stats().time_wait_recycled_passive, 1);
    assert_eq!(p.b.time_wait_count(), 0);
    assert_eq!(p.a.state(a_id), Some(State::Established));
    assert_eq!(
        &p.b_states[p.b_states.len() - 3..],
        &[State::TimeWait, State::SynReceived, State::Established]
    );
}

fn syn_from_a(seq: u32, ts: Option<Timestamps>) -> Seg {
    Seg {
        src: A_IP,
        dst: B_IP,
        tcp: TcpRepr {
            src_port: A_PORT,
            dst_port: B_PORT,
            seq,
            ack: 0,
            flags: SYN,
            window: 65535,
            options: TcpOptions {
                sack: crate::wire::SackBlocks::EMPTY,
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: false,
                timestamps: ts,
            },
        },
        payload: vec![],
    }
}

#[test]
fn syn_with_older_timestamp_gets_the_time_wait_ack() {
    let mut p = Pair::new();
    let last = server_in_time_wait(&mut p);
    let old_ts = last.tcp.options.timestamps.unwrap().tsval;
    // A SYN with a timestamp not newer than the entry's: the old incarnation's.
    let syn = syn_from_a(
        last.tcp.seq.wrapping_add(100_000),
        Some(Timestamps {
            tsval: old_ts.wrapping_sub(1),
            tsecr: 0,
        }),
    );
    p.deliver_b(&syn);
    // RFC 9293 / RFC 5961 4.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> from the entry.
    p.b_sends().expect(ACK, last.tcp.ack, add(last.tcp.seq, 1));
    p.b_silent();
    assert_eq!(p.b.state_of(&p.b_tuple()), State::TimeWait);
    assert_eq!(p.b.stats().time_wait_recycled_passive, 0);
    // An equal timestamp is not newer either.
    p.advance(Duration::from_secs(1));
    let syn = syn_from_a(
        last.tcp.seq,
        Some(Timestamps {
            tsval: old_ts,
            tsecr: 0,
        }),
    );
    p.deliver_b(&syn);
    p.b_sends().expect(ACK, last.tcp.ack, add(last.tcp.seq, 1));
    assert_eq!(p.b.time_wait_count(), 1);
}

#[test]
fn without_timestamps_the_sequence_number_decides() {
    let no_ts = Config {
        timestamps: false,
        ..config()
    };
    let mut p = Pair::with_configs(no_ts.clone(), no_ts);
    let last = server_in_time_wait(&mut p);
    let rcv_nxt = add(last.tcp.seq, 1); // B's RCV.NXT after A's FIN
    // RFC 1122 4.2.2.13: at or below RCV.NXT, refused ...
    let syn = syn_from_a(rcv_nxt, None);
    p.deliver_b(&syn);
    p.b_sends().expect(ACK, last.tcp.ack, rcv_nxt);
    assert_eq!(p.b.time_wait_count(), 1);
    // ... beyond it, a new connection.
    let syn = syn_from_a(add(rcv_nxt, 1), None);
    p.deliver_b(&syn);
    let synack = p.b_sends();
    synack.expect(SYN | ACK, synack.tcp.seq, add(rcv_nxt, 2));
    assert_eq!(p.b.stats().time_wait_recycled_passive, 1);
    assert_eq!(p.b.state_of(&p.b_tuple()), State::SynReceived);
}

/// An A with a two-port range that closes first (so A holds TIME-WAIT).
fn client_with_ports(cfg: Config) -> Pair {
    let cfg = Config {
        port_range: 40000..=40001,
        ..cfg
    };
    Pair::with_configs(cfg, config())
}

fn open_and_close_from_a(p: &mut Pair) -> FourTuple {
    let remote = SocketAddrV4::new(B_IP, B_PORT);
    let id = p.a.connect(A_IP, remote, p.now).unwrap();
    p.drive();
    let tuple = p.a.tuple(id).unwrap();
    p.a.close(id).unwrap();
    p.drive();
    let b_id = p.b.id_of(&FourTuple {
        local: tuple.remote,
        remote: tuple.local,
    });
    p.b.close(b_id.unwrap()).unwrap();
    p.drive();
    assert_eq!(p.a.state_of(&tuple), State::TimeWait);
    p.a_events();
    p.b_events();
    tuple
}

#[test]
fn active_open_reuses_the_oldest_safe_time_wait_tuple() {
    let mut p = client_with_ports(config());
    let t1 = open_and_close_from_a(&mut p);
    p.advance(Duration::from_millis(10));
    let t2 = open_and_close_from_a(&mut p);
    assert_ne!(t1.local.port(), t2.local.port());
    assert_eq!(p.a.time_wait_count(), 2);
    let remote = SocketAddrV4::new(B_IP, B_PORT);
    // Both ports are in TIME-WAIT and younger than reuse_delay: no port, counted.
    assert_eq!(p.a.connect(A_IP, remote, p.now), Err(ConnectError::NoPort));
    assert_eq!(p.a.stats().connect_no_port, 1);
    p.advance(Duration::from_secs(1));
    // Now the oldest (t1) is safe: timestamps, older than 1 s, ISN and TS clock past it.
    let id = p.a.connect(A_IP, remote, p.now).unwrap();
    assert_eq!(p.a.tuple(id), Some(t1));
    assert_eq!(p.a.stats().time_wait_recycled_active, 1);
    assert_eq!(p.a.time_wait_count(), 1);
    // B forgot the tuple long ago (it was the passive closer): the handshake works.
    p.drive();
    assert_eq!(p.a.state(id), Some(State::Established));
}

#[test]
fn active_reuse_is_refused_without_timestamps_or_when_disabled() {
    let mut p = client_with_ports(Config {
        timestamps: false,
        ..config()
    });
    open_and_close_from_a(&mut p);
    open_and_close_from_a(&mut p);
    p.advance(Duration::from_secs(5));
    let remote = SocketAddrV4::new(B_IP, B_PORT);
    assert_eq!(p.a.connect(A_IP, remote, p.now), Err(ConnectError::NoPort));

    let mut p = client_with_ports(Config {
        reuse: false,
        ..config()
    });
    open_and_close_from_a(&mut p);
    open_and_close_from_a(&mut p);
    p.advance(Duration::from_secs(5));
    assert_eq!(p.a.connect(A_IP, remote, p.now), Err(ConnectError::NoPort));
    assert_eq!(p.a.stats().connect_no_port, 1);
    assert_eq!(p.a.stats().time_wait_recycled_active, 0);
    // After 2 MSL the ports are free again.
    p.advance(Duration::from_secs(60));
    assert_eq!(p.a.time_wait_count(), 0);
    assert!(p.a.connect(A_IP, remote, p.now).is_ok());
}

#[test]
fn connect_from_on_a_time_wait_tuple_follows_the_same_rules() {
    let mut p = client_with_ports(config());
    let t1 = open_and_close_from_a(&mut p);
    assert_eq!(
        p.a.connect_from(t1.local, t1.remote, p.now),
        Err(ConnectError::TupleInUse)
    );
    p.advance(Duration::from_secs(2));
    assert!(p.a.connect_from(t1.local, t1.remote, p.now).is_ok());
    assert_eq!(p.a.stats().time_wait_recycled_active, 1);
}

#[test]
fn time_wait_is_bounded_and_drops_the_oldest() {
    let mut p = Pair::with_configs(
        Config {
            max_time_wait: 2,
            ..config()
        },
        config(),
    );
    let t1 = open_and_close_from_a(&mut p);
    let t2 = open_and_close_from_a(&mut p);
    let t3 = open_and_close_from_a(&mut p);
    assert_eq!(p.a.time_wait_count(), 2);
    assert_eq!(p.a.stats().time_wait_dropped_early, 1);
    assert_eq!(p.a.state_of(&t1), State::Closed);
    assert_eq!(p.a.state_of(&t2), State::TimeWait);
    assert_eq!(p.a.state_of(&t3), State::TimeWait);
}

#[test]
fn an_expired_entry_frees_its_tuple() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    p.a.close(a_id).unwrap();
    p.drive();
    p.b.close(b_id).unwrap();
    p.drive();
    assert_eq!(p.a.time_wait_count(), 1);
    p.advance(Duration::from_secs(60));
    assert_eq!(p.a.time_wait_count(), 0);
    assert_eq!(p.a.stats().time_wait_expired, 1);
    assert_eq!(p.a_events(), vec![(a_id, Event::Closed)]);
    // A SYN from B's side of the old tuple now finds nothing: RST.
    let probe = Seg {
        src: B_IP,
        dst: A_IP,
        tcp: TcpRepr {
            src_port: B_PORT,
            dst_port: A_PORT,
            seq: 1,
            ack: 0,
            flags: SYN,
            window: 100,
            options: TcpOptions::default(),
        },
        payload: vec![],
    };
    p.deliver_a(&probe);
    p.a_sends().expect(RST | ACK, 0, 2);
}
