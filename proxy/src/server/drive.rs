//! Driving a client connection: every step it can take now, in order
//! (read the client, start the next request, exchange with the backend,
//! write the client, finish the response, close), until none makes
//! progress. Each step lives with its phase: `request.rs`, `exchange.rs`,
//! `response.rs`; the deadline a busy connection gets is `deadlines.rs`.
//!
//! Readiness is edge-triggered: `ready` flags remember that a socket may have
//! more to give until a read or write comes back short or WouldBlock.

use super::conn::{Entry, Exchange};
use super::event_loop::EventLoop;

/// Whether a connection stays after this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Keep,
    Close,
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Progress,
    Blocked,
    Close,
}

impl EventLoop {
    /// Makes every bit of progress a client connection can make now.
    pub(super) fn drive(&mut self, ck: usize) {
        let Some(Entry::Client(c)) = self.slab.get_mut(ck) else {
            return;
        };
        let taken = c.ex.take();
        let ex = match taken {
            Some(ex) => ex,
            None => self.new_exchange(),
        };
        self.resume(ck, ex);
    }

    /// Runs the steps, then parks the exchange or closes the connection.
    pub(super) fn resume(&mut self, ck: usize, mut ex: Box<Exchange>) {
        match self.pump(ck, &mut ex) {
            Flow::Keep => self.park(ck, ex),
            Flow::Close => self.close_client(ck, Some(ex)),
        }
    }

    fn pump(&mut self, ck: usize, ex: &mut Exchange) -> Flow {
        loop {
            let mut progress = false;
            // Each step runs only if the ones before it left the connection open.
            macro_rules! step {
                ($e:expr) => {
                    match $e {
                        Step::Close => return Flow::Close,
                        Step::Progress => progress = true,
                        Step::Blocked => {}
                    }
                };
            }
            step!(self.read_client(ck, ex));
            if ex.client_eof && ex.active && !ex.tunnel && !ex.req_body.is_scanned() {
                return Flow::Close; // the client left mid-request: nothing to answer
            }
            step!(self.next_request(ck, ex));
            step!(self.pump_upstream(ck, ex));
            step!(self.write_client(ck, ex));
            step!(self.finish_response(ck, ex));
            step!(self.pump_closing(ck, ex));
            if !progress {
                let pending = ex.pending_to_client();
                let inbuf_empty = ex.inbuf.as_ref().is_none_or(|b| b.is_empty());
                if ex.client_eof && !ex.active && !pending && inbuf_empty {
                    return Flow::Close;
                }
                return Flow::Keep;
            }
        }
    }
}
