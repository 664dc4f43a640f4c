//! A model-based congestion controller in the manner of BBR (version 1:
//! draft-cardwell-iccrg-bbr-congestion-control-00, and Linux's
//! `net/ipv4/tcp_bbr.c`), selected with `Config::congestion`.
//!
//! Why: a loss-based controller answers every loss by cutting its window,
//! so on a path with random (non-congestive) loss its throughput is bound
//! by the loss rate, not the link: the Mathis et al. response function,
//! MSS/RTT x 1.22/sqrt(p), is 143 Mbit/s at 10 ms and p = 1e-4 whatever the
//! link rate. CUBIC does no better there (RFC 9438 4.3 and 5.1: at such small
//! BDP x p it runs in its Reno-friendly region). BBR instead estimates the
//! path: the bottleneck bandwidth (a windowed maximum of delivery-rate
//! samples over 10 round trips, `rate.rs`, `minmax.rs`) and the round-trip
//! propagation time (the minimum RTT over 10 s), and sends at
//! `pacing_gain x bandwidth` with at most `cwnd_gain x BDP` in flight.
//! Loss does not cut the window; a retransmission timeout does, and during
//! a loss-recovery episode's first round the sender conserves packets.
//!
//! States (draft 4.3): STARTUP (pacing gain 2/ln 2, until the bandwidth
//! grew less than 25% in 3 rounds), DRAIN (the inverse gain until what is
//! in flight is down to one BDP), PROBE_BW (gains cycling 5/4, 3/4, then six
//! rounds of 1), PROBE_RTT (the minimum RTT is 10 s old: 4 segments in
//! flight for 200 ms and a round, then back).
//!
//! Not built (BBR v1 has them, or later versions): the long-term
//! bandwidth model for policers, ACK-aggregation compensation, BBRv2's
//! loss- and ECN-driven bounds on inflight. Everything is integer arithmetic
//! in bytes and microseconds with gains in 1/256 (Linux's BBR_UNIT).

use super::minmax::WindowedMax;
use super::rate::{DeliveryRate, RateSample};
use super::seq::Seq;
use super::time::Instant;
use std::time::Duration;

/// Gains are fixed point: 256 is 1.0.
const UNIT: u64 = 256;
/// draft 4.3.2.1: "BBRHighGain = 2/ln(2)" (2.885), the smallest gain that
/// doubles the sending rate each round.
const HIGH_GAIN: u64 = UNIT * 2885 / 1000 + 1;
/// DRAIN: the inverse of the high gain.
const DRAIN_GAIN: u64 = UNIT * 1000 / 2885;
/// draft 4.3.3.6: "BBRGainCycleLen ... [5/4, 3/4, 1, 1, 1, 1, 1, 1]".
const PACING_GAIN_CYCLE: [u64; 8] = [
    UNIT * 5 / 4,
    UNIT * 3 / 4,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
    UNIT,
];
/// PROBE_BW's cwnd gain: two BDPs in flight, room for delayed and
/// aggregated ACKs.
const CWND_GAIN: u64 = UNIT * 2;
/// draft 4.1.1.1: "BtlBwFilterLen ... 10 packet-timed round trips".
const BW_FILTER_ROUNDS: u64 = 10;
/// draft 4.1.2.1: "RTpropFilterLen ... 10 seconds".
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// draft 4.3.4: "ProbeRTTDuration ... 200 milliseconds".
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// draft 4.3.2.2: a full pipe is a bandwidth that grew less than 25% ...
const FULL_BW_THRESH: u64 = UNIT * 5 / 4;
/// ... in 3 consecutive rounds.
const FULL_BW_ROUNDS: u8 = 3;
/// Linux's bbr_pacing_margin_percent: pace 1% below the estimate, so the
/// bottleneck queue drains rather than sits.
const PACING_MARGIN_PERCENT: u64 = 1;
/// draft 4.2.3.2: "BBRMinPipeCwnd ... 4 packets".
const MIN_PIPE_SEGMENTS: u32 = 4;
/// The largest burst pacing lets out at once (Linux's TSO autosizing cap).
const MAX_QUANTUM: u64 = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// Where the connection's loss recovery is, as the ACK path reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Open,
    /// Fast recovery (duplicate ACKs, SACK or RACK).
    Recovery,
    /// After a retransmission timeout, until SND.UNA passes `recover`.
    Loss,
}

