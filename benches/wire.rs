//! Per-packet costs of the wire layer: checksum, parse and build.
//!
//! `cargo bench --bench wire`. The checksum group also times a plain
//! 16-bit-at-a-time loop (RFC 1071's reference shape) so the gain of the
//! 8-byte accumulator in `wire::checksum::sum` stays visible.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use turnstile::wire::{
    FrameMeta, MAX_HEADER_LEN, TcpFlags, TcpOptions, TcpRepr, Timestamps, build_frame, checksum,
    parse_frame,
};

fn reference_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const META: FrameMeta = FrameMeta {
    src_mac: [2, 0, 0, 0, 0, 1],
    dst_mac: [2, 0, 0, 0, 0, 2],
    src_ip: Ipv4Addr::new(198, 18, 0, 1),
    dst_ip: Ipv4Addr::new(198, 18, 0, 2),
};

const DATA: TcpRepr = TcpRepr {
    src_port: 40000,
    dst_port: 80,
    seq: 1,
    ack: 2,
    flags: TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0),
    window: 512,
    options: TcpOptions {
        sack: turnstile::wire::SackBlocks::EMPTY,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: Some(Timestamps { tsval: 3, tsecr: 4 }),
    },
};

fn checksums(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for len in [64usize, 1460] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("fast/{len}"), |b| {
            b.iter(|| checksum::checksum(black_box(&data)))
        });
        group.bench_function(format!("reference/{len}"), |b| {
            b.iter(|| reference_checksum(black_box(&data)))
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for payload_len in [0usize, 1448] {
        let mut buf = vec![0u8; 2048];
        let len = build_frame(&mut buf, &META, &DATA, MAX_HEADER_LEN, payload_len).unwrap();
        let frame = buf[..len].to_vec();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("parse/{payload_len}"), |b| {
            b.iter(|| parse_frame(black_box(&frame)).unwrap().payload.len())
        });
        group.bench_function(format!("build/{payload_len}"), |b| {
            // Payload already right after the headers: no move, as when the
            // engine knows the options before the application writes.
            b.iter(|| build_frame(black_box(&mut buf), &META, &DATA, 66, payload_len).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, checksums, frames);
criterion_main!(benches);
