//! One shard's TCP endpoint: connections, listeners, TIME_WAIT entries, ports, timers.

use super::{
    Config, ConnError, ConnId, ConnectError, Event, FourTuple, Instant, State, Stats, Transmit,
};
use crate::wire::TcpRepr;
use std::net::{Ipv4Addr, SocketAddrV4};

/// All TCP state of one shard.
pub struct Endpoint {
    #[allow(dead_code)]
    config: Config,
    #[allow(dead_code)]
    secret: [u8; 16],
    stats: Stats,
}

impl Endpoint {
    pub fn new(config: Config, secret: [u8; 16]) -> Self {
        Endpoint {
            config,
            secret,
            stats: Stats::default(),
        }
    }

    pub fn listen(&mut self, _port: u16) {}
    pub fn unlisten(&mut self, _port: u16) {}

    pub fn connect(
        &mut self,
        _local: Ipv4Addr,
        _remote: SocketAddrV4,
        _now: Instant,
    ) -> Result<ConnId, ConnectError> {
        Err(ConnectError::NoPort)
    }
    pub fn connect_from(
        &mut self,
        _local: SocketAddrV4,
        _remote: SocketAddrV4,
        _now: Instant,
    ) -> Result<ConnId, ConnectError> {
        Err(ConnectError::NoPort)
    }

    pub fn handle_segment(
        &mut self,
        _local: Ipv4Addr,
        _remote: Ipv4Addr,
        _tcp: &TcpRepr,
        _payload: &[u8],
        _now: Instant,
    ) {
    }
    pub fn handle_timeout(&mut self, _now: Instant) {}

    pub fn poll_transmit(&mut self, _now: Instant, _payload_buf: &mut [u8]) -> Option<Transmit> {
        None
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        None
    }

    pub fn send(&mut self, _id: ConnId, _data: &[u8]) -> Result<usize, ConnError> {
        Err(ConnError::InvalidId)
    }
    pub fn recv(&mut self, _id: ConnId, _buf: &mut [u8]) -> Result<usize, ConnError> {
        Err(ConnError::InvalidId)
    }
    pub fn shutdown(&mut self, _id: ConnId) -> Result<(), ConnError> {
        Err(ConnError::InvalidId)
    }
    pub fn close(&mut self, _id: ConnId) -> Result<(), ConnError> {
        Err(ConnError::InvalidId)
    }
    pub fn abort(&mut self, _id: ConnId) -> Result<(), ConnError> {
        Err(ConnError::InvalidId)
    }

    pub fn state(&self, _id: ConnId) -> Option<State> {
        None
    }
    pub fn tuple(&self, _id: ConnId) -> Option<FourTuple> {
        None
    }
    pub fn send_capacity(&self, _id: ConnId) -> usize {
        0
    }
    pub fn recv_available(&self, _id: ConnId) -> usize {
        0
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn connection_count(&self) -> usize {
        0
    }
    pub fn established_count(&self) -> usize {
        0
    }
    pub fn time_wait_count(&self) -> usize {
        0
    }
}
