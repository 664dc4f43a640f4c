//! Engine tests: protocol traces between two endpoints driven segment by
//! segment with a virtual clock (smoltcp style, one file per topic), and a
//! lossy-network simulation (quinn's `Pair` style).

mod buffers;
mod bulk;
mod close;
mod fixture;
mod fuzz_found;
mod handshake;
mod hostile;
mod keepalive;
mod limits;
mod link;
mod pair;
mod pmtu;
mod relay;
mod reliability;
mod rfc5961;
mod sack;
mod sim;
mod sizes;
mod time_wait;
mod wrap;
