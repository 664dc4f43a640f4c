//! One shard's TCP endpoint: connections, listeners, TIME-WAIT entries, ports, timers.
//!
//! Methods come in quinn-proto's four kinds: getters, `handle_*` inputs,
//! application mutators, and `poll_*` outputs. Per segment: one FxHashMap lookup
//! by 4-tuple, no allocation (buffers are per connection, pooled; queues reuse
//! their capacity).

mod active;
mod icmp;
mod passive;
mod slots;
mod time_wait;

use super::config::Config;
use super::connection::{Connection, Ctx, End};
use super::control::ControlQueue;
use super::error::ConnError;
use super::event::{Event, Transmit};
use super::id::{ConnId, FourTuple};
use super::isn::Keys;
use super::listener::Listener;
use super::pool::ChunkPool;
use super::ports::{DestKey, PortAllocator};
use super::reassembly::RecvBuffer;
use super::reset::reset_for;
use super::send_buffer::SendBuffer;
use super::state::State;
use super::stats::Stats;
use super::time::Instant;
use super::timer::TimerQueue;
use super::timewait::TimeWaitTable;
use crate::wire::{TcpFlags, TcpRepr};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Header-only replies queued at most (RSTs, TIME-WAIT ACKs, cookie SYN+ACKs).
const CONTROL_QUEUE_LIMIT: usize = 4096;
/// A new connection's (send, receive) buffers: bounds only, no storage yet.
type BufferPair = (SendBuffer, RecvBuffer);

struct Slot {
    generation: u32,
    conn: Option<Connection>,
    /// Bookkeeping of what the counters currently include for this connection.
    counted_established: bool,
    in_syn_queue: bool,
    /// Counted in its listener's `connections`.
    counted_listener: bool,
}

/// What [`Endpoint::buffer_pool`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferPoolStats {
    pub in_use_bytes: usize,
    pub allocated_bytes: usize,
    /// Chunk requests refused because the budget was spent (windows shrank).
    pub exhausted: u64,
}

/// All TCP state of one shard.
pub struct Endpoint {
    config: Config,
    keys: Keys,
    slots: slots::Slots<Slot>,
    free_slots: Vec<u32>,
    by_tuple: FxHashMap<FourTuple, u32>,
    listeners: FxHashMap<u16, Listener>,
    time_wait: TimeWaitTable,
    ports: PortAllocator,
    timers: TimerQueue,
    /// Connections that may have something to send, FIFO for fairness.
    send_queue: VecDeque<(u32, u32)>,
    ctl: ControlQueue,
    events: VecDeque<(ConnId, Event)>,
    stats: Stats,
    /// Storage of every connection's buffers, lent in chunks as bytes arrive.
    pool: ChunkPool,
    established: usize,
    /// RFC 5961 7 limiter of the stateless replies of TIME-WAIT entries: the
    /// second it is for, and what is left of that second's randomized budget.
    tw_ack_second: u32,
    tw_ack_count: u32,
    /// The latest time seen in an input; application calls (which take no time)
    /// use it to start timers.
    last_now: Instant,
}

