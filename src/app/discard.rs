//! `discard`: reads and drops everything; closes after the peer closes.

use super::{App, Ctx};
use crate::tcp::{ConnId, Event, State};

pub struct Discard {
    scratch: Box<[u8]>,
}

impl Default for Discard {
    fn default() -> Self {
        Discard {
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl App for Discard {
    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event) {
        if let Event::Readable | Event::PeerClosed = event {
            while let Ok(n) = ctx.recv(id, &mut self.scratch) {
                if n == 0 {
                    break;
                }
            }
            if ctx.state(id) == Some(State::CloseWait) {
                let _ = ctx.close(id);
            }
        }
    }
}
