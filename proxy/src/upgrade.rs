//! Upgrading the binary without dropping a connection (SIGUSR2).
//!
//! The running proxy starts the binary now at its path as a new process and
//! hands it, over a Unix socket pair (SCM_RIGHTS), the listening sockets it
//! serves on and the admin API's. The new process serves on those very
//! sockets — the connections waiting in their accept queues included — and
//! says `ready`; only then does the old one close its copies and drain. If
//! the new one fails (a bad configuration on disk, a binary that does not
//! start) the old one never stopped accepting and goes on serving.
//!
//! Protocol on the socket pair, old → new: one line
//! `speedmimi-upgrade 1 listeners=N admin=0|1 pid=OLD\n`, then the N
//! listeners and the admin listener, in messages of one byte carrying up to
//! `FDS_PER_MESSAGE` descriptors each. New → old: `ready\n` once it serves.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const MAGIC: &str = "speedmimi-upgrade 1";
const FDS_PER_MESSAGE: usize = 32;
/// How long the new process may take to say `ready` (it reads its
/// configuration, starts its loops and, with `processes: N`, its workers).
pub const READY_WAIT: Duration = Duration::from_secs(30);

static EXE: OnceLock<io::Result<PathBuf>> = OnceLock::new();

/// This binary's path, read once at start: once a new binary replaces the
/// file, /proc/self/exe names the deleted old one, and the path is what an
/// upgrade (and a worker restart) must run.
pub fn exe() -> io::Result<PathBuf> {
    match EXE.get_or_init(std::env::current_exe) {
        Ok(path) => Ok(path.clone()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

static IN_PROGRESS: AtomicBool = AtomicBool::new(false);
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// True once a new process serves in this one's place (this one drains).
pub fn handed_over() -> bool {
    HANDED_OVER.load(Acquire)
}

/// SIGUSR2: starts the new process and hands it `listeners` and `admin`,
/// in a thread of its own (the signal loop goes on). Once the new process
/// serves, this one gets SIGTERM and drains as usual; if it fails, this one
/// goes on serving and the log says why. One upgrade at a time.
pub fn begin(listeners: io::Result<Vec<OwnedFd>>, admin: Option<io::Result<OwnedFd>>) {
    if IN_PROGRESS.swap(true, Acquire) {
        tracing::warn!("SIGUSR2: an upgrade is already in progress");
        return;
    }
    let sockets = listeners.and_then(|l| Ok((l, admin.transpose()?)));
    let spawned = std::thread::Builder::new()
        .name("speedmimi-upgrade".into())
        .spawn(move || {
            let result = sockets.and_then(|(listeners, admin)| {
                let mut handover = Handover::start(&listeners, admin.as_ref().map(|f| f.as_fd()))?;
                let pid = handover.child.id();
                tracing::info!(
                    "SIGUSR2: started {} as pid {pid} with {} listening sockets; waiting for it to serve",
                    exe()?.display(),
                    listeners.len()
                );
                Ok((handover.wait_ready()?, pid))
            });
            match result {
                Ok((true, pid)) => {
                    HANDED_OVER.store(true, Release);
                    tracing::info!(
                        "upgrade: pid {pid} serves; pid {} stops accepting and drains",
                        std::process::id()
                    );
                    // SAFETY: kill(2) on this very process; SIGTERM runs the drain.
                    unsafe {
                        libc::kill(std::process::id() as i32, libc::SIGTERM);
                    }
                }
                Ok((false, pid)) => tracing::error!(
                    "upgrade failed: pid {pid} did not start serving (its log says why); \
                     this process goes on serving"
                ),
                Err(e) => {
                    tracing::error!("upgrade failed: {e}; this process goes on serving")
                }
            }
            IN_PROGRESS.store(false, Release);
        });
    if let Err(e) = spawned {
        tracing::error!("upgrade failed: no thread for it: {e}");
        IN_PROGRESS.store(false, Release);
    }
}

/// What a new process got from the old one.
pub struct Inherited {
    channel: UnixStream,
    pub listeners: Vec<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    pub old_pid: u32,
}

impl Inherited {
    /// Receives the sockets on `fd` (`--upgrade-fd`), inherited from the old process.
    pub fn receive(fd: RawFd) -> io::Result<Inherited> {
        // SAFETY: the old process passed this descriptor for us alone; it is
        // owned from here on (and closed with the channel).
        let mut channel = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(channel.as_fd())?;
        channel.set_read_timeout(Some(READY_WAIT))?;
        let header = read_line(&mut channel)?;
        let (listeners, admin, old_pid) = parse_header(&header).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upgrade: the running proxy sent {header:?}, not `{MAGIC} ...`: versions too far apart?"),
            )
        })?;
        let want = listeners + usize::from(admin);
        let mut fds = Vec::with_capacity(want);
        while fds.len() < want {
            let got = recv_fds(&channel, &mut fds)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("upgrade: {} of {want} sockets received", fds.len()),
                ));
            }
        }
        let admin = if admin {
            fds.pop().map(std::net::TcpListener::from)
        } else {
            None
        };
        Ok(Inherited {
            channel,
            listeners: fds.into_iter().map(std::net::TcpListener::from).collect(),
            admin,
            old_pid,
        })
    }

    /// Tells the old process that this one serves: it stops and drains.
    pub fn ready(mut self) -> io::Result<()> {
        self.channel.write_all(b"ready\n")
    }
}

