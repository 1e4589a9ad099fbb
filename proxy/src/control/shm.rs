//! The files a master shares with its worker processes in /dev/shm: the
//! board, the configuration copy and profile answers. Every user can write
//! /dev/shm, so each file is made by us for us: mode 0600, created with
//! O_EXCL and O_NOFOLLOW (a name that exists, a symlink included, is an
//! error, never opened), under a name another user cannot guess before the
//! master creates it: `speedmimi-PID-RANDOM`. The pid comes first so that
//! `Board::remove_stale` can tell the files of masters that are gone.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What every shared file name starts with.
pub const PREFIX: &str = "speedmimi-";

/// `speedmimi-PID-RANDOM` for this process: the stem of its files.
pub fn master_stem() -> io::Result<String> {
    Ok(format!("{PREFIX}{}-{}", std::process::id(), random_hex()?))
}

/// The master pid in a file name `speedmimi-PID-…` or `speedmimi-PID.…`
/// (the form before random names), or `None` for another name.
pub fn master_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let end = rest.find(['-', '.']).unwrap_or(rest.len());
    let pid = &rest[..end];
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// 16 hex digits from the kernel's random source.
pub fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the rest of `bytes`, which we own.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` for reading and writing, mode 0600; fails if anything,
/// a symlink included, already has the name.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let why = if e.kind() == io::ErrorKind::AlreadyExists {
                "the name is taken (never opened: it may be another user's)".to_string()
            } else {
                e.to_string()
            };
            io::Error::new(e.kind(), format!("cannot create {}: {why}", path.display()))
        })
}

/// Opens a file the master or a worker created: not through a symlink,
/// and only when it belongs to this user and no one else may read it.
pub fn open_own(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not this user's private file (owner {}, mode {:o}); not used",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(file)
}

/// The bytes of a file `open_own` accepts.
pub fn read_own(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_own(path, false)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replaces `path` with `bytes` at once: written to a new file of a fresh
/// random name beside it (`create`), then renamed over it, so a reader
/// sees the old file or the new one, never half of one.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", random_hex()?));
    let tmp = std::path::PathBuf::from(tmp);
    let written = create(&tmp).and_then(|mut f| f.write_all(bytes));
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stems_carry_the_pid_and_differ() {
        let a = master_stem().unwrap();
        let b = master_stem().unwrap();
        assert_ne!(a, b);
        assert_eq!(master_pid(&a), Some(std::process::id()));
        assert_eq!(master_pid(&format!("{a}.board")), Some(std::process::id()));
        assert_eq!(master_pid("speedmimi-42.board"), Some(42));
        assert_eq!(master_pid("speedmimi-42-00ff.profile-3-77.pb"), Some(42));
        assert_eq!(master_pid("speedmimi-notapid.board"), None);
        assert_eq!(master_pid("speedmimi-.board"), None);
        assert_eq!(master_pid("other-42.board"), None);
    }

    #[test]
    fn created_files_are_private_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = create(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(open_own(&path, true).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open_own(&path, false).is_err(), "readable by others");
    }

    #[test]
    fn a_symlink_at_the_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"theirs").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("speedmimi-1-00.board");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create(&link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(open_own(&link, true).is_err());
        assert!(read_own(&link).is_err());
        // A dangling link too: creating through it would make the target.
        let nowhere = dir.path().join("nowhere");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!nowhere.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn replace_swaps_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("speedmimi-1-00.yaml");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(read_own(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