impl Endpoint {
    /// `secret` keys ISNs, timestamp offsets, port offsets and SYN cookies; draw
    /// it from the OS once per process (shards may share it).
    pub fn new(config: Config, secret: [u8; 16]) -> Self {
        let ports =
            PortAllocator::with_filter(config.port_range.clone(), config.port_filter.clone());
        let time_wait = TimeWaitTable::new(config.max_time_wait);
        Endpoint {
            keys: Keys::new(secret),
            slots: slots::Slots::default(),
            free_slots: Vec::new(),
            by_tuple: FxHashMap::default(),
            listeners: FxHashMap::default(),
            time_wait,
            ports,
            timers: TimerQueue::default(),
            send_queue: VecDeque::new(),
            ctl: ControlQueue::new(CONTROL_QUEUE_LIMIT),
            events: VecDeque::new(),
            stats: Stats::default(),
            pool: ChunkPool::new(config.buffer_pool_budget),
            established: 0,
            tw_ack_second: u32::MAX,
            tw_ack_count: 0,
            last_now: Instant::ZERO,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accept connections to `port` on any local address.
    pub fn listen(&mut self, port: u16) {
        self.listeners.entry(port).or_default();
    }

    /// Like [`Endpoint::listen`], holding at most `max` passive connections
    /// of `port` at a time (SYNs beyond are dropped and counted).
    pub fn listen_limited(&mut self, port: u16, max: usize) {
        self.listeners.entry(port).or_default().max_connections = max;
    }

    /// SYN cookies were sent for this endpoint's listeners elsewhere (by the
    /// XDP program during a flood): validate cookies on their bare ACKs for
    /// `syn_cookies::LIFETIME` from `now`, as after an overflow of our own.
    pub fn note_syn_cookies_sent(&mut self, now: Instant) {
        for l in self.listeners.values_mut() {
            l.last_overflow = Some(now);
        }
    }

    /// Stop accepting on `port`; connections already made are unaffected.
    pub fn unlisten(&mut self, port: u16) {
        self.listeners.remove(&port);
    }

    // ---- inputs ----

    /// A TCP segment arrived for `local` from `remote` (checksums already verified).
    pub fn handle_segment(
        &mut self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        tcp: &TcpRepr,
        payload: &[u8],
        now: Instant,
    ) {
        self.stats.segments_received += 1;
        let f = tcp.flags;
        if tcp.src_port == 0
            || tcp.dst_port == 0
            || (f.contains(TcpFlags::SYN) && f.intersects(TcpFlags::RST | TcpFlags::FIN))
        {
            self.stats.drop_malformed += 1;
            self.stats.dropped_segments += 1;
            return;
        }
        let tuple = FourTuple {
            local: SocketAddrV4::new(local, tcp.dst_port),
            remote: SocketAddrV4::new(remote, tcp.src_port),
        };
        if let Some(&index) = self.by_tuple.get(&tuple) {
            self.connection_segment(index, tcp, payload, now);
        } else if self.time_wait.get(&tuple).is_some() {
            self.time_wait_segment(tuple, tcp, payload, now);
        } else if self.listeners.contains_key(&tcp.dst_port) {
            self.listener_segment(tuple, tcp, payload, now, None);
        } else {
            // RFC 9293 3.10.7.1: no connection and nobody listening.
            self.stats.drop_no_listener += 1;
            self.stats.dropped_segments += 1;
            if let Some(rst) = reset_for(tcp, payload.len()) {
                self.push_control(tuple, rst);
            }
            return;
        }
        self.prune_timers();
    }

    fn connection_segment(&mut self, index: u32, tcp: &TcpRepr, payload: &[u8], now: Instant) {
        let slot = &mut self.slots[index as usize];
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        // A handshake may only complete while the accept queue has room: else
        // drop its final ACK, and the peer's retransmission tries again.
        if slot.in_syn_queue
            && tcp.flags.contains(TcpFlags::ACK)
            && !tcp.flags.intersects(TcpFlags::RST | TcpFlags::SYN)
            && self
                .listeners
                .get(&conn.tuple.local.port())
                .is_some_and(|l| l.accept_queue_full(self.config.accept_backlog))
        {
            self.stats.accept_queue_overflow += 1;
            self.stats.dropped_segments += 1;
            return;
        }
        let mut ctx = Ctx {
            cfg: &self.config,
            stats: &mut self.stats,
            events: &mut self.events,
            ctl: &mut self.ctl,
            pool: &mut self.pool,
        };
        conn.on_segment(tcp, payload, now, &mut ctx);
        self.after_call(index, now, true);
    }

    /// Run timers due at `now`: retransmissions, delayed ACKs, probes, TIME-WAIT expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, index, generation)) = self.timers.pop_due(now) {
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if conn.scheduled != Some(t) {
                continue; // superseded by an earlier entry
            }
            conn.scheduled = None;
            let mut ctx = Ctx {
                cfg: &self.config,
                stats: &mut self.stats,
                events: &mut self.events,
                ctl: &mut self.ctl,
                pool: &mut self.pool,
            };
            conn.on_timeout(now, &mut ctx);
            self.after_call(index, now, true);
        }
        while let Some((tuple, entry)) = self.time_wait.pop_expired(now) {
            self.stats.time_wait_expired += 1;
            if entry.holds_port {
                self.ports.release(dest_key(&tuple), tuple.local.port());
            }
        }
        self.prune_timers();
    }

