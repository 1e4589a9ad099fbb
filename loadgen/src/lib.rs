//! loadgen: an HTTP/1.1 load generator and benchmark backend on mio.
//! `main.rs` parses the command line; everything it calls lives here.
//! Data flow: `app` → `session` → `engine` workers (or `shard` processes)
//! → `stats::Collector` → progress / CSV / `hdrlog` → `report` + `threshold`.

pub mod app;
pub mod backend;
pub mod bench;
pub mod engine;
pub mod hdrlog;
pub mod http1;
pub mod journey;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod session;
pub mod shard;
pub mod source;
pub mod stats;
pub mod sys;
pub mod target;
pub mod threshold;
pub mod tls;

/// Bytes a connection keeps only while it must (a split head, unsent data).
/// Boxed so the idle case costs one pointer (8 bytes), not a Vec (24 bytes):
/// per-connection state is the budget at 100k connections.
#[allow(clippy::box_collection)]
pub type Spill = Box<Vec<u8>>;
