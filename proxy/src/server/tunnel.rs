//! The tunnel phase: after a `101 Switching Protocols` both directions are
//! opaque byte streams, copied by the same steps as a body framed by the
//! connection's close, until either side is done.

use super::conn::Exchange;
use super::drive::Step;
use crate::http::body::{BodyScan, Framing};

/// The backend switched protocols: from now on the exchange is a tunnel.
pub(super) fn enter(ex: &mut Exchange) {
    ex.tunnel = true;
    ex.req_body = BodyScan::new(Framing::UntilClose, false);
    ex.resp_body = Some(BodyScan::new(Framing::UntilClose, false));
}

/// A tunnel ends when one side has closed and everything it sent was
/// delivered; the connection closes then (nothing follows a tunnel).
pub(super) fn finished(ex: &Exchange) -> Step {
    let client_done = ex.client_eof && ex.inbuf.as_ref().is_none_or(|b| b.is_empty());
    let upstream_done = ex.upstream_eof && !ex.pending_to_client();
    if client_done || upstream_done {
        Step::Close
    } else {
        Step::Blocked
    }
}
