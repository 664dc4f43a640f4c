//! Active opens: choosing the local port (per destination, RFC 6056) and, when
//! the range is exhausted, reusing a TIME-WAIT tuple only when it is safe.

use super::{Endpoint, dest_key};
use crate::tcp::connection::Connection;
use crate::tcp::error::ConnectError;
use crate::tcp::id::{ConnId, FourTuple};
use crate::tcp::isn::{Keys, ts_clock};
use crate::tcp::ports::DestKey;
use crate::tcp::time::Instant;
use crate::tcp::timewait::TimeWait;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// How many of a destination's oldest TIME-WAIT tuples are examined for reuse.
const REUSE_CANDIDATES: usize = 8;

impl Endpoint {
    /// Open a connection from `local` (an ephemeral port is chosen) to `remote`.
    pub fn connect(
        &mut self,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Result<ConnId, ConnectError> {
        validate(local, remote)?;
        let key = DestKey {
            local,
            remote: *remote.ip(),
            remote_port: remote.port(),
        };
        let offset = self.keys.port_offset(local, *remote.ip(), remote.port());
        let by_tuple = &self.by_tuple;
        let time_wait = &self.time_wait;
        let port = self.ports.allocate(key, offset, |p| {
            let t = FourTuple {
                local: SocketAddrV4::new(local, p),
                remote,
            };
            !by_tuple.contains_key(&t) && time_wait.get(&t).is_none()
        });
        let port = match port {
            Some(p) => p,
            None => match self.reuse_time_wait(key, remote, now) {
                Some(p) => p,
                None => {
                    self.stats.connect_no_port += 1;
                    return Err(ConnectError::NoPort);
                }
            },
        };
        let tuple = FourTuple {
            local: SocketAddrV4::new(local, port),
            remote,
        };
        self.open(tuple, true, now)
    }

    /// Open a connection on an explicit 4-tuple (also self-connect and
    /// simultaneous-open setups). A tuple in TIME-WAIT is reused only when safe.
    pub fn connect_from(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Result<ConnId, ConnectError> {
        validate(*local.ip(), remote)?;
        if local.port() == 0 {
            return Err(ConnectError::InvalidAddress);
        }
        let tuple = FourTuple { local, remote };
        if self.by_tuple.contains_key(&tuple) {
            return Err(ConnectError::TupleInUse);
        }
        let mut holds_port = false;
        if let Some(e) = self.time_wait.get(&tuple).copied() {
            if !(self.config.reuse && self.reuse_is_safe(&tuple, &e, now)) {
                return Err(ConnectError::TupleInUse);
            }
            self.time_wait.remove(&tuple);
            self.stats.time_wait_recycled_active += 1;
            holds_port = e.holds_port;
        }
        if !holds_port {
            let offset = self
                .keys
                .port_offset(*local.ip(), *remote.ip(), remote.port());
            holds_port = self.ports.mark(dest_key(&tuple), local.port(), offset);
        }
        self.open(tuple, holds_port, now)
    }

    fn open(
        &mut self,
        tuple: FourTuple,
        holds_port: bool,
        now: Instant,
    ) -> Result<ConnId, ConnectError> {
        let Some((index, generation)) = self.alloc_slot() else {
            if holds_port {
                self.ports.release(dest_key(&tuple), tuple.local.port());
            }
            return Err(ConnectError::TooManyConnections);
        };
        let id = ConnId { index, generation };
        let iss = self.keys.isn(tuple, now);
        let ts_offset = self.keys.ts_offset(tuple);
        let (send, recv) = self.take_buffers();
        let mut conn = Connection::new_active(id, tuple, iss, ts_offset, &self.config, send, recv);
        conn.holds_port = holds_port;
        self.stats.opened += 1;
        self.install(index, conn, now);
        Ok(id)
    }

    /// Safe to start a new incarnation of `tuple` over its TIME-WAIT entry `e`
    /// (docs/ARCHITECTURE.md, "TIME_WAIT recycling"): timestamps were in use, the entry is older than
    /// `reuse_delay`, our new ISN is past the old SND.NXT and our timestamp
    /// clock for the tuple is past the last TSval sent, so the peer's PAWS and
    /// sequence checks tell the incarnations apart.
    fn reuse_is_safe(&self, tuple: &FourTuple, e: &TimeWait, now: Instant) -> bool {
        reuse_is_safe(&self.keys, self.config.reuse_delay, tuple, e, now)
    }

    /// After `connect` to `remote` failed with `NoPort`: the earliest moment a
    /// retry can succeed through TIME-WAIT reuse, i.e. when the oldest entry
    /// to that destination that negotiated timestamps reaches `reuse_delay`.
    /// `None` when reuse is off or no entry could ever qualify, so a caller
    /// can tell "wait a moment" from "this will not work".
    pub fn next_reuse_at(&mut self, local: Ipv4Addr, remote: SocketAddrV4) -> Option<Instant> {
        if !self.config.reuse {
            return None;
        }
        let key = DestKey {
            local,
            remote: *remote.ip(),
            remote_port: remote.port(),
        };
        let delay = self.config.reuse_delay;
        let time_wait = &self.time_wait;
        let records = self.ports.time_wait_records(key)?;
        records.iter().find_map(|&(port, entered)| {
            let tuple = FourTuple {
                local: SocketAddrV4::new(local, port),
                remote,
            };
            let e = time_wait.get(&tuple)?;
            (e.entered == entered && e.timestamps).then(|| entered.saturating_add(delay))
        })
    }

    /// No port is free to `key`: take the oldest safe TIME-WAIT tuple, if any.
    fn reuse_time_wait(&mut self, key: DestKey, remote: SocketAddrV4, now: Instant) -> Option<u16> {
        if !self.config.reuse {
            return None;
        }
        let tuple_of = |port: u16| FourTuple {
            local: SocketAddrV4::new(key.local, port),
            remote,
        };
        let time_wait = &self.time_wait;
        let records = self.ports.time_wait_records(key)?;
        // Stale records (entries expired, evicted or recycled) leave from the front.
        while let Some(&(port, entered)) = records.front() {
            if time_wait
                .get(&tuple_of(port))
                .is_some_and(|e| e.entered == entered)
            {
                break;
            }
            records.pop_front();
        }
        let mut chosen = None;
        for (i, &(port, entered)) in records.iter().enumerate().take(REUSE_CANDIDATES) {
            let tuple = tuple_of(port);
            let Some(e) = time_wait.get(&tuple) else {
                continue;
            };
            if e.entered != entered {
                continue;
            }
            if now.saturating_duration_since(entered) < self.config.reuse_delay {
                break; // the rest are younger still
            }
            if reuse_is_safe(&self.keys, self.config.reuse_delay, &tuple, e, now) {
                chosen = Some(i);
                break;
            }
        }
        let records = self.ports.time_wait_records(key)?;
        let (port, _) = records.remove(chosen?)?;
        // The new connection inherits the entry's hold on the port.
        self.time_wait.remove(&tuple_of(port));
        self.stats.time_wait_recycled_active += 1;
        Some(port)
    }
}

fn reuse_is_safe(
    keys: &Keys,
    reuse_delay: Duration,
    tuple: &FourTuple,
    e: &TimeWait,
    now: Instant,
) -> bool {
    if !e.timestamps || now.saturating_duration_since(e.entered) < reuse_delay {
        return false;
    }
    let iss = keys.isn(*tuple, now);
    let tsval = ts_clock(now, keys.ts_offset(*tuple));
    iss > e.snd_nxt && (tsval.wrapping_sub(e.ts_last) as i32) > 0
}

fn validate(local: Ipv4Addr, remote: SocketAddrV4) -> Result<(), ConnectError> {
    let bad = |ip: Ipv4Addr| ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast();
    if remote.port() == 0 || bad(local) || bad(*remote.ip()) {
        return Err(ConnectError::InvalidAddress);
    }
    Ok(())
}
