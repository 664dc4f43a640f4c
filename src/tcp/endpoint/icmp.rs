//! ICMP errors the datapath hands the engine: today "fragmentation needed"
//! (path MTU discovery, RFC 1191).

use super::Endpoint;
use crate::tcp::connection::Ctx;
use crate::tcp::connection::pmtu::{PmtuOutcome, reported_mtu};
use crate::tcp::id::FourTuple;
use crate::tcp::time::Instant;
use crate::wire::icmp::FragNeeded;

impl Endpoint {
    /// An ICMP "fragmentation needed" quoting a segment we sent (its quoted
    /// source is our side): lowers that connection's MSS if the quoted
    /// sequence number is in flight (RFC 5927 4.1), else a counted drop.
    /// TIME-WAIT entries and unknown flows ignore it: nothing of theirs is
    /// in flight.
    pub fn handle_frag_needed(&mut self, icmp: &FragNeeded, now: Instant) {
        let tuple = FourTuple {
            local: icmp.local,
            remote: icmp.remote,
        };
        let Some(&index) = self.by_tuple.get(&tuple) else {
            self.stats.icmp_unknown_flow += 1;
            return;
        };
        let Some(conn) = self.slots[index as usize].conn.as_mut() else {
            self.stats.icmp_unknown_flow += 1;
            return;
        };
        let mut ctx = Ctx {
            cfg: &self.config,
            stats: &mut self.stats,
            events: &mut self.events,
            ctl: &mut self.ctl,
            pool: &mut self.pool,
        };
        let mtu = reported_mtu(icmp.next_hop_mtu, icmp.quoted_len);
        match conn.on_frag_needed(icmp.seq, mtu, &mut ctx) {
            PmtuOutcome::Lowered => {}
            PmtuOutcome::NotInFlight => self.stats.icmp_not_in_flight += 1,
            PmtuOutcome::NotLower => self.stats.icmp_not_lower += 1,
        }
        self.after_call(index, now, true);
        self.prune_timers();
    }
}
