//! Resource limits (nofile, nproc, memlock) of a process: our own through nix's
//! getrlimit/setrlimit, another one's (by default the shell that ran us) through
//! prlimit(2), which nix does not wrap.

use crate::profile::Resource;
use nix::errno::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

fn nix_resource(r: Resource) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource as R;
    match r {
        Resource::Nofile => R::RLIMIT_NOFILE,
        Resource::Nproc => R::RLIMIT_NPROC,
        Resource::Memlock => R::RLIMIT_MEMLOCK,
    }
}

fn is_self(pid: i32) -> bool {
    pid == 0 || pid as u32 == std::process::id()
}

pub fn get(pid: i32, r: Resource) -> Result<Limits, Errno> {
    if is_self(pid) {
        let (soft, hard) = nix::sys::resource::getrlimit(nix_resource(r))?;
        return Ok(Limits { soft, hard });
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new-limit pointer only reads; `old` is a valid, writable rlimit.
    let rc = unsafe {
        libc::prlimit(
            pid,
            nix_resource(r) as _,
            std::ptr::null(),
            &mut old as *mut libc::rlimit,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(Limits {
        soft: old.rlim_cur,
        hard: old.rlim_max,
    })
}

pub fn set(pid: i32, r: Resource, l: Limits) -> Result<(), Errno> {
    if is_self(pid) {
        return nix::sys::resource::setrlimit(nix_resource(r), l.soft, l.hard);
    }
    let new = libc::rlimit {
        rlim_cur: l.soft,
        rlim_max: l.hard,
    };
    // SAFETY: `new` is a valid rlimit that outlives the call; a null old pointer is allowed.
    let rc = unsafe {
        libc::prlimit(
            pid,
            nix_resource(r) as _,
            &new as *const libc::rlimit,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}
