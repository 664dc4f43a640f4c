//! `echo`: returns every byte; closes after the peer closes (passive close).

use super::{App, Ctx, pump_back};
use crate::tcp::{ConnId, Event, State};

pub struct Echo {
    scratch: Box<[u8]>,
}

impl Default for Echo {
    fn default() -> Self {
        Echo {
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl App for Echo {
    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event) {
        match event {
            Event::Readable | Event::Writable | Event::PeerClosed => {
                if pump_back(ctx, id, &mut self.scratch).is_err() {
                    return;
                }
                // Everything the peer sent before its FIN is echoed (or
                // queued): our side closes now.
                if ctx.state(id) == Some(State::CloseWait) && ctx.recv_available(id) == 0 {
                    let _ = ctx.close(id);
                }
            }
            _ => {}
        }
    }
}
