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

/// A SO_REUSEPORT listener on `addr`, non-blocking, with TCP_NODELAY:
/// Linux copies it to every accepted socket, one setsockopt per new
/// connection fewer (`accept.rs` sets it itself elsewhere).
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
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
        // An older binary may not have set it on the socket it hands over.
        socket2::SockRef::from(&l).set_tcp_nodelay(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_nodelay(l: &std::net::TcpListener) -> bool {
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let (conn, _) = l.accept().unwrap();
        conn.nodelay().unwrap()
    }

    /// `accept.rs` relies on it on Linux: no setsockopt per connection.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(accepted_nodelay(&l));
        // A socket handed over without it gets it too.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let given = listeners_for(addr, 1, vec![plain]).unwrap();
        assert!(accepted_nodelay(&given[0]));
    }
}