    /// Make the heap's top exact, so `poll_timeout` does not wake the caller
    /// early: drop stale entries, and move an entry whose connection's deadline
    /// moved later (e.g. an RTO restarted by an ACK) to that deadline. Each
    /// entry is handled once, so this is amortised O(log n) per timer change.
    fn prune_timers(&mut self) {
        while let Some((t, index, generation)) = self.timers.peek_entry() {
            let slot = &mut self.slots[index as usize];
            let conn = match slot.conn.as_mut() {
                Some(c) if slot.generation == generation && c.scheduled == Some(t) => c,
                _ => {
                    self.timers.pop();
                    continue;
                }
            };
            let next = conn.next_deadline();
            if next == Some(t) {
                return;
            }
            self.timers.pop();
            conn.scheduled = None;
            self.timers
                .schedule(&mut conn.scheduled, next, index, generation);
        }
    }

    // ---- outputs ----

    /// The next segment to send: header in the result, payload written to
    /// `payload_buf[..payload_len]` (`payload_buf.len()` must be at least the MSS).
    pub fn poll_transmit(&mut self, now: Instant, payload_buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.ctl.pop() {
            self.stats.segments_sent += 1;
            return Some(t);
        }
        while let Some((index, generation)) = self.send_queue.pop_front() {
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            conn.in_send_queue = false;
            let mut ctx = Ctx {
                cfg: &self.config,
                stats: &mut self.stats,
                events: &mut self.events,
                ctl: &mut self.ctl,
                pool: &mut self.pool,
            };
            let out = conn.poll_transmit(now, payload_buf, &mut ctx);
            let (local, remote) = (*conn.tuple.local.ip(), *conn.tuple.remote.ip());
            let produced = out.is_some();
            self.after_call(index, now, produced);
            if let Some((tcp, payload_len)) = out {
                self.stats.segments_sent += 1;
                return Some(Transmit {
                    local,
                    remote,
                    tcp,
                    payload_len,
                });
            }
            // A connection with nothing to send leaves the queue until an input,
            // a timer or the application gives it something.
        }
        None
    }

