//! The data plane: one mio event loop per thread, share-nothing. Each loop
//! owns a SO_REUSEPORT listener, its connections (a slab), its upstream
//! keep-alive pool, its buffers and its counters.
//!
//! The connection life cycle is described in `LIFECYCLE.md` beside this file.

mod conn;
mod event_loop;
mod listener;
mod proxy;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::stats::LoopStats;

pub use event_loop::EventLoop;

/// A running proxy: its address and its loops.
pub struct Server {
    pub local_addr: SocketAddr,
    pub stats: Vec<Arc<LoopStats>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds every loop's listener (port 0 resolves to one port shared by
    /// all loops) and starts the loops on their threads.
    pub fn start(config: Config) -> io::Result<Server> {
        let config = Arc::new(config);
        let first = listener::bind_reuseport(config.server.listen)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..config.server.workers.max(1) {
            listeners.push(listener::bind_reuseport(local_addr)?);
        }
        let open_connections = Arc::new(AtomicUsize::new(0));
        let mut stats = Vec::new();
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let loop_stats = Arc::new(LoopStats::default());
            stats.push(loop_stats.clone());
            let mut event_loop = EventLoop::new(
                config.clone(),
                listener,
                loop_stats,
                open_connections.clone(),
            )?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("loop-{i}"))
                    .spawn(move || event_loop.run())?,
            );
        }
        Ok(Server {
            local_addr,
            stats,
            threads,
        })
    }

    /// Blocks until every loop has stopped (they run until the process ends).
    pub fn wait(self) -> io::Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|_| io::Error::other("event loop panicked"))??;
        }
        Ok(())
    }
}