/// What the connection tells the model about one acceptable ACK.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckInfo {
    pub(crate) old_una: Seq,
    pub(crate) una: Seq,
    /// Bytes SACKed above `una` (the scoreboard's count).
    pub(crate) sacked: u32,
    /// The highest right edge among this ACK's SACK blocks.
    pub(crate) sack_high: Option<Seq>,
    /// Bytes in flight after the ACK (RFC 6675 pipe).
    pub(crate) pipe: u32,
    /// Bytes deemed lost and not resent: outstanding less SACKed less pipe.
    pub(crate) unrepaired: u32,
    /// The connection is in fast recovery.
    pub(crate) in_recovery: bool,
    /// A recovery point (`recover`) is still ahead of SND.UNA.
    pub(crate) recover_ahead: bool,
    pub(crate) mss: u32,
}

/// The model and its outputs (cwnd, pacing rate) for one connection.
#[derive(Debug)]
pub(crate) struct Bbr {
    rate: DeliveryRate,
    mode: Mode,
    phase: Phase,
    /// Bottleneck bandwidth, bytes per second, windowed over rounds.
    bw: WindowedMax,
    min_rtt_us: Option<u64>,
    min_rtt_stamp: Instant,
    round_count: u64,
    next_round_delivered: u64,
    round_start: bool,
    full_bw: u64,
    full_bw_count: u8,
    filled_pipe: bool,
    cycle_index: usize,
    cycle_stamp: Instant,
    probe_rtt_done: Option<Instant>,
    probe_rtt_round_done: bool,
    /// cwnd before recovery, a timeout or PROBE_RTT, restored after.
    prior_cwnd: u32,
    packet_conservation: bool,
    idle_restart: bool,
    pacing_gain: u64,
    cwnd_gain: u64,
    initial_cwnd: u32,
    /// The congestion window, bytes: the connection's `cc.cwnd` follows it.
    pub(crate) cwnd: u32,
    /// Bytes per second; 0 until the first RTT is known.
    pacing_rate: u64,
    /// Pacing: when the next segment may leave, nanoseconds of `Instant`.
    next_send_ns: u64,
    /// A send was held back by pacing until then: the connection's timer.
    held_until: Option<Instant>,
    /// Drawn from the connection's ISS (the engine draws no randomness).
    seed: u32,
    /// `AckInfo::unrepaired` as of the last event, less what was resent
    /// since: what the next ACK adds to it was newly found lost.
    unrepaired: i64,
}