    /// The earliest instant at which `handle_timeout` has work (may be early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.peek(), self.time_wait.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        let (id, event) = self.events.pop_front()?;
        if let Event::Accepted { port } = event
            && let Some(l) = self.listeners.get_mut(&port)
        {
            l.accept_queue = l.accept_queue.saturating_sub(1);
        }
        Some((id, event))
    }

    // ---- application ----

    fn conn_mut(&mut self, id: ConnId) -> Result<&mut Connection, ConnError> {
        app_conn_mut(&mut self.slots, id)
    }

    fn conn(&self, id: ConnId) -> Option<&Connection> {
        match self.slots.get(id.index as usize) {
            Some(Slot {
                generation,
                conn: Some(c),
                ..
            }) if *generation == id.generation && c.app_knows => Some(c),
            _ => None,
        }
    }

    /// Queue what fits of `data` for sending; `Ok(n < data.len())` means the
    /// buffer is full and `Writable` will follow when space frees.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        let conn = app_conn_mut(&mut self.slots, id)?;
        let n = conn.app_send(data, &mut self.pool)?;
        self.after_call(id.index, self.last_now, true);
        Ok(n)
    }

    /// Copy received in-order data into `buf`; `Ok(0)` when there is none now.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        let conn = app_conn_mut(&mut self.slots, id)?;
        let n = conn.app_recv(buf, &self.config, &mut self.pool);
        self.after_call(id.index, self.last_now, true);
        Ok(n)
    }

    /// Moves what fits of `from`'s received in-order bytes (at most `max`)
    /// into `to`'s send buffer, as `recv` from one and `send` to the other
    /// would, but copying once, chunk to chunk, with no buffer between (the
    /// sidecar's relay: both legs of a session live in one endpoint).
    /// `Ok(0)` when there is nothing to move or no room; `Writable` follows
    /// on `to` when its buffer took less than `from` held.
    pub fn relay(&mut self, from: ConnId, to: ConnId, max: usize) -> Result<usize, ConnError> {
        if from == to {
            return Err(ConnError::InvalidId);
        }
        let avail = app_conn_mut(&mut self.slots, from)?
            .recv_available()
            .min(max);
        let dst = app_conn_mut(&mut self.slots, to)?;
        dst.app_can_send()?;
        if avail == 0 {
            return Ok(0);
        }
        // Storage in `to` first (the pool may lend less), then the copy with
        // both buffers borrowed shared and the pool alone mutable.
        let n = dst.send_buf.reserve(avail, &mut self.pool);
        if n > 0 {
            let (slots, pool) = (&self.slots, &mut self.pool);
            let conn = |id: ConnId| slots[id.index as usize].conn.as_ref();
            // Both were checked above; the reserved storage stays spare if not.
            let (Some(src), Some(dst)) = (conn(from), conn(to)) else {
                return Err(ConnError::InvalidId);
            };
            dst.send_buf.fill_from(src.recv_buf.chain(), n, pool);
            app_conn_mut(&mut self.slots, to)?.send_buf.commit(n);
        }
        let conn = app_conn_mut(&mut self.slots, to)?;
        conn.app_sent(n, avail);
        let conn = app_conn_mut(&mut self.slots, from)?;
        conn.app_discard(n, &self.config, &mut self.pool);
        self.after_call(to.index, self.last_now, true);
        self.after_call(from.index, self.last_now, true);
        Ok(n)
    }

    /// Half-close: a FIN follows the queued data; receiving continues.
    pub fn shutdown(&mut self, id: ConnId) -> Result<(), ConnError> {
        let conn = self.conn_mut(id)?;
        if conn.app_closed {
            return Err(ConnError::InvalidId);
        }
        conn.app_shutdown();
        self.after_call(id.index, self.last_now, true);
        Ok(())
    }

    /// Close: a FIN follows the queued data and the application is done with the
    /// id (it still gets `Closed`, or `Reset`/`TimedOut`). Unread and later data is discarded.
    pub fn close(&mut self, id: ConnId) -> Result<(), ConnError> {
        let conn = app_conn_mut(&mut self.slots, id)?;
        if conn.app_closed {
            return Err(ConnError::InvalidId);
        }
        // Timers armed by close (the FIN-WAIT-2 linger) start from the latest
        // time seen: the API's application calls take no time.
        conn.app_close(self.last_now, &self.config, &mut self.pool);
        self.after_call(id.index, self.last_now, true);
        Ok(())
    }

    /// Abort: send a RST (in synchronized states) and forget the connection now.
    /// No event follows.
    pub fn abort(&mut self, id: ConnId) -> Result<(), ConnError> {
        let conn = self.conn_mut(id)?;
        let tuple = conn.tuple;
        if let Some(rst) = conn.app_abort() {
            self.push_control(tuple, rst);
        }
        self.after_call(id.index, self.last_now, true);
        Ok(())
    }

    /// Turn RFC 1122 keepalive on (or off, `None`) for one connection, its
    /// idle period starting now; overrides what `Config` gave it at open.
    pub fn set_keepalive(
        &mut self,
        id: ConnId,
        keepalive: Option<super::Keepalive>,
    ) -> Result<(), ConnError> {
        let now = self.last_now;
        let conn = app_conn_mut(&mut self.slots, id)?;
        conn.set_keepalive(keepalive.as_ref(), now);
        self.after_call(id.index, now, false);
        Ok(())
    }

    // ---- getters ----

    pub fn state(&self, id: ConnId) -> Option<State> {
        self.conn(id).map(|c| c.state)
    }
    pub fn tuple(&self, id: ConnId) -> Option<FourTuple> {
        self.conn(id).map(|c| c.tuple)
    }
    /// The state of whatever holds `tuple`: a connection, a TIME-WAIT entry
    /// (`TimeWait`), or nothing (`Closed`). For diagnostics and tests.
    pub fn state_of(&self, tuple: &FourTuple) -> State {
        if let Some(&i) = self.by_tuple.get(tuple)
            && let Some(c) = &self.slots[i as usize].conn
        {
            return c.state;
        }
        if self.time_wait.get(tuple).is_some() {
            State::TimeWait
        } else {
            State::Closed
        }
    }
    /// The id of the connection on `tuple`, if the application knows it.
    pub fn id_of(&self, tuple: &FourTuple) -> Option<ConnId> {
        let &index = self.by_tuple.get(tuple)?;
        let slot = &self.slots[index as usize];
        let c = slot.conn.as_ref()?;
        c.app_knows.then_some(ConnId {
            index,
            generation: slot.generation,
        })
    }
    /// Bytes `send` would accept now.
    pub fn send_capacity(&self, id: ConnId) -> usize {
        self.conn(id)
            .map_or(0, |c| c.send_capacity().min(c.send_buf.free_in(&self.pool)))
    }
    /// Bytes `recv` would return now.
    pub fn recv_available(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.recv_available())
    }
    /// Bytes queued but not yet acknowledged by the peer.
    pub fn send_queued(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.send_buf.len())
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Connections held in full (not counting TIME-WAIT entries).
    pub fn connection_count(&self) -> usize {
        self.by_tuple.len()
    }
    /// Entries in the timer heap, live and stale (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }
    pub fn established_count(&self) -> usize {
        self.established
    }
    pub fn time_wait_count(&self) -> usize {
        self.time_wait.len()
    }
    /// The buffer pool: bytes lent to connections now, bytes allocated from
    /// the heap, and how often a buffer found the budget spent.
    pub fn buffer_pool(&self) -> BufferPoolStats {
        BufferPoolStats {
            in_use_bytes: self.pool.in_use() * super::pool::CHUNK,
            allocated_bytes: self.pool.allocated() * super::pool::CHUNK,
            exhausted: self.pool.exhausted,
        }
    }

    // ---- internals ----

    fn push_control(&mut self, tuple: FourTuple, tcp: TcpRepr) {
        let t = Transmit {
            local: *tuple.local.ip(),
            remote: *tuple.remote.ip(),
            tcp,
            payload_len: 0,
        };
        if self.ctl.push(t) {
            if tcp.flags.contains(TcpFlags::RST) {
                self.stats.rst_sent += 1;
            }
        } else {
            self.stats.drop_control_queue_full += 1;
        }
    }

    fn alloc_slot(&mut self) -> Option<(u32, u32)> {
        if let Some(i) = self.free_slots.pop() {
            return Some((i, self.slots[i as usize].generation));
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot {
            generation: 0,
            conn: None,
            counted_established: false,
            in_syn_queue: false,
            counted_listener: false,
        });
        Some((i, 0))
    }

    /// A new connection's buffers: their bounds from the configuration and no
    /// storage, which comes from the pool as bytes arrive (an idle connection
    /// holds none).
    fn take_buffers(&mut self) -> BufferPair {
        (
            SendBuffer::new(self.config.send_buffer.max(1)),
            RecvBuffer::new(self.config.recv_buffer.max(1)),
        )
    }

    /// Put a new connection in slot `index` and register it.
    fn install(&mut self, index: u32, conn: Connection, now: Instant) {
        self.by_tuple.insert(conn.tuple, index);
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(conn);
        slot.counted_established = false;
        slot.in_syn_queue = false;
        slot.counted_listener = false;
        self.after_call(index, now, true);
    }

    /// A passive open of listener `port` was installed at `index`.
    fn count_passive(&mut self, index: u32, port: u16) {
        if let Some(l) = self.listeners.get_mut(&port) {
            l.connections += 1;
            self.slots[index as usize].counted_listener = true;
        }
    }

    /// After anything touched connection `index`: keep counters, free or compact
    /// it if it ended, schedule its timer and queue it for sending.
    fn after_call(&mut self, index: u32, now: Instant, requeue: bool) {
        if now > self.last_now {
            self.last_now = now;
        }
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation;
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let established = conn.state == State::Established;
        if established != slot.counted_established {
            slot.counted_established = established;
            if established {
                self.established += 1;
            } else {
                self.established -= 1;
            }
        }
        let syn_queued = conn.passive && conn.state == State::SynReceived && conn.end.is_none();
        if syn_queued != slot.in_syn_queue {
            slot.in_syn_queue = syn_queued;
            if let Some(l) = self.listeners.get_mut(&conn.tuple.local.port()) {
                if syn_queued {
                    l.syn_queue += 1;
                } else {
                    l.syn_queue = l.syn_queue.saturating_sub(1);
                    if conn.app_knows {
                        l.accept_queue += 1;
                    }
                }
            }
        }
        if let Some(end) = conn.end {
            if end != End::Orderly || conn.app_closed || conn.recv_buf.readable() == 0 {
                self.free(index);
            }
            return;
        }
        if conn.state == State::TimeWait && (conn.app_closed || conn.recv_buf.readable() == 0) {
            self.compact(index, now);
            return;
        }
        conn.recv_buf.note_pool(&self.pool);
        let deadline = conn.next_deadline();
        self.timers
            .schedule(&mut conn.scheduled, deadline, index, generation);
        if requeue && !conn.in_send_queue && conn.wants_transmit() {
            conn.in_send_queue = true;
            self.send_queue.push_back((index, generation));
        }
    }

    /// Remove connection `index`, tell the application how it ended, recycle it.
    fn free(&mut self, index: u32) {
        if let Some(conn) = self.unlink(index) {
            self.recycle(conn, false);
        }
    }

    /// Take connection `index` out of the tables (emitting its final event) and
    /// free its slot; the caller recycles it.
    fn unlink(&mut self, index: u32) -> Option<Connection> {
        let slot = &mut self.slots[index as usize];
        let conn = slot.conn.take()?;
        let id = ConnId {
            index,
            generation: slot.generation,
        };
        slot.generation = slot.generation.wrapping_add(1);
        if slot.counted_established {
            slot.counted_established = false;
            self.established -= 1;
        }
        if slot.in_syn_queue {
            slot.in_syn_queue = false;
            if let Some(l) = self.listeners.get_mut(&conn.tuple.local.port()) {
                l.syn_queue = l.syn_queue.saturating_sub(1);
            }
        }
        if slot.counted_listener {
            slot.counted_listener = false;
            if let Some(l) = self.listeners.get_mut(&conn.tuple.local.port()) {
                l.connections = l.connections.saturating_sub(1);
            }
        }
        self.free_slots.push(index);
        self.by_tuple.remove(&conn.tuple);
        let slots = &self.slots;
        self.timers
            .compact_if_stale(self.by_tuple.len(), |t, index, generation| {
                matches!(slots.get(index as usize), Some(Slot { generation: g, conn: Some(c), .. })
                    if *g == generation && c.scheduled == Some(t))
            });
        if conn.app_knows {
            let event = match conn.end {
                Some(End::Orderly) | None => Some(Event::Closed),
                Some(End::Reset) => Some(Event::Reset),
                Some(End::TimedOut) => Some(Event::TimedOut),
                Some(End::Refused) => Some(Event::Refused),
                Some(End::Silent) => None,
            };
            if let Some(e) = event {
                self.events.push_back((id, e));
            }
        }
        Some(conn)
    }

    /// Release what a freed connection held: its port (unless a TIME-WAIT entry
    /// now holds it) and its buffers.
    fn recycle(&mut self, conn: Connection, port_still_held: bool) {
        if conn.holds_port && !port_still_held {
            self.ports
                .release(dest_key(&conn.tuple), conn.tuple.local.port());
        }
        let mut conn = conn;
        conn.release_buffers(&mut self.pool);
    }
}

