//! The per-core loop: one shard owns one queue's AF_XDP socket and UMEM.
//!
//! Run to completion: receive a batch, parse, answer, transmit the batch,
//! then sleep briefly only when nothing happened for a while.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::metrics::ShardMetrics;
use crate::wire::{self, FrameMeta, MAX_HEADER_LEN, ParsedFrame, TcpFlags};
use crate::xsk::XskSocket;

/// Everything a shard thread owns.
pub struct Shard {
    pub id: usize,
    pub xsk: XskSocket,
    pub local_mac: [u8; 6],
    pub local_ip: std::net::Ipv4Addr,
    pub metrics: Arc<ShardMetrics>,
    pub stop: Arc<AtomicBool>,
    pub core: Option<core_affinity::CoreId>,
}

/// Idle passes of busy polling before the loop sleeps in poll(2).
const SPIN_BEFORE_SLEEP: u32 = 256;

impl Shard {
    pub fn run(mut self) {
        if let Some(core) = self.core
            && !core_affinity::set_for_current(core)
        {
            tracing::warn!(shard = self.id, ?core, "could not pin shard thread");
        }
        let mut idle = 0u32;
        let mut last_stats = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let got = self.poll_once();
            if got == 0 {
                idle += 1;
                if idle > SPIN_BEFORE_SLEEP {
                    self.xsk.wait(1);
                }
            } else {
                idle = 0;
            }
            if last_stats.elapsed().as_millis() >= 100 {
                self.publish_stats();
                last_stats = Instant::now();
            }
        }
        self.xsk.flush();
        self.publish_stats();
    }

    /// One pass: receive, answer, transmit. Returns frames received.
    fn poll_once(&mut self) -> usize {
        let Shard {
            xsk,
            metrics,
            local_mac,
            local_ip,
            ..
        } = self;
        // Replies are built after the rx batch is done with its frames, so
        // collect the few fields a reply needs first; no allocation.
        let mut replies = [None::<(FrameMeta, wire::TcpRepr)>; 64];
        let mut n_replies = 0;
        let got = xsk.recv_batch(|frame| match wire::parse_frame(frame) {
            Err(reason) => metrics.dropped(reason),
            Ok(p) => {
                if p.meta.dst_ip != *local_ip {
                    ShardMetrics::add(&metrics.rx_not_local, 1);
                } else if let Some(reply) = closed_port_reply(&p, *local_mac) {
                    if n_replies < replies.len() {
                        replies[n_replies] = Some(reply);
                        n_replies += 1;
                    }
                } else {
                    ShardMetrics::add(&metrics.rx_rst_closed, 1);
                }
            }
        });
        ShardMetrics::add(&metrics.rx_packets, got as u64);
        for (meta, tcp) in replies[..n_replies].iter().flatten() {
            let sent =
                xsk.send_with(|buf| wire::build_frame(buf, meta, tcp, MAX_HEADER_LEN, 0).ok());
            if sent {
                ShardMetrics::add(&metrics.rst_sent, 1);
            } else {
                ShardMetrics::add(&metrics.tx_no_frame, 1);
            }
        }
        xsk.flush();
        got
    }

    fn publish_stats(&self) {
        let s = self.xsk.stats();
        ShardMetrics::set(&self.metrics.tx_packets, s.tx_frames);
        if let Ok(x) = self.xsk.xdp_statistics() {
            ShardMetrics::set(&self.metrics.rx_ring_full, x.rx_ring_full());
            ShardMetrics::set(&self.metrics.rx_no_frame, x.rx_fill_ring_empty_descs());
        }
    }
}

/// The RST a closed port owes (RFC 9293 3.10.7.1), with addresses swapped.
fn closed_port_reply(
    p: &ParsedFrame<'_>,
    local_mac: [u8; 6],
) -> Option<(FrameMeta, wire::TcpRepr)> {
    if p.tcp.flags.contains(TcpFlags::RST) {
        return None;
    }
    let tcp = crate::tcp::reset_for(&p.tcp, p.payload.len())?;
    let meta = FrameMeta {
        src_mac: local_mac,
        dst_mac: p.meta.src_mac,
        src_ip: p.meta.dst_ip,
        dst_ip: p.meta.src_ip,
    };
    Some((meta, tcp))
}
