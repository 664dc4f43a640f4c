//! Counters of one endpoint (one shard), read by metrics.

/// Monotonic counters. Plain `u64`s: an endpoint is owned by one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Passive opens completed (Accepted events).
    pub accepted: u64,
    /// Active opens started (connect calls that returned an id).
    pub opened: u64,
    /// Active opens completed (Connected events).
    pub connected: u64,
    pub connect_no_port: u64,
    pub connect_timeout: u64,
    pub connect_refused: u64,
    /// Established connections that timed out (data or FIN retransmissions exhausted).
    pub timeouts: u64,
    pub time_wait_entered: u64,
    pub time_wait_expired: u64,
    /// TIME_WAIT entries dropped before 2MSL because `max_time_wait` was reached.
    pub time_wait_dropped_early: u64,
    pub time_wait_recycled_passive: u64,
    pub time_wait_recycled_active: u64,
    /// Retransmitted FINs answered from a TIME_WAIT entry.
    pub time_wait_fin_reacked: u64,
    pub segments_received: u64,
    pub segments_sent: u64,
    pub retransmits: u64,
    /// Payload bytes in retransmitted segments.
    pub retransmitted_bytes: u64,
    /// Loss recovery episodes entered (fast retransmit; with SACK, RFC 6675 recovery).
    pub fast_retransmits: u64,
    /// Tail loss probes sent (RFC 8985 7).
    pub tlp_probes: u64,
    /// RACK reordering timers that found a hole lost (RFC 8985 6.3).
    pub rack_reorder_timeouts: u64,
    /// Retransmissions RACK found lost because later data arrived first.
    pub rack_lost_retransmits: u64,
    /// Received SACK blocks ignored (outside SND.UNA..SND.MAX, D-SACK, no room).
    pub sack_blocks_ignored: u64,
    pub rto_expirations: u64,
    /// Retransmission timeouts of data or FIN by the sender's state at
    /// expiry (the first that applies; with the handshake's they sum to
    /// `rto_expirations`): the previous timeout's retransmission was lost,
    pub rto_repeated: u64,
    /// SND.UNA's segment had been resent by loss recovery and that was lost,
    pub rto_lost_rexmit: u64,
    /// in loss recovery, SND.UNA's segment not resent yet,
    pub rto_in_recovery: u64,
    /// the last segment sent was a tail loss probe,
    pub rto_after_probe: u64,
    /// data above SND.UNA was SACKed but recovery had not begun,
    pub rto_sacked: u64,
    /// nothing SACKed, no probe sent,
    pub rto_tail: u64,
    /// SYN or SYN+ACK.
    pub rto_handshake: u64,
    /// RFC 1122 4.2.3.6 keepalive probes sent.
    pub keepalive_probes: u64,
    /// Connections reset because their peer answered no keepalive probe.
    pub keepalive_timeouts: u64,
    pub rst_sent: u64,
    /// RSTs answering a segment of a flow this endpoint has no state for
    /// (an ACK reaching LISTEN: after an ECMP change, another instance's
    /// established flow). RFC 9293 3.10.7.2.
    pub rst_unknown_flow: u64,
    pub rst_received: u64,
    pub challenge_acks: u64,
    pub challenge_acks_suppressed: u64,
    pub syn_cookies_sent: u64,
    pub syn_cookies_accepted: u64,
    pub syn_cookies_rejected: u64,
    pub syn_queue_overflow: u64,
    /// Bare ACKs to a listener that did not overflow lately: cookies are not
    /// even checked (answered with a RST, as Linux does).
    pub syn_cookies_no_overflow: u64,
    /// SYNs dropped because the endpoint or the listener holds its
    /// `max_connections`.
    pub syn_dropped_max_connections: u64,
    pub accept_queue_overflow: u64,
    /// Times receive-buffer autotuning grew a connection's bound.
    pub recv_buffer_grown: u64,
    /// Segments dropped, by reason.
    pub dropped_segments: u64,
    pub drop_malformed: u64,
    pub drop_paws: u64,
    pub drop_out_of_window: u64,
    pub drop_bad_ack: u64,
    pub drop_no_listener: u64,
    pub drop_time_wait: u64,
    pub drop_out_of_order_full: u64,
    pub drop_control_queue_full: u64,
    /// ICMP "fragmentation needed" that lowered a connection's MSS (RFC 1191).
    pub pmtu_lowered: u64,
    /// ... ignored: its quoted sequence number was not in flight (RFC 5927 4.1).
    pub icmp_not_in_flight: u64,
    /// ... ignored: the reported MTU was not below the one in use.
    pub icmp_not_lower: u64,
    /// ... ignored: it quoted no connection of ours.
    pub icmp_unknown_flow: u64,
}