/// The connection behind an application's id, if it is still the application's.
fn app_conn_mut(slots: &mut slots::Slots<Slot>, id: ConnId) -> Result<&mut Connection, ConnError> {
    match slots.get_mut(id.index as usize) {
        Some(Slot {
            generation,
            conn: Some(c),
            ..
        }) if *generation == id.generation
            && c.app_knows
            && c.end.is_none_or(|e| e == End::Orderly) =>
        {
            Ok(c)
        }
        _ => Err(ConnError::InvalidId),
    }
}

/// The port allocator's destination of a tuple.
fn dest_key(tuple: &FourTuple) -> DestKey {
    DestKey {
        local: *tuple.local.ip(),
        remote: *tuple.remote.ip(),
        remote_port: tuple.remote.port(),
    }
}

#[cfg(test)]
impl Endpoint {
    /// Test fixture (smoltcp style): install a connection on `tuple` with our
    /// ISS `iss`, shaped by `build` into any state (IRS, windows, options,
    /// sequence variables). The application knows its id.
    pub(crate) fn install_fixture(
        &mut self,
        tuple: FourTuple,
        iss: super::seq::Seq,
        now: Instant,
        build: impl FnOnce(&mut Connection),
    ) -> ConnId {
        let (index, generation) = self.alloc_slot().expect("a free slot");
        let id = ConnId { index, generation };
        let ts_offset = self.keys.ts_offset(tuple);
        let (send, recv) = self.take_buffers();
        let mut conn = Connection::new_active(id, tuple, iss, ts_offset, &self.config, send, recv);
        conn.syn_pending = false;
        build(&mut conn);
        self.install(index, conn, now);
        id
    }

    /// Test access to a connection's internals.
    pub(crate) fn conn_for_test(&mut self, id: ConnId) -> &mut Connection {
        self.conn_mut(id).expect("a live connection")
    }
}
