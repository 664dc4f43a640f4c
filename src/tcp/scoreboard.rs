//! The sender's SACK scoreboard (RFC 6675 with RFC 2018 blocks) and the part
//! of RACK (RFC 8985) that needs send times: which retransmissions were lost.
//!
//! Held as ranges, not per segment: the SACKed ranges above SND.UNA (sorted,
//! disjoint, non-adjacent), RFC 6675's HighRxt, the edge below which every
//! un-SACKed byte is deemed lost (`lost_end`: IsLost is monotonic in the
//! sequence number, so the lost bytes are always a prefix of the holes), and
//! the outstanding retransmissions with their send times. Both lists are
//! bounded and their storage is taken once, at the connection's first SACK
//! block, and kept: nothing is allocated per packet.

use super::seq::Seq;
use super::time::Instant;

/// SACKed ranges kept. A block that would need one more is dropped (the bytes
/// are then treated as not SACKed: at worst a spurious retransmission).
pub(crate) const MAX_RANGES: usize = 32;
/// Retransmissions whose fate RACK tracks. When full the oldest record is
/// forgotten: its loss, if lost, is then found by the retransmission timer.
pub(crate) const MAX_REXMITS: usize = 32;
/// RFC 6675 2: "DupThresh ... The default value ... is 3."
pub(crate) const DUP_THRESH: u32 = 3;

/// One retransmission: `[start, end)`, when, and SND.MAX at that time (data
/// at or above it was first sent later: RACK's "sent after" without a clock
/// per segment, since new data leaves in sequence order).
#[derive(Clone, Copy, Debug)]
struct Rexmit {
    start: Seq,
    end: Seq,
    at: Instant,
    snd_max_then: Seq,
    /// RACK found it lost (a segment sent after it was delivered first).
    lost: bool,
}

/// Where the next retransmission comes from (for `on_retransmitted`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Source {
    /// A retransmission RACK found lost is sent again.
    Again,
    /// RFC 6675 NextSeg rule (1): the first lost hole above HighRxt.
    Hole,
    /// A tail loss probe resending sent data (RFC 8985 7.3): tracked so
    /// its delivery shows earlier retransmissions lost, HighRxt unchanged
    /// (the holes below it are still to be resent in order).
    Probe,
}

/// What an ACK told the scoreboard.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Update {
    /// Bytes newly SACKed by the blocks.
    pub(crate) newly_sacked: u32,
    /// Blocks ignored: outside SND.UNA..SND.MAX, malformed, or no room left.
    pub(crate) ignored: u32,
    /// Retransmissions RACK marked lost by this ACK.
    pub(crate) rexmits_lost: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Scoreboard {
    ranges: Vec<(Seq, Seq)>,
    sacked: u32,
    /// RFC 6675 2: "HighRxt: The highest sequence number which has been
    /// retransmitted during the current loss recovery phase." (One past it.)
    high_rxt: Seq,
    /// Every un-SACKed byte below this is lost.
    lost_end: Seq,
    rexmits: Vec<Rexmit>,
}