fn parse_header(line: &str) -> Option<(usize, bool, u32)> {
    let rest = line.strip_prefix(MAGIC)?;
    let (mut listeners, mut admin, mut pid) = (None, None, None);
    for field in rest.split_whitespace() {
        match field.split_once('=')? {
            ("listeners", n) => listeners = n.parse().ok(),
            ("admin", a) => admin = Some(a == "1"),
            ("pid", p) => pid = p.parse().ok(),
            _ => {} // a newer sender's field: ignored
        }
    }
    Some((listeners?, admin?, pid?))
}

/// A new process being started by this one, its sockets handed over.
pub struct Handover {
    pub child: Child,
    channel: UnixStream,
}

impl Handover {
    /// Starts the binary at `exe()` with this process's arguments and hands
    /// it `listeners` and `admin`.
    pub fn start(listeners: &[OwnedFd], admin: Option<BorrowedFd<'_>>) -> io::Result<Handover> {
        let (ours, theirs) = UnixStream::pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut command = Command::new(exe()?);
        command
            .args(own_args())
            .arg("--upgrade-fd")
            .arg(theirs_fd.to_string());
        // SAFETY: fcntl is async-signal-safe; the child keeps this one
        // descriptor across exec (everything else is close-on-exec).
        unsafe {
            command.pre_exec(move || keep_across_exec(theirs_fd));
        }
        let child = command.spawn()?;
        drop(theirs);
        let mut handover = Handover {
            child,
            channel: ours,
        };
        if let Err(e) = handover.send(listeners, admin) {
            handover.abandon();
            return Err(e);
        }
        Ok(handover)
    }

    fn send(&mut self, listeners: &[OwnedFd], admin: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let header = format!(
            "{MAGIC} listeners={} admin={} pid={}\n",
            listeners.len(),
            u8::from(admin.is_some()),
            std::process::id()
        );
        self.channel.write_all(header.as_bytes())?;
        let mut all: Vec<BorrowedFd<'_>> = listeners.iter().map(|fd| fd.as_fd()).collect();
        all.extend(admin);
        for chunk in all.chunks(FDS_PER_MESSAGE) {
            send_fds(&self.channel, chunk)?;
        }
        Ok(())
    }

    /// Waits until the new process says `ready` (true), or exits, or
    /// `READY_WAIT` passes (false: it was killed).
    pub fn wait_ready(&mut self) -> io::Result<bool> {
        let deadline = Instant::now() + READY_WAIT;
        self.channel.set_read_timeout(Some(READY_WAIT))?;
        let line = read_line(&mut self.channel);
        match line {
            Ok(l) if l == "ready" => Ok(true),
            _ => {
                // EOF (it exited), a timeout or garbage: it does not serve.
                if Instant::now() >= deadline {
                    tracing::error!(
                        "upgrade: the new process did not say ready within {READY_WAIT:?}"
                    );
                }
                self.abandon();
                Ok(false)
            }
        }
    }

    fn abandon(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's arguments without a previous `--upgrade-fd N`.
fn own_args() -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--upgrade-fd" {
            args.next();
        } else if !arg.to_string_lossy().starts_with("--upgrade-fd=") {
            out.push(arg);
        }
    }
    out
}

fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upgrade channel closed",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "upgrade: header line too long",
    ))
}

fn send_fds(channel: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "upgrade: too many descriptors for one message",
        ));
    }
    rustix::net::sendmsg(
        channel,
        &[IoSlice::new(b"F")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one message's descriptors into `out`; 0 at EOF.
fn recv_fds(channel: &UnixStream, out: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if msg.bytes == 0 {
        return Ok(0);
    }
    let before = out.len();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            out.extend(fds);
        }
    }
    Ok((out.len() - before).max(1))
}

/// Clears close-on-exec on `fd`, in a child between fork and exec (only
/// fcntl: async-signal-safe), so the program it runs inherits it.
pub(crate) fn keep_across_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is touched.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks `fd` close-on-exec (an inherited descriptor is not: it was passed on purpose).
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// Tells systemd (Type=notify, NotifyAccess=all) that this process is now
/// the service's main process and serves; nothing without NOTIFY_SOCKET.
pub fn notify_systemd(main_pid: bool) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut text = String::from("READY=1\n");
    if main_pid {
        text.push_str(&format!("MAINPID={}\n", std::process::id()));
    }
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(text.as_bytes(), &addr))
    } else {
        socket.send_to(text.as_bytes(), PathBuf::from(&path))
    };
    if let Err(e) = sent {
        tracing::warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_counts_and_ignores_fields_it_does_not_know() {
        assert_eq!(
            parse_header("speedmimi-upgrade 1 listeners=4 admin=1 pid=77 later=x"),
            Some((4, true, 77))
        );
        assert_eq!(
            parse_header("speedmimi-upgrade 2 listeners=4 admin=1 pid=7"),
            None
        );
        assert_eq!(parse_header("speedmimi-upgrade 1 admin=0 pid=7"), None);
    }

    #[test]
    fn descriptors_cross_a_socket_pair_in_several_messages() {
        let (a, b) = UnixStream::pair().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..40)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            send_fds(&a, chunk).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 40 {
            assert!(recv_fds(&b, &mut got).unwrap() > 0);
        }
        for (l, fd) in listeners.iter().zip(got) {
            let same = std::net::TcpListener::from(fd);
            assert_eq!(same.local_addr().unwrap(), l.local_addr().unwrap());
        }
    }
}