impl Bbr {
    /// `initial_cwnd`: RFC 6928's IW in bytes. `seed`: any per-connection
    /// value, to start PROBE_BW at a varying phase (the ISS).
    pub(crate) fn new(initial_cwnd: u32, seed: u32) -> Self {
        Bbr {
            rate: DeliveryRate::default(),
            mode: Mode::Startup,
            phase: Phase::Open,
            bw: WindowedMax::default(),
            min_rtt_us: None,
            min_rtt_stamp: Instant::ZERO,
            round_count: 0,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0,
            full_bw_count: 0,
            filled_pipe: false,
            cycle_index: 0,
            cycle_stamp: Instant::ZERO,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            packet_conservation: false,
            idle_restart: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            initial_cwnd,
            cwnd: initial_cwnd,
            pacing_rate: 0,
            next_send_ns: 0,
            held_until: None,
            seed,
            unrepaired: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    #[cfg(test)]
    pub(crate) fn bandwidth(&self) -> u64 {
        self.bw.get()
    }

    #[cfg(test)]
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt_us.map(Duration::from_micros)
    }

    #[cfg(test)]
    pub(crate) fn pacing_rate(&self) -> u64 {
        self.pacing_rate
    }

    // ---- pacing ----

    /// May a new segment leave now? If not, the connection's timer is set
    /// to when it may (`pacing_deadline`).
    pub(crate) fn may_send(&mut self, now: Instant) -> bool {
        let now_ns = now.as_micros() * 1000;
        if self.pacing_rate == 0 || self.next_send_ns <= now_ns {
            return true;
        }
        self.held_until = Some(Instant::from_micros(self.next_send_ns.div_ceil(1000)));
        false
    }

    /// The instant a held-back send may go, while one is held back.
    pub(crate) fn pacing_deadline(&self) -> Option<Instant> {
        self.held_until
    }

    /// The connection's timers ran at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if self.held_until.is_some_and(|t| t <= now) {
            self.held_until = None;
        }
    }

    /// The largest burst pacing lets out at once: about 1 ms at the
    /// pacing rate, 2 segments to 64 KiB (Linux's `bbr_tso_segs_goal`).
    fn send_quantum(&self, mss: u32) -> u64 {
        (self.pacing_rate >> 10).clamp(2 * u64::from(mss), MAX_QUANTUM)
    }

    // ---- the sender's events ----

    /// Segment `[start, end)` leaves now (new data or a retransmission);
    /// `pipe`: bytes in flight before it.
    pub(crate) fn on_sent(
        &mut self,
        start: Seq,
        end: Seq,
        pipe: u32,
        retransmission: bool,
        now: Instant,
        mss: u32,
    ) {
        if retransmission {
            self.unrepaired -= i64::from(end - start);
        }
        if pipe == 0 && self.rate.app_limited() {
            // Linux's CA_EVENT_TX_START after idle: restart at the
            // estimated rate, not a probing gain.
            self.idle_restart = true;
            if self.mode == Mode::ProbeBw {
                self.set_pacing_rate(UNIT);
            }
        }
        self.rate.on_sent(start, end, pipe, now);
        // Pacing off (rate 0) until the first ACK sets a rate.
        if let Some(quantum_ns) =
            (self.send_quantum(mss) * 1_000_000_000).checked_div(self.pacing_rate)
        {
            let now_ns = now.as_micros() * 1000;
            // Up to a quantum of credit after a pause, then one segment's
            // serialisation time at the pacing rate per segment.
            let from = self.next_send_ns.max(now_ns.saturating_sub(quantum_ns));
            let len = u64::from(end - start);
            self.next_send_ns = from + len * 1_000_000_000 / self.pacing_rate;
        }
        self.held_until = None;
    }

    /// The application has less than a segment to send while cwnd has room.
    pub(crate) fn on_app_limited(&mut self, pipe: u32) {
        self.rate.mark_app_limited(pipe);
    }

    /// draft 4.2.3.4 and Linux's `bbr_save_cwnd`: the cwnd to go back to.
    fn save_cwnd(&mut self) {
        self.prior_cwnd = if self.phase == Phase::Open && self.mode != Mode::ProbeRtt {
            self.cwnd
        } else {
            self.prior_cwnd.max(self.cwnd)
        };
    }

    /// A retransmission timeout (RFC 6298 5.5): the one event that cuts
    /// cwnd, to one segment (RFC 5681 3.1); it grows back by what each ACK
    /// delivers up to the model's target, and is restored when the loss
    /// episode ends (Linux: tcp_enter_loss, then `bbr_set_cwnd`).
    pub(crate) fn on_rto(&mut self, mss: u32) {
        self.save_cwnd();
        self.phase = Phase::Loss;
        self.packet_conservation = false;
        // Linux's bbr_set_state(TCP_CA_Loss): the bandwidth may have fallen;
        // start the full-pipe count over and let the next ACK start a round.
        self.full_bw = 0;
        self.round_start = true;
        self.cwnd = mss;
    }

    /// One acceptable ACK. Returns the new cwnd.
    pub(crate) fn on_ack(&mut self, ack: &AckInfo, now: Instant, srtt: Option<Duration>) -> u32 {
        let mss = ack.mss;
        if self.pacing_rate == 0 {
            // draft 4.2.1 BBRInitPacingRate: high_gain x IW / SRTT (1 ms
            // before a measurement).
            let rtt_us = srtt.map_or(1000, |d| d.as_micros().max(1) as u64);
            self.pacing_rate = HIGH_GAIN * u64::from(self.initial_cwnd) * 1_000_000 / rtt_us / UNIT;
        }
        let sample = self
            .rate
            .on_ack(ack.old_una, ack.una, ack.sacked, ack.sack_high, now);
        let newly = self.newly_delivered(ack);
        let lost =
            (i64::from(ack.unrepaired) - self.unrepaired).clamp(0, i64::from(u32::MAX)) as u32;
        self.unrepaired = i64::from(ack.unrepaired);
        self.update_model(sample.as_ref(), ack, now);
        self.set_pacing_rate(self.pacing_gain);
        self.set_cwnd(ack, newly, lost, mss);
        self.cwnd
    }

    /// Bytes this ACK acknowledged cumulatively (SACKed bytes are counted
    /// by the estimator, not here: packet conservation releases what left
    /// the network by SND.UNA, as Linux's `acked`).
    fn newly_delivered(&self, ack: &AckInfo) -> u32 {
        ack.una - ack.old_una
    }

    fn bdp(&self, gain: u64) -> u64 {
        let Some(rtt) = self.min_rtt_us else {
            // No RTT yet: the initial window (draft 4.2.3.2).
            return u64::from(self.initial_cwnd);
        };
        let bdp = u128::from(self.bw.get()) * u128::from(rtt) / 1_000_000;
        (bdp * u128::from(gain) / u128::from(UNIT)) as u64
    }

    fn set_pacing_rate(&mut self, gain: u64) {
        let bw = self.bw.get();
        if bw == 0 {
            return;
        }
        let rate = bw * gain / UNIT * (100 - PACING_MARGIN_PERCENT) / 100;
        // draft 4.2.1: "if (BBR.filled_pipe || rate > BBR.pacing_rate)".
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    // ---- the model (draft 4.1, 4.3) ----

    fn update_model(&mut self, rs: Option<&RateSample>, ack: &AckInfo, now: Instant) {
        self.update_bw(rs);
        self.update_cycle_phase(ack, now);
        self.check_full_pipe(rs);
        self.check_drain(ack, now);
        self.update_min_rtt(rs, ack, now);
    }

    /// draft 4.1.1.5 BBRUpdateBtlBw, with its round counting (4.1.1.3).
    fn update_bw(&mut self, rs: Option<&RateSample>) {
        self.round_start = false;
        let Some(rs) = rs else {
            return;
        };
        if rs.prior_delivered >= self.next_round_delivered {
            self.next_round_delivered = self.rate.delivered();
            self.round_count += 1;
            self.round_start = true;
            // Linux: packet conservation lasts the first round of recovery.
            self.packet_conservation = false;
        }
        // draft 4.1.1.5: "if (rs.delivery_rate >= BBR.BtlBw || !
        // rs.is_app_limited)": an app-limited sample may only raise it.
        if let Some(bw) = rs.bytes_per_sec()
            && (!rs.app_limited || bw >= self.bw.get())
        {
            self.bw.update(BW_FILTER_ROUNDS, self.round_count, bw);
        }
    }

    /// draft 4.3.3.6 BBRUpdateGainCyclePhase / BBRIsNextCyclePhase.
    fn update_cycle_phase(&mut self, ack: &AckInfo, now: Instant) {
        if self.mode != Mode::ProbeBw {
            return;
        }
        let full_length = self.min_rtt_us.is_some_and(|rtt| {
            now.saturating_duration_since(self.cycle_stamp).as_micros() as u64 > rtt
        });
        // Bytes in flight before this ACK was processed.
        let prior_inflight = u64::from(ack.pipe) + u64::from(self.newly_delivered(ack));
        let gain = self.pacing_gain;
        let next = if gain == UNIT {
            full_length
        } else if gain > UNIT {
            // Probing: until inflight reached gain x BDP (or loss is seen:
            // the phase ends at its full length anyway).
            full_length && (ack.in_recovery || prior_inflight >= self.bdp(gain))
        } else {
            // Draining the probe's queue: as soon as inflight is one BDP.
            full_length || prior_inflight <= self.bdp(UNIT)
        };
        if next {
            self.cycle_index = (self.cycle_index + 1) % PACING_GAIN_CYCLE.len();
            self.cycle_stamp = now;
            self.pacing_gain = PACING_GAIN_CYCLE[self.cycle_index];
        }
    }

    /// draft 4.3.2.2 BBRCheckFullPipe.
    fn check_full_pipe(&mut self, rs: Option<&RateSample>) {
        if self.filled_pipe || !self.round_start || rs.is_none_or(|r| r.app_limited) {
            return;
        }
        let bw = self.bw.get();
        if bw >= self.full_bw * FULL_BW_THRESH / UNIT {
            self.full_bw = bw;
            self.full_bw_count = 0;
            return;
        }
        self.full_bw_count += 1;
        self.filled_pipe = self.full_bw_count >= FULL_BW_ROUNDS;
    }

    /// draft 4.3.3 BBRCheckDrain: STARTUP -> DRAIN -> PROBE_BW.
    fn check_drain(&mut self, ack: &AckInfo, now: Instant) {
        if self.mode == Mode::Startup && self.filled_pipe {
            self.mode = Mode::Drain;
            self.pacing_gain = DRAIN_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == Mode::Drain && u64::from(ack.pipe) <= self.bdp(UNIT) {
            self.enter_probe_bw(now);
        }
    }

    /// draft 4.3.3.5 BBREnterProbeBW: a phase drawn at random, never the
    /// draining one (index 1), so flows do not probe in step.
    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        // Linux: CYCLE_LEN - 1 - prandom_u32_max(bbr_cycle_rand = 7): 0 or 2..7.
        let r = (self.seed.wrapping_add(self.round_count as u32) % 7) as usize;
        self.cycle_index = PACING_GAIN_CYCLE.len() - 1 - r;
        self.cycle_stamp = now;
        self.pacing_gain = PACING_GAIN_CYCLE[self.cycle_index];
    }

    /// draft 4.1.2.3 BBRUpdateRTprop and 4.3.4.4 BBRCheckProbeRTT.
    fn update_min_rtt(&mut self, rs: Option<&RateSample>, ack: &AckInfo, now: Instant) {
        let expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        if let Some(rtt) = rs.and_then(|r| r.rtt_us)
            && (self.min_rtt_us.is_none_or(|m| rtt <= m) || expired)
        {
            self.min_rtt_us = Some(rtt);
            self.min_rtt_stamp = now;
        }
        let mss = ack.mss;
        if expired && !self.idle_restart && self.mode != Mode::ProbeRtt && self.min_rtt_us.is_some()
        {
            // "BBREnterProbeRTT": hold 4 segments in flight to see the
            // path's own RTT without our queue in it.
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = UNIT;
            self.cwnd_gain = UNIT;
            self.save_cwnd();
            self.probe_rtt_done = None;
        }
        if self.mode == Mode::ProbeRtt {
            // Samples taken while the window is held low are not the path's.
            self.rate.mark_app_limited(ack.pipe);
            match self.probe_rtt_done {
                None if ack.pipe <= MIN_PIPE_SEGMENTS * mss => {
                    self.probe_rtt_done = Some(now + PROBE_RTT_DURATION);
                    self.probe_rtt_round_done = false;
                    self.next_round_delivered = self.rate.delivered();
                }
                Some(done) => {
                    if self.round_start {
                        self.probe_rtt_round_done = true;
                    }
                    if self.probe_rtt_round_done && now >= done {
                        // BBRExitProbeRTT.
                        self.min_rtt_stamp = now;
                        self.cwnd = self.cwnd.max(self.prior_cwnd);
                        if self.filled_pipe {
                            self.enter_probe_bw(now);
                        } else {
                            self.mode = Mode::Startup;
                            self.pacing_gain = HIGH_GAIN;
                            self.cwnd_gain = HIGH_GAIN;
                        }
                    }
                }
                None => {}
            }
        }
        if rs.is_some_and(|r| r.delivered > 0) {
            self.idle_restart = false;
        }
    }

    // ---- cwnd (draft 4.2.3) ----

    /// Linux's `bbr_set_cwnd_to_recover_or_restore` then `bbr_set_cwnd`:
    /// packet conservation in the first round of recovery, the saved cwnd
    /// back after it, else grow by what was delivered toward
    /// `cwnd_gain x BDP` plus room for pacing bursts.
    fn set_cwnd(&mut self, ack: &AckInfo, acked: u32, lost: u32, mss: u32) {
        let now_phase = if ack.in_recovery {
            Phase::Recovery
        } else if self.phase == Phase::Loss && ack.recover_ahead {
            Phase::Loss
        } else {
            Phase::Open
        };
        let inflight = ack.pipe;
        let mut cwnd = self.cwnd;
        if lost > 0 {
            // Linux: "An ACK for P pkts should release at most 2*P packets.
            // We do this in two steps. First, here we deduct the number of
            // lost packets. Then ... we slow start up toward the target
            // cwnd." Not a multiplicative cut: what left the network by
            // being dropped is not sent again on top of what is in flight.
            cwnd = cwnd.saturating_sub(lost).max(mss);
        }
        if now_phase == Phase::Recovery && self.phase != Phase::Recovery {
            // draft 4.2.3.4: "upon entering Fast Recovery, set cwnd to the
            // number of packets still in flight (allowing at least one for
            // a fast retransmit)"; packet conservation for one round.
            self.save_cwnd();
            self.packet_conservation = true;
            self.next_round_delivered = self.rate.delivered();
            cwnd = inflight.saturating_add(acked.max(mss));
        } else if now_phase == Phase::Open && self.phase != Phase::Open {
            // "Upon exiting loss recovery, restore the cwnd".
            cwnd = cwnd.max(self.prior_cwnd);
            self.packet_conservation = false;
        }
        self.phase = now_phase;
        if self.packet_conservation {
            cwnd = cwnd.max(inflight.saturating_add(acked));
        } else if acked > 0 || self.filled_pipe {
            let target = self.bdp(self.cwnd_gain)
                + 3 * self.send_quantum(mss)
                + if self.mode == Mode::ProbeBw && self.cycle_index == 0 {
                    // Linux: room for the probing phase's extra segments.
                    2 * u64::from(mss)
                } else {
                    0
                };
            let target = target.min(u64::from(u32::MAX)) as u32;
            let grown = cwnd.saturating_add(acked);
            cwnd = if self.filled_pipe {
                grown.min(target)
            } else if cwnd < target || self.rate.delivered() < u64::from(self.initial_cwnd) {
                grown
            } else {
                cwnd
            };
        }
        cwnd = cwnd.max(MIN_PIPE_SEGMENTS * mss);
        if self.mode == Mode::ProbeRtt {
            cwnd = cwnd.min(MIN_PIPE_SEGMENTS * mss);
        }
        self.cwnd = cwnd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    /// A fluid path for the model alone: `rate` bytes/s, `rtt` round trip,
    /// the sender always cwnd- and pacing-limited, every segment ACKed one
    /// RTT after it left (no queue: the path is never overfilled, or the
    /// excess waits in a FIFO at `rate`).
    struct Path {
        bbr: Bbr,
        now_us: u64,
        /// (ack time, end seq), in order.
        flight: std::collections::VecDeque<(u64, Seq)>,
        nxt: Seq,
        una: Seq,
        link_free_us: u64,
        rate: u64,
        rtt_us: u64,
    }

    impl Path {
        fn new(rate: u64, rtt_us: u64) -> Self {
            Path {
                bbr: Bbr::new(10 * MSS, 7),
                now_us: 20_000_000,
                flight: Default::default(),
                nxt: Seq(1),
                una: Seq(1),
                link_free_us: 0,
                rate,
                rtt_us,
            }
        }

        fn now(&self) -> Instant {
            Instant::from_micros(self.now_us)
        }

        /// Run for `us` of simulated time in 10 us steps.
        fn run(&mut self, us: u64) {
            let end = self.now_us + us;
            while self.now_us < end {
                while let Some(&(at, seq)) = self.flight.front() {
                    if at > self.now_us {
                        break;
                    }
                    self.flight.pop_front();
                    let pipe = self.nxt - seq;
                    let info = AckInfo {
                        old_una: self.una,
                        una: seq,
                        sacked: 0,
                        sack_high: None,
                        pipe,
                        unrepaired: 0,
                        in_recovery: false,
                        recover_ahead: false,
                        mss: MSS,
                    };
                    self.una = seq;
                    let now = self.now();
                    self.bbr
                        .on_ack(&info, now, Some(Duration::from_micros(self.rtt_us)));
                }
                loop {
                    let pipe = self.nxt - self.una;
                    let now = self.now();
                    if pipe + MSS > self.bbr.cwnd || !self.bbr.may_send(now) {
                        break;
                    }
                    self.bbr
                        .on_sent(self.nxt, self.nxt + MSS, pipe, false, now, MSS);
                    self.nxt += MSS;
                    // Serialisation at the bottleneck, then the propagation delay.
                    let ser = u64::from(MSS) * 1_000_000 / self.rate;
                    self.link_free_us = self.link_free_us.max(self.now_us) + ser;
                    self.flight
                        .push_back((self.link_free_us + self.rtt_us, self.nxt));
                }
                self.now_us += 10;
            }
        }
    }

    #[test]
    fn startup_finds_the_bandwidth_then_probe_bw_holds_about_one_bdp() {
        // 12.5 MB/s (100 Mbit/s), 20 ms: a BDP of 250 kB.
        let mut p = Path::new(12_500_000, 20_000);
        p.run(2_000_000);
        let bw = p.bbr.bandwidth();
        assert!(
            (11_000_000..=13_000_000).contains(&bw),
            "bandwidth estimate {bw} B/s for a 12.5 MB/s path"
        );
        assert_eq!(p.bbr.mode(), Mode::ProbeBw);
        let rtt = p.bbr.min_rtt().unwrap().as_micros() as u64;
        assert!((20_000..21_000).contains(&rtt), "min RTT {rtt} us");
        // cwnd: 2 BDP plus the quantum budget, not the unbounded growth of
        // a loss-free Reno.
        let bdp = 250_000;
        assert!(
            p.bbr.cwnd >= 2 * bdp && p.bbr.cwnd < 3 * bdp,
            "cwnd {}",
            p.bbr.cwnd
        );
        // The pacing rate is the estimate times the current gain (0.75 to
        // 1.25), less the margin.
        let pace = p.bbr.pacing_rate();
        assert!(
            pace >= bw * 70 / 100 && pace <= bw * 125 / 100,
            "pacing {pace} for {bw}"
        );
    }

    #[test]
    fn probe_rtt_after_ten_seconds_holds_four_segments_then_returns() {
        let mut p = Path::new(12_500_000, 20_000);
        p.run(1_000_000);
        assert_eq!(p.bbr.mode(), Mode::ProbeBw);
        let before = p.bbr.cwnd;
        // RTT samples equal to the minimum refresh its stamp (draft: "<="),
        // so a queue-free path would never probe: age it by hand.
        p.bbr.min_rtt_stamp = p.now() - Duration::from_secs(11);
        p.run(30_000);
        assert_eq!(p.bbr.mode(), Mode::ProbeRtt);
        assert_eq!(p.bbr.cwnd, 4 * MSS);
        // 200 ms and a round later it is back, with the cwnd it had.
        p.run(300_000);
        assert_eq!(p.bbr.mode(), Mode::ProbeBw);
        assert!(
            p.bbr.cwnd >= before * 9 / 10,
            "{} after, {before} before",
            p.bbr.cwnd
        );
    }

    #[test]
    fn recovery_conserves_packets_and_a_timeout_cuts_to_one_segment() {
        let mut p = Path::new(12_500_000, 20_000);
        p.run(1_000_000);
        let cwnd = p.bbr.cwnd;
        let info = |pipe, in_recovery, recover_ahead| AckInfo {
            old_una: Seq(1),
            una: Seq(1),
            sacked: 0,
            sack_high: None,
            pipe,
            unrepaired: 0,
            in_recovery,
            recover_ahead,
            mss: MSS,
        };
        let now = p.now();
        // Entering recovery with 100 segments in flight: cwnd = pipe + 1 MSS,
        // then never below pipe + acked for the round.
        let c = p.bbr.on_ack(&info(100 * MSS, true, true), now, None);
        assert_eq!(c, 101 * MSS);
        let c = p.bbr.on_ack(&info(120 * MSS, true, true), now, None);
        assert_eq!(c, 120 * MSS);
        // Recovery over: the cwnd from before comes back. A loss is not a cut.
        let c = p.bbr.on_ack(&info(50 * MSS, false, false), now, None);
        assert!(c >= cwnd, "{c} < {cwnd}");
        // A timeout: one segment, restored once the episode ends.
        p.bbr.on_rto(MSS);
        assert_eq!(p.bbr.cwnd, MSS);
        let c = p.bbr.on_ack(&info(0, false, true), now, None);
        assert_eq!(
            c,
            4 * MSS,
            "the 4-segment floor while the timeout's episode lasts"
        );
        let c = p.bbr.on_ack(&info(0, false, false), now, None);
        assert!(c >= cwnd);
    }

    #[test]
    fn pacing_spaces_segments_at_the_pacing_rate() {
        let mut b = Bbr::new(10 * MSS, 1);
        b.pacing_rate = 1_000_000; // 1 MB/s: 1 ms per 1000-byte segment
        let t0 = Instant::from_secs(5);
        // A quantum (2 segments at this rate) of credit, then 1 ms each.
        let mut sent = 0;
        let mut nxt = Seq(1);
        for us in (0..10_000).step_by(50) {
            let now = t0 + Duration::from_micros(us);
            if b.may_send(now) {
                b.on_sent(nxt, nxt + MSS, MSS, false, now, MSS);
                nxt += MSS;
                sent += 1;
            } else {
                assert!(b.pacing_deadline().is_some_and(|t| t > now));
            }
        }
        assert!(
            (11..=13).contains(&sent),
            "{sent} segments in 10 ms at 1 MB/s"
        );
    }
}
