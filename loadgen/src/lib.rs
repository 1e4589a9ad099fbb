//! loadgen: an HTTP/1.1 load generator and benchmark backend on mio.
//! `main.rs` parses the command line; everything it calls lives here.

pub mod backend;
pub mod http1;
pub mod sys;

/// Bytes a connection keeps only while it must (a split head, unsent data).
/// Boxed so the idle case costs one pointer (8 bytes), not a Vec (24 bytes):
/// per-connection state is the budget at 100k connections.
#[allow(clippy::box_collection)]
pub type Spill = Box<Vec<u8>>;
