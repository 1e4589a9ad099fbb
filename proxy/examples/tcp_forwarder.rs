//! The floor we measure the proxy against: a zero-parsing epoll TCP
//! forwarder. Each client gets its own upstream connection; every readable
//! event is one read and one write to the other side. It understands nothing
//! of HTTP, so it is the cheapest a proxy on these system calls can be.
//!
//! Used by `ci/bench_peers.py --proxies ...,forwarder` only; not a product.
//! Usage: tcp_forwarder LISTEN_ADDR BACKEND_ADDR

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);

/// One side of a pair. Tokens are `2 * pair` (client) and `2 * pair + 1`
/// (upstream); bytes a peer could not take yet wait in `pending`.
struct Side {
    stream: TcpStream,
    pending: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tcp_forwarder LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR");
    let backend: SocketAddr = args[2].parse().expect("BACKEND_ADDR");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut pairs: Slab<[Side; 2]> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&mut listener, &poll, &mut pairs, backend)?;
                continue;
            }
            let (pair, side) = (event.token().0 / 2, event.token().0 % 2);
            if !pairs.contains(pair) {
                continue;
            }
            if !forward(&mut pairs[pair], side, &mut buf, event.is_read_closed()) {
                let [a, b] = pairs.remove(pair);
                drop((a, b));
            }
        }
    }
}

fn accept_all(
    listener: &mut TcpListener,
    poll: &Poll,
    pairs: &mut Slab<[Side; 2]>,
    backend: SocketAddr,
) -> std::io::Result<()> {
    loop {
        let (client, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        let upstream = TcpStream::connect(backend)?;
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        let entry = pairs.vacant_entry();
        let key = entry.key();
        let sides = entry.insert([
            Side {
                stream: client,
                pending: Vec::new(),
            },
            Side {
                stream: upstream,
                pending: Vec::new(),
            },
        ]);
        for (i, side) in sides.iter_mut().enumerate() {
            poll.registry().register(
                &mut side.stream,
                Token(2 * key + i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
    }
}

/// Flush what waits for `side`, then move everything readable from `side` to
/// its peer. False when the pair is done. `read_closed` (the peer's FIN came
/// with this event) turns off the short-read shortcut so the EOF is seen.
fn forward(sides: &mut [Side; 2], side: usize, buf: &mut [u8], read_closed: bool) -> bool {
    let (from, to) = if side == 0 {
        let (a, b) = sides.split_at_mut(1);
        (&mut a[0], &mut b[0])
    } else {
        let (a, b) = sides.split_at_mut(1);
        (&mut b[0], &mut a[0])
    };
    if !from.pending.is_empty() && !flush(from) {
        return false;
    }
    loop {
        let n = match from.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if !to.pending.is_empty() {
            to.pending.extend_from_slice(&buf[..n]);
            continue;
        }
        match to.stream.write(&buf[..n]) {
            Ok(w) if w < n => to.pending.extend_from_slice(&buf[w..n]),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => to.pending.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
        if n < buf.len() && !read_closed {
            // A short read drained the socket (edge-triggered: the next
            // arrival raises a new event), so skip the read that would
            // only say EAGAIN — the same shortcut the proxy takes.
            return true;
        }
    }
}

fn flush(side: &mut Side) -> bool {
    while !side.pending.is_empty() {
        match side.stream.write(&side.pending) {
            Ok(0) => return false,
            Ok(w) => {
                side.pending.drain(..w);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}
