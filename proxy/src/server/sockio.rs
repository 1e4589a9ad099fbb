//! Reads and writes on the data path's sockets as direct system calls
//! (rustix). glibc's recv(2) and send(2) are cancellation points: each call
//! flips the thread's cancel state with two atomic updates around the
//! system call, which shows on a path of four system calls per request.

use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;
use rustix::net::{RecvFlags, SendFlags};

/// One recv(2) into `buf`; Ok(0) is the peer's EOF.
pub(super) fn recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::net::recv(stream, buf, RecvFlags::empty()) {
        Ok((n, _)) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// Writes `head` then `body`. One non-empty slice goes out with send(2);
/// writev(2) costs the kernel an iovec import and the VFS write path on top.
/// MSG_NOSIGNAL: a peer that reset gets EPIPE here, never a SIGPIPE.
pub(super) fn send_two(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let one = match (head.is_empty(), body.is_empty()) {
        (_, true) => head,
        (true, false) => body,
        (false, false) => return stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]),
    };
    rustix::net::send(&*stream, one, SendFlags::NOSIGNAL).map_err(io::Error::from)
}
