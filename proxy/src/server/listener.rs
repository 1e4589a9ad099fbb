//! Listening sockets: one per event loop on the same address, with
//! SO_REUSEPORT so the kernel spreads new connections over the loops.
//! Sockets may come ready-made: from the process being upgraded
//! (`upgrade.rs`) or from the master of worker processes.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Backlog: the kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 65535;

pub fn bind_reuseport(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    Ok(mio::net::TcpListener::from_std(bind_std(addr)?))
}

/// A SO_REUSEPORT listener on `addr`, non-blocking.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// `count` listeners on `listen`: the inherited ones first (when they are
/// on that address; port 0 takes theirs), new ones bound for the rest.
/// Inherited sockets left over are closed: a socket nobody accepts on would
/// still be given new connections by SO_REUSEPORT.
pub fn listeners_for(
    listen: SocketAddr,
    count: usize,
    inherited: Vec<std::net::TcpListener>,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = listen;
    for l in inherited {
        let theirs = l.local_addr()?;
        let fits =
            theirs.ip() == listen.ip() && (listen.port() == 0 || listen.port() == theirs.port());
        if !fits || (listen.port() == 0 && addr.port() != 0 && theirs.port() != addr.port()) {
            tracing::warn!(
                "an inherited socket on {theirs} is not on server.listen {listen}: closed \
                 (connections waiting on it are refused)"
            );
            continue;
        }
        if out.len() == count {
            tracing::warn!(
                "{theirs}: more inherited sockets than event loops ({count}): the rest closed"
            );
            continue;
        }
        l.set_nonblocking(true)?;
        addr = theirs;
        out.push(l);
    }
    while out.len() < count {
        let l = bind_std(addr)?;
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}
