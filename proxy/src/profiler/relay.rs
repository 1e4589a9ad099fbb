//! How a master has its worker processes profile themselves. The master
//! writes a request (id, seconds, which worker) into the shared board; each
//! worker's control thread sees it within one poll (100 ms), samples its
//! own process on a thread of its own (never an event loop), and writes the
//! protobuf to a file beside the board named by request id and pid. The
//! master waits at most `seconds + GRACE`, reads the files, deletes them,
//! and closes the request, which also stops a worker still sampling.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Acquire;
use std::time::{Duration, Instant};

use pprof::protos::Message;

use super::{sample, Profile, ProfileError};
use crate::control::board::Board;
use crate::control::shm;

/// Time beyond the profile's seconds a worker gets to notice the request
/// (one poll), symbolize its samples and write them.
pub const GRACE: Duration = Duration::from_secs(5);
/// `target` when every worker is asked.
const ALL: u32 = u32::MAX;
/// How often the master looks for answers.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// One worker's answer to the master.
#[derive(Debug)]
pub struct WorkerProfile {
    pub index: usize,
    /// 0 when the worker was not running.
    pub pid: u32,
    pub result: Result<Profile, ProfileError>,
}

/// Master: asks workers `0..processes` (or only `only`) for a profile of
/// `seconds` and waits for their answers, at most `seconds + GRACE`, or
/// until `stopping` says so. Every worker asked gets an entry, in index
/// order: its profile or why there is none. Requests must not overlap (the
/// caller takes one profile at a time).
pub fn collect(
    board: &Board,
    board_path: &Path,
    processes: usize,
    only: Option<usize>,
    seconds: u64,
    stopping: &dyn Fn() -> bool,
) -> Vec<WorkerProfile> {
    sweep(board_path);
    let request = &board.profile;
    let asked: Vec<usize> = match only {
        Some(k) => vec![k],
        None => (0..processes).collect(),
    };
    let mut answers: Vec<WorkerProfile> = asked
        .iter()
        .map(|&index| WorkerProfile {
            index,
            pid: board.processes[index].pid.load(Acquire),
            result: Err(ProfileError::Failed("did not answer".into())),
        })
        .collect();
    let id = request.ask(seconds, only.map_or(ALL, |k| k as u32));
    let waited = Duration::from_secs(seconds) + GRACE;
    let deadline = Instant::now() + waited;
    let mut pending: Vec<usize> = Vec::new();
    for (i, answer) in answers.iter_mut().enumerate() {
        if answer.pid == 0 {
            answer.result = Err(ProfileError::Failed("not running (being restarted)".into()));
        } else {
            pending.push(i);
        }
    }
    while !pending.is_empty() {
        pending.retain(|&i| {
            let answer = &mut answers[i];
            if let Some(result) = read_answer(board_path, id, answer.pid) {
                answer.result = result;
                return false;
            }
            if board.processes[answer.index].pid.load(Acquire) != answer.pid {
                answer.result = Err(ProfileError::Failed(
                    "exited during the profile (its replacement was not asked)".into(),
                ));
                return false;
            }
            true
        });
        if pending.is_empty() {
            break;
        }
        let why = if stopping() {
            "the admin API is stopping".to_string()
        } else if Instant::now() >= deadline {
            format!("did not answer within {} s", waited.as_secs())
        } else {
            std::thread::sleep(WAIT_STEP);
            continue;
        };
        for &i in &pending {
            answers[i].result = Err(ProfileError::Failed(why.clone()));
        }
        break;
    }
    request.close(id);
    sweep(board_path);
    answers
}

