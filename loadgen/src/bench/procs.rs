//! Every process the bench starts, and the guarantee that it stops: each child
//! leads its own process group (so its workers and shards go with it), is
//! recorded in a registry the Ctrl-C handler also reads, and is signalled
//! (SIGTERM, then SIGKILL after a grace period) when the `Children` guard drops.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BenchError;

/// Process groups alive right now; the signal handler kills these.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// How long a child may take to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Installs the Ctrl-C / SIGTERM handler: stop every child group, then exit 130.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("\nloadgen bench: interrupted; stopping everything it started");
        let groups: Vec<i32> = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
        kill_groups(&groups);
        std::process::exit(130);
    });
}

fn register(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push(pgid);
    }
}

fn unregister(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|&p| p != pgid);
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// SIGTERM each group, wait up to GRACE for all to be gone, SIGKILL the rest.
fn kill_groups(groups: &[i32]) {
    for &g in groups {
        // SAFETY: signalling a process group we created; a stale id only returns ESRCH.
        unsafe { libc::kill(-g, libc::SIGTERM) };
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && groups.iter().any(|&g| group_alive(g)) {
        reap_any();
        std::thread::sleep(Duration::from_millis(50));
    }
    for &g in groups {
        if group_alive(g) {
            // SAFETY: as above.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
    }
}

/// Reaps exited direct children so `kill(-g, 0)` stops seeing zombies.
fn reap_any() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on any child never blocks.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Prepares a command: its own process group, and SIGTERM if the bench dies
/// without running its cleanup (e.g. SIGKILL).
pub fn detach(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd
}

/// A long-lived child (backend, proxy) owned by a `Children` guard.
pub struct Managed {
    pub name: String,
    pub child: Child,
}

impl Managed {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Owns the long-lived children; dropping it stops them all.
#[derive(Default)]
pub struct Children {
    list: Vec<Managed>,
}

impl Children {
    /// Starts `cmd` in its own group; stdout piped so a "listening on" line can be read.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<&mut Managed, BenchError> {
        detach(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Start(format!("{name}: cannot start {cmd:?}: {e}")))?;
        register(child.id() as i32);
        self.list.push(Managed {
            name: name.to_string(),
            child,
        });
        Ok(self.list.last_mut().expect("just pushed"))
    }

    /// Checks every child is still running; names the first that is not.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        for m in &mut self.list {
            if let Ok(Some(status)) = m.child.try_wait() {
                return Err(BenchError::Start(format!(
                    "{} (pid {}) exited early: {status}; see its log in the run directory",
                    m.name,
                    m.child.id()
                )));
            }
        }
        Ok(())
    }

    pub fn stop_all(&mut self) {
        let groups: Vec<i32> = self.list.iter().map(|m| m.pid() as i32).collect();
        kill_groups(&groups);
        for m in &mut self.list {
            let _ = m.child.wait();
            unregister(m.pid() as i32);
        }
        self.list.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A short-lived child (one `loadgen run`); killed with its group if dropped early.
pub struct Job {
    child: Option<Child>,
}

impl Job {
    pub fn spawn(cmd: &mut Command) -> Result<Job, BenchError> {
        detach(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Start(format!("cannot start {cmd:?}: {e}")))?;
        register(child.id() as i32);
        Ok(Job { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits for the job; returns its exit code and captured stdout.
    pub fn wait_output(mut self) -> Result<(Option<i32>, String), BenchError> {
        let mut child = self.child.take().expect("job not waited twice");
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            let _ = so.read_to_string(&mut out);
        }
        let status = child
            .wait()
            .map_err(|e| BenchError::Start(format!("waiting for loadgen run: {e}")))?;
        unregister(child.id() as i32);
        Ok((status.code(), out))
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_groups(&[c.id() as i32]);
            let _ = c.wait();
            unregister(c.id() as i32);
        }
    }
}

/// Reads a child's stdout until a line containing `listening on ADDR`; returns ADDR.
/// The rest of its stdout is drained by a thread so the child never blocks on a full pipe.
pub fn read_listen_addr(m: &mut Managed, timeout: Duration) -> Result<String, BenchError> {
    let stdout = m
        .child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Start(format!("{}: stdout not piped", m.name)))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !sent {
                        if let Some(rest) = line.split("listening on ").nth(1) {
                            let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                            let _ = tx.send(addr);
                            sent = true;
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(timeout).map_err(|_| {
        BenchError::Start(format!(
            "{} printed no `listening on` line within {timeout:?}; see its log in the run directory",
            m.name
        ))
    })
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_port(addr: &str, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| BenchError::Start(format!("bad address {addr}: {e}")))?;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(300)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::Start(format!(
        "nothing listens on {addr} after {timeout:?}"
    )))
}

/// A free loopback port (bound then released; peers get a fixed port in their config).
pub fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Start(format!("cannot find a free port: {e}")))?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}