impl Scoreboard {
    /// Nothing SACKed, nothing lost: the state of a connection that saw no loss.
    pub(crate) fn reset(&mut self, una: Seq) {
        self.ranges.clear();
        self.sacked = 0;
        self.high_rxt = una;
        self.lost_end = una;
        self.rexmits.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes SACKed above SND.UNA (delivered, for the delivery-rate estimate).
    pub(crate) fn sacked_bytes(&self) -> u32 {
        self.sacked
    }

    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[(Seq, Seq)] {
        &self.ranges
    }

    /// Ranges, HighRxt, the lost edge and retransmission records relative to `una`.
    #[cfg(test)]
    pub(crate) fn dump(&self, una: Seq) -> String {
        let r: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .map(|&(s, e)| (s - una, e - una))
            .collect();
        let x: Vec<String> = self
            .rexmits
            .iter()
            .map(|x| {
                format!(
                    "[{}..{} @{} max_then {} lost {}]",
                    x.start - una,
                    x.end - una,
                    x.at.as_micros(),
                    x.snd_max_then - una,
                    x.lost
                )
            })
            .collect();
        format!(
            "ranges {r:?} high_rxt {} lost_end {} rexmits {}",
            self.high_rxt - una,
            self.lost_end - una,
            x.join(" ")
        )
    }

    #[cfg(test)]
    pub(crate) fn high_rxt(&self) -> Seq {
        self.high_rxt
    }

    /// Some un-SACKed byte is lost and not yet retransmitted (or its
    /// retransmission was lost): loss recovery has something to send.
    pub(crate) fn has_lost(&self, una: Seq, max: Seq) -> bool {
        let from = self.high_rxt.max(una);
        (self.lost_end > from
            && self
                .first_unsacked(from, max)
                .is_some_and(|s| s < self.lost_end))
            || self.rexmits.iter().any(|r| r.lost)
    }

    /// SND.UNA's segment was retransmitted in this recovery (or after this
    /// timeout) and is still unacknowledged.
    pub(crate) fn una_rexmitted(&self, una: Seq) -> bool {
        self.high_rxt > una || self.rexmits.iter().any(|x| x.start <= una && una < x.end)
    }

    /// SND.UNA itself is deemed lost (RFC 6675 5 (4): "IsLost (HighACK + 1)").
    pub(crate) fn una_lost(&self, una: Seq) -> bool {
        self.lost_end > una
    }

    /// Take in an ACK: SND.UNA moved to `una` (from `old_una`), `blocks` are
    /// the segment's SACK blocks. `in_recovery`: RACK's reordering window is
    /// zero (RFC 8985 6.2, no reordering seen and in recovery), so holes below
    /// the highest SACK are lost at once; outside recovery they wait for
    /// `mark_rack_lost` (the reordering timer).
    pub(crate) fn on_ack(
        &mut self,
        old_una: Seq,
        una: Seq,
        max: Seq,
        blocks: &[(u32, u32)],
        mss: u32,
        in_recovery: bool,
    ) -> Update {
        let mut up = Update::default();
        // Highest byte newly delivered by the cumulative ACK (the end of the
        // last hole below the new SND.UNA): data at or above a retransmission's
        // `snd_max_then` left after that retransmission.
        let mut delivered_hi: Option<Seq> = None;
        if una > old_una {
            let mut cursor = old_una;
            for &(s, e) in self.ranges.iter().take_while(|r| r.0 < una) {
                if s > cursor {
                    delivered_hi = Some(s);
                }
                cursor = cursor.max(e);
            }
            if una > cursor {
                delivered_hi = Some(una);
            }
            self.prune(una);
        }
        if self.high_rxt < una {
            self.high_rxt = una;
        }
        if self.lost_end < una {
            self.lost_end = una;
        }
        for &(l, r) in blocks {
            let (l, r) = (Seq(l), Seq(r));
            // RFC 2018 / RFC 6675 5.1: only blocks within SND.UNA..SND.MAX
            // count; a block at or below SND.UNA is a D-SACK (RFC 2883), which
            // we may ignore.
            if !(l < r && r <= max && r > una) {
                up.ignored += 1;
                continue;
            }
            let l = l.max(una);
            match self.insert(l, r) {
                Some((added, hi)) => {
                    if added > 0 {
                        up.newly_sacked += added;
                        delivered_hi = Some(delivered_hi.map_or(hi, |d| d.max(hi)));
                    }
                }
                None => up.ignored += 1,
            }
        }
        // Retransmissions now delivered, and the latest of their send times.
        let mut delivered_at: Option<Instant> = None;
        let ranges = &self.ranges;
        self.rexmits.retain(|x| {
            let gone = x.end <= una || ranges.iter().any(|&(s, e)| s <= x.start && x.end <= e);
            if gone && !x.lost {
                delivered_at = Some(delivered_at.map_or(x.at, |d: Instant| d.max(x.at)));
            }
            !gone
        });
        // RFC 8985 6.2: "a segment is lost if ... a segment sent later has
        // been delivered" (with the reordering window zero; see above).
        for x in self.rexmits.iter_mut().filter(|x| !x.lost) {
            let later_new = delivered_hi.is_some_and(|d| d > x.snd_max_then);
            let later_rexmit = delivered_at.is_some_and(|t| t > x.at);
            if later_new || later_rexmit {
                x.lost = true;
                up.rexmits_lost += 1;
            }
        }
        self.update_lost(mss);
        if in_recovery {
            self.mark_rack_lost();
        }
        up
    }

    /// Drop what SND.UNA has passed.
    fn prune(&mut self, una: Seq) {
        let gone = self.ranges.iter().take_while(|r| r.1 <= una).count();
        self.ranges.drain(..gone);
        if let Some(first) = self.ranges.first_mut()
            && first.0 < una
        {
            first.0 = una;
        }
        self.sacked = self.ranges.iter().map(|&(s, e)| e - s).sum();
        for x in &mut self.rexmits {
            if x.start < una {
                x.start = una.min(x.end);
            }
        }
    }

    /// Merge `[l, r)` into the ranges: the bytes it added and the end of the
    /// highest newly covered part; `None` when it needs a range and none is left.
    fn insert(&mut self, l: Seq, r: Seq) -> Option<(u32, Seq)> {
        if self.ranges.capacity() == 0 {
            // Once per connection, at its first SACK block.
            self.ranges.reserve_exact(MAX_RANGES);
            self.rexmits.reserve_exact(MAX_REXMITS);
        }
        let n = self.ranges.len();
        let first = self.ranges.iter().position(|&(_, e)| e >= l).unwrap_or(n);
        let mut last = first;
        while last < n && self.ranges[last].0 <= r {
            last += 1;
        }
        if first == last {
            if n == MAX_RANGES {
                return None;
            }
            self.ranges.insert(first, (l, r));
            self.sacked += r - l;
            return Some((r - l, r));
        }
        // Gaps of [l, r) not yet covered: new bytes; the last one's end is the
        // highest newly delivered byte.
        let mut added = 0u32;
        let mut hi = l;
        let mut cursor = l;
        for &(s, e) in &self.ranges[first..last] {
            if s > cursor {
                added += s - cursor;
                hi = s;
            }
            cursor = cursor.max(e);
        }
        if r > cursor {
            added += r - cursor;
            hi = r;
        }
        let merged = (l.min(self.ranges[first].0), r.max(self.ranges[last - 1].1));
        self.ranges[first] = merged;
        self.ranges.drain(first + 1..last);
        self.sacked += added;
        Some((added, hi))
    }

    /// RFC 6675 4 IsLost: "The routine returns true when either DupThresh
    /// discontiguous SACKed sequences have arrived above 'SeqNum' or more than
    /// (DupThresh - 1) * SMSS bytes with sequence numbers greater than
    /// 'SeqNum' have been SACKed." Holes lie below range starts, so the edge
    /// is the start of the range (from the top) where either count is met;
    /// ranges stand in for segments (each holds at least one).
    fn update_lost(&mut self, mss: u32) {
        let mut bytes = 0u32;
        for (i, &(s, e)) in self.ranges.iter().rev().enumerate() {
            bytes += e - s;
            if bytes > (DUP_THRESH - 1) * mss || i as u32 + 1 >= DUP_THRESH {
                if s > self.lost_end {
                    self.lost_end = s;
                }
                return;
            }
        }
    }

    /// RACK (RFC 8985 6.2) for first transmissions: new data leaves in
    /// sequence order, so every hole below the highest SACKed byte was sent
    /// before a delivered segment. Returns whether anything was newly marked.
    pub(crate) fn mark_rack_lost(&mut self) -> bool {
        match self.ranges.last() {
            Some(&(s, _)) if s > self.lost_end => {
                self.lost_end = s;
                true
            }
            _ => false,
        }
    }

    /// A hole lies below the highest SACK that neither rule has called lost
    /// yet: RACK's reordering timer should run.
    pub(crate) fn rack_pending(&self) -> bool {
        self.ranges.last().is_some_and(|&(s, _)| s > self.lost_end)
    }

    /// RFC 6675 4 SetPipe: "(a) If IsLost (S1) returns false: pipe is
    /// incremented by 1 octet. (b) If S1 <= HighRxt: Pipe is incremented by 1
    /// octet." Less the retransmissions RACK has found lost (they left the network).
    pub(crate) fn pipe(&self, una: Seq, max: Seq) -> u32 {
        let not_lost_from = self.lost_end.max(una).min(max);
        let not_lost = self.unsacked(not_lost_from, max);
        let rexmitted = self.unsacked(una, self.high_rxt.max(una).min(max));
        let lost_again: u32 = self
            .rexmits
            .iter()
            .filter(|x| x.lost)
            .map(|x| self.unsacked(x.start, x.end))
            .sum();
        (not_lost + rexmitted).saturating_sub(lost_again)
    }

    /// Un-SACKed bytes in `[a, b)`.
    fn unsacked(&self, a: Seq, b: Seq) -> u32 {
        if b <= a {
            return 0;
        }
        let mut n = b - a;
        for &(s, e) in &self.ranges {
            if s >= b {
                break;
            }
            let (s, e) = (s.max(a), e.min(b));
            if e > s {
                n -= e - s;
            }
        }
        n
    }

    /// The first un-SACKed byte at or above `from`, below `max`.
    fn first_unsacked(&self, from: Seq, max: Seq) -> Option<Seq> {
        let mut at = from;
        for &(s, e) in &self.ranges {
            if e <= at {
                continue;
            }
            if s > at {
                break;
            }
            at = e;
        }
        (at < max).then_some(at)
    }

    /// The un-SACKed run starting at `at`, at most `mss` long, below `max`.
    fn run(&self, at: Seq, max: Seq, mss: u32) -> u32 {
        let next = self
            .ranges
            .iter()
            .find(|&&(s, _)| s > at)
            .map_or(max, |&(s, _)| s.min(max));
        (next - at).min(mss)
    }

    /// RFC 6675 4 NextSeg (rule 1): "If there exists a smallest unSACKed
    /// sequence number 'S2' that meets the following three criteria for
    /// determining loss, the sequence range of one segment of up to SMSS
    /// octets starting with S2 MUST be returned: (1.a) S2 is greater than
    /// HighRxt. (1.b) S2 is less than the highest octet covered by any
    /// received SACK. (1.c) IsLost (S2) returns true." After a timeout
    /// `lost_end` is SND.MAX, which lifts (1.b). Retransmissions RACK found
    /// lost come first: they are the oldest losses.
    pub(crate) fn next_seg(&self, una: Seq, max: Seq, mss: u32) -> Option<(Seq, u32, Source)> {
        if let Some(x) = self
            .rexmits
            .iter()
            .filter(|x| x.lost)
            .min_by_key(|x| x.start.diff(una))
            && let Some(s) = self.first_unsacked(x.start.max(una), x.end)
        {
            return Some((s, self.run(s, x.end, mss), Source::Again));
        }
        let s = self.first_unsacked(self.high_rxt.max(una), max)?;
        (s < self.lost_end).then(|| (s, self.run(s, max, mss), Source::Hole))
    }

    /// The highest un-SACKed run below `max`, at most `mss` long and ending
    /// where the SACKed data above it begins: what a tail loss probe resends
    /// when no new data may go (RFC 8985 7.3 "the highest-sequence segment
    /// sent so far", skipping what the receiver already holds).
    pub(crate) fn last_unsacked(&self, una: Seq, max: Seq, mss: u32) -> Option<(Seq, u32)> {
        let mut end = max;
        let mut floor = una;
        for &(s, e) in self.ranges.iter().rev() {
            if e < end {
                floor = e;
                break;
            }
            end = end.min(s);
        }
        if end <= una {
            return None;
        }
        let len = (end - floor).min(mss);
        Some((end - len, len))
    }

    /// `[start, end)` was retransmitted at `now` with SND.MAX at `snd_max`.
    pub(crate) fn on_retransmitted(
        &mut self,
        start: Seq,
        end: Seq,
        source: Source,
        now: Instant,
        snd_max: Seq,
    ) {
        if source == Source::Again {
            // The lost record is now this retransmission (and what of it was
            // not resent stays lost, behind it).
            if let Some(i) = self
                .rexmits
                .iter()
                .position(|x| x.lost && x.start <= start && start < x.end)
            {
                let x = self.rexmits[i];
                if end >= x.end {
                    self.rexmits.remove(i);
                } else {
                    self.rexmits[i].start = end;
                }
            }
        } else if source == Source::Hole && end > self.high_rxt {
            self.high_rxt = end;
        }
        if self.rexmits.len() == MAX_REXMITS {
            self.rexmits.remove(0);
        }
        if self.rexmits.capacity() > 0 {
            self.rexmits.push(Rexmit {
                start,
                end,
                at: now,
                snd_max_then: snd_max,
                lost: false,
            });
        }
    }

    /// RFC 6675 5.1 after a retransmission timeout: every un-SACKed byte is
    /// lost and retransmission restarts from SND.UNA. The SACK information is
    /// kept (the receiver may renege, so `forget` drops it on a second
    /// timeout in a row, as RFC 2018 8 advises).
    pub(crate) fn on_rto(&mut self, una: Seq, max: Seq, forget: bool) {
        if forget {
            self.ranges.clear();
            self.sacked = 0;
        }
        if self.rexmits.capacity() == 0 {
            // Once per connection, so RACK can follow these retransmissions.
            self.ranges.reserve_exact(MAX_RANGES);
            self.rexmits.reserve_exact(MAX_REXMITS);
        }
        self.high_rxt = una;
        self.lost_end = max;
        self.rexmits.clear();
    }

    /// Make sure SND.UNA's segment counts as lost (entry into recovery on
    /// three duplicate ACKs that carried no usable block).
    pub(crate) fn mark_una_lost(&mut self, una: Seq, max: Seq, mss: u32) {
        let end = una + self.run(una, max, mss);
        if end > self.lost_end {
            self.lost_end = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 100;

    fn sb(una: u32) -> Scoreboard {
        let mut s = Scoreboard::default();
        s.reset(Seq(una));
        s
    }

    #[test]
    fn blocks_merge_and_outside_ones_are_ignored() {
        let mut s = sb(1000);
        let up = s.on_ack(
            Seq(1000),
            Seq(1000),
            Seq(2000),
            &[(1200, 1300), (1100, 1200), (900, 1000), (1900, 2100)],
            MSS,
            false,
        );
        assert_eq!(up.newly_sacked, 200);
        assert_eq!(up.ignored, 2);
        assert_eq!(s.ranges(), &[(Seq(1100), Seq(1300))]);
        // Repeated blocks add nothing.
        let up = s.on_ack(Seq(1000), Seq(1000), Seq(2000), &[(1100, 1300)], MSS, false);
        assert_eq!(up.newly_sacked, 0);
        // A cumulative ACK into a range trims it.
        s.on_ack(Seq(1000), Seq(1150), Seq(2000), &[], MSS, false);
        assert_eq!(s.ranges(), &[(Seq(1150), Seq(1300))]);
        assert_eq!(s.sacked_bytes(), 150);
    }

    #[test]
    fn is_lost_needs_dupthresh_segments_above() {
        let mut s = sb(0);
        // Hole [0,100); 2 segments SACKed above: not lost by DupThresh.
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(100, 300)], MSS, false);
        assert!(!s.una_lost(Seq(0)));
        assert!(s.rack_pending());
        // A third: lost. Only the hole is to be resent.
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(100, 400)], MSS, false);
        assert!(s.una_lost(Seq(0)));
        assert_eq!(
            s.next_seg(Seq(0), Seq(1000), MSS),
            Some((Seq(0), 100, Source::Hole))
        );
        s.on_retransmitted(Seq(0), Seq(100), Source::Hole, Instant::ZERO, Seq(1000));
        assert_eq!(s.next_seg(Seq(0), Seq(1000), MSS), None);
        // pipe: [400,1000) not lost + [0,100) retransmitted.
        assert_eq!(s.pipe(Seq(0), Seq(1000)), 700);
    }

    #[test]
    fn holes_only_are_retransmitted_in_order() {
        let mut s = sb(0);
        // Holes [0,100), [200,300), [400,500); SACKed 100-200, 300-400, 500-800.
        s.on_ack(
            Seq(0),
            Seq(0),
            Seq(1000),
            &[(500, 800), (300, 400), (100, 200)],
            MSS,
            false,
        );
        // The two lowest holes have >= 3 ranges or > 200 bytes above them.
        let mut sent = vec![];
        while let Some((at, len, src)) = s.next_seg(Seq(0), Seq(1000), MSS) {
            sent.push((at.0, len));
            s.on_retransmitted(at, at + len, src, Instant::ZERO, Seq(1000));
        }
        assert_eq!(sent, vec![(0, 100), (200, 100), (400, 100)]);
        assert_eq!(s.high_rxt(), Seq(500));
    }

    #[test]
    fn rack_marks_a_lost_retransmission_when_later_data_is_delivered() {
        let mut s = sb(0);
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(100, 400)], MSS, true);
        let (at, len, src) = s.next_seg(Seq(0), Seq(1000), MSS).unwrap();
        s.on_retransmitted(at, at + len, src, Instant::from_micros(10), Seq(1000));
        assert!(!s.has_lost(Seq(0), Seq(1200)));
        // New data [1000,1100) sent after the retransmission is SACKed while
        // [0,100) stays missing: the retransmission was lost.
        let up = s.on_ack(
            Seq(0),
            Seq(0),
            Seq(1200),
            &[(1000, 1100), (100, 400)],
            MSS,
            true,
        );
        assert_eq!(up.rexmits_lost, 1);
        assert!(s.has_lost(Seq(0), Seq(1200)));
        assert_eq!(
            s.next_seg(Seq(0), Seq(1200), MSS),
            Some((Seq(0), 100, Source::Again))
        );
    }

    #[test]
    fn rto_marks_everything_unsacked_lost() {
        let mut s = sb(0);
        s.on_ack(Seq(0), Seq(0), Seq(500), &[(200, 300)], MSS, false);
        s.on_rto(Seq(0), Seq(500), false);
        let mut sent = vec![];
        while let Some((at, len, src)) = s.next_seg(Seq(0), Seq(500), MSS) {
            sent.push(at.0);
            s.on_retransmitted(at, at + len, src, Instant::ZERO, Seq(500));
        }
        assert_eq!(sent, vec![0, 100, 300, 400]);
    }

    #[test]
    fn last_unsacked_skips_what_the_receiver_holds() {
        let mut s = sb(0);
        assert_eq!(
            s.last_unsacked(Seq(0), Seq(1000), MSS),
            Some((Seq(900), 100))
        );
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(850, 1000)], MSS, true);
        assert_eq!(
            s.last_unsacked(Seq(0), Seq(1000), MSS),
            Some((Seq(750), 100))
        );
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(100, 820)], MSS, true);
        assert_eq!(
            s.last_unsacked(Seq(0), Seq(1000), MSS),
            Some((Seq(820), 30))
        );
        // A probe's retransmission leaves HighRxt alone.
        s.on_retransmitted(Seq(820), Seq(850), Source::Probe, Instant::ZERO, Seq(1000));
        assert_eq!(s.high_rxt(), Seq(0));
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(100, 1000)], MSS, true);
        assert_eq!(s.last_unsacked(Seq(0), Seq(1000), MSS), Some((Seq(0), 100)));
        s.on_ack(Seq(0), Seq(0), Seq(1000), &[(0, 1000)], MSS, true);
        assert_eq!(s.last_unsacked(Seq(0), Seq(1000), MSS), None);
    }

    #[test]
    fn wraps_around_zero() {
        let una = u32::MAX - 150;
        let mut s = sb(una);
        let b = una.wrapping_add(100);
        s.on_ack(
            Seq(una),
            Seq(una),
            Seq(una.wrapping_add(1000)),
            &[(b, b.wrapping_add(300))],
            MSS,
            false,
        );
        assert!(s.una_lost(Seq(una)));
        assert_eq!(
            s.next_seg(Seq(una), Seq(una.wrapping_add(1000)), MSS),
            Some((Seq(una), 100, Source::Hole))
        );
        assert_eq!(s.pipe(Seq(una), Seq(una.wrapping_add(1000))), 600);
    }
}