/// Removes every profile file of this master (answers of earlier requests
/// that came too late included).
pub fn sweep(board_path: &Path) {
    let (Some(dir), Some(prefix)) = (board_path.parent(), file_prefix(board_path)) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `speedmimi-PID-RANDOM.profile-` for the board `speedmimi-PID-RANDOM.board`.
fn file_prefix(board_path: &Path) -> Option<String> {
    let stem = board_path.file_stem()?.to_string_lossy();
    Some(format!("{stem}.profile-"))
}

/// The answer file of worker `pid` for request `id`: `.pb` holds the
/// protobuf, `.err` why there is none.
fn answer_path(board_path: &Path, id: u64, pid: u32, ext: &str) -> PathBuf {
    board_path.with_extension(format!("profile-{id}-{pid}.{ext}"))
}

/// First line of an `.err` file when the worker was already profiling.
const BUSY: &str = "busy";

fn read_answer(board_path: &Path, id: u64, pid: u32) -> Option<Result<Profile, ProfileError>> {
    if let Ok(bytes) = shm::read_own(&answer_path(board_path, id, pid, "pb")) {
        return Some(Profile::decode(&bytes[..]).map_err(|e| {
            ProfileError::Failed(format!("sent a profile that does not decode: {e}"))
        }));
    }
    let bytes = shm::read_own(&answer_path(board_path, id, pid, "err")).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Some(Err(match text.split_once('\n') {
        Some((BUSY, _)) => ProfileError::Busy,
        Some((_, why)) => ProfileError::Failed(why.to_string()),
        None => ProfileError::Failed(text),
    }))
}

/// Worker: watches the board for requests meant for this worker.
pub struct Responder {
    board: &'static Board,
    board_path: PathBuf,
    index: usize,
    /// Latest request id seen; requests made before this worker started
    /// (by a master waiting for the worker it replaced) are not its own.
    seen: u64,
}

impl Responder {
    pub fn new(board: &'static Board, board_path: &Path, index: usize) -> Responder {
        Responder {
            board,
            board_path: board_path.to_path_buf(),
            index,
            seen: board.profile.latest(),
        }
    }

    /// Called by the worker's control loop at each poll: starts a profile
    /// thread when a new request names this worker.
    pub fn poll(&mut self) {
        let request = &self.board.profile;
        let id = request.latest();
        if id == self.seen {
            return;
        }
        self.seen = id;
        let (seconds, target) = request.asked();
        if target != ALL && target as usize != self.index {
            return;
        }
        let board = self.board;
        let board_path = self.board_path.clone();
        let index = self.index;
        let spawned = std::thread::Builder::new()
            .name("speedmimi-profile".into())
            .spawn(move || {
                let closed = || board.profile.is_closed(id);
                let result = sample::take(seconds, &closed);
                if closed() {
                    return; // the master has stopped waiting
                }
                if let Err(e) = answer(&board_path, id, result) {
                    tracing::error!("worker {index}: cannot hand the CPU profile over: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("worker {index}: cannot start a CPU profile: {e}");
        }
    }
}

/// Writes the answer under a temporary name, then renames it, so the
/// master never reads half a file (`shm::replace`: mode 0600, never
/// through a name someone else made).
fn answer(board_path: &Path, id: u64, result: Result<Profile, ProfileError>) -> io::Result<()> {
    let pid = std::process::id();
    let (ext, bytes) = match result {
        Ok(profile) => ("pb", profile.encode_to_vec()),
        Err(ProfileError::Busy) => ("err", format!("{BUSY}\n").into_bytes()),
        Err(ProfileError::Failed(why)) => ("err", format!("failed\n{why}").into_bytes()),
    };
    shm::replace(&answer_path(board_path, id, pid, ext), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_files_sit_beside_the_board_and_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let board_path = dir.path().join("speedmimi-42-00ff.board");
        std::fs::write(&board_path, b"board").unwrap();
        answer(&board_path, 3, Err(ProfileError::Busy)).unwrap();
        let pid = std::process::id();
        let written = std::fs::metadata(answer_path(&board_path, 3, pid, "err")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&written.permissions()) & 0o777,
            0o600
        );
        assert_eq!(
            read_answer(&board_path, 3, pid).unwrap().unwrap_err(),
            ProfileError::Busy
        );
        answer(&board_path, 4, Err(ProfileError::Failed("no".into()))).unwrap();
        assert_eq!(
            read_answer(&board_path, 4, pid).unwrap().unwrap_err(),
            ProfileError::Failed("no".into())
        );
        let p = Profile {
            string_table: vec![String::new()],
            period: 7,
            ..Profile::default()
        };
        answer(&board_path, 5, Ok(p.clone())).unwrap();
        assert_eq!(read_answer(&board_path, 5, pid).unwrap().unwrap(), p);
        assert!(read_answer(&board_path, 6, pid).is_none());
        sweep(&board_path);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["speedmimi-42-00ff.board"]);
    }
}
