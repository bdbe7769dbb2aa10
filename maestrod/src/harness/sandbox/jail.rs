//! Entering the sandbox: what a freshly forked child does before it
//! executes the command. In order: new user, mount, PID, IPC, UTS (and,
//! without network permission, network) namespaces; its own uid and gid
//! mapped; a private loopback; a fork so that the command is the first
//! process of its PID namespace (the waiting parent ends as it ends, and
//! everything the command starts dies with it); the private root built by
//! the `layout` program and pivoted into; every capability dropped for good;
//! `no_new_privs`; Landlock; seccomp.
//!
//! Everything here runs between fork and exec of a multi-threaded daemon:
//! raw system calls only, no allocation (every buffer is made before the
//! fork). This is one of the two places that hold `unsafe` code (with the
//! sandbox's `pre_exec` hook itself).

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;

use landlock::{RulesetCreated, RulesetStatus};
use nix::libc;
use seccompiler::BpfProgram;

use super::layout::Op;

/// Which namespaces a command gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Namespaces {
    /// User namespace (and with it the mount, PID, IPC and UTS ones).
    pub(super) user: bool,
    /// A private root (needs `user`).
    pub(super) mount: bool,
    /// The command is the first process of its own PID namespace (needs `user`).
    pub(super) pid: bool,
    /// A private network namespace with only a loopback.
    pub(super) net: bool,
}

/// Everything the child needs, made before the fork.
pub(super) struct Jail {
    pub(super) namespaces: Namespaces,
    /// `/proc/self/uid_map` and `gid_map` contents: the daemon's ids, mapped to themselves.
    pub(super) uid_map: Vec<u8>,
    pub(super) gid_map: Vec<u8>,
    pub(super) program: Vec<Op>,
    pub(super) ruleset: Option<RulesetCreated>,
    pub(super) filters: Vec<BpfProgram>,
    /// Drop every capability (bounding set, ambient, securebits, capset).
    pub(super) drop_capabilities: bool,
}

impl Jail {
    /// The `uid_map`/`gid_map` lines that map the current ids to themselves.
    pub(super) fn identity_maps() -> (Vec<u8>, Vec<u8>) {
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        (format!("{uid} {uid} 1\n").into_bytes(), format!("{gid} {gid} 1\n").into_bytes())
    }

    /// Enters the sandbox. Returns (in the process that will execute the
    /// command) once every layer is in place.
    ///
    /// # Safety
    /// Only in a freshly forked child, before exec: it calls async-signal-safe
    /// system calls only, allocates nothing, and with a PID namespace forks
    /// once more and never returns in the intermediate process.
    pub(super) unsafe fn enter(&mut self) -> io::Result<()> {
        let ns = self.namespaces;
        // SAFETY: the caller guarantees the pre-exec context; every call below is a plain
        // system call on buffers owned by `self` or on constants.
        unsafe {
            if ns.user {
                let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
                if ns.mount {
                    flags |= libc::CLONE_NEWNS;
                }
                if ns.pid {
                    flags |= libc::CLONE_NEWPID;
                }
                if ns.net {
                    flags |= libc::CLONE_NEWNET;
                }
                check(libc::unshare(flags))?;
                write_all(c"/proc/self/setgroups", b"deny")?;
                write_all(c"/proc/self/uid_map", &self.uid_map)?;
                write_all(c"/proc/self/gid_map", &self.gid_map)?;
            } else if ns.net {
                check(libc::unshare(libc::CLONE_NEWNET))?;
            }
            if ns.net {
                // Tests start local servers: the namespace gets its own loopback, up.
                loopback_up()?;
            }
            if ns.user && ns.pid {
                become_init()?;
            }
            if ns.user && ns.mount {
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for op in &self.program {
                    run(op)?;
                }
                // The fresh /proc, /tmp and /dev/shm came after the Landlock rules: add them now.
                for (path, writable) in super::rules::CHILD_MOUNTS {
                    let Some(ruleset) = self.ruleset.take() else { break };
                    let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let added = super::rules::allow(ruleset, std::os::fd::BorrowedFd::borrow_raw(fd), writable);
                    libc::close(fd);
                    self.ruleset = Some(added.map_err(|()| io::Error::other("landlock rule for a private mount"))?);
                }
            }
            if self.drop_capabilities {
                drop_capabilities(ns.user)?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        if let Some(ruleset) = self.ruleset.take() {
            match ruleset.restrict_self() {
                Ok(status) if status.ruleset != RulesetStatus::NotEnforced => {}
                Ok(_) => return Err(io::Error::other("landlock not enforced")),
                Err(_) => return Err(io::Error::other("landlock restrict_self failed")),
            }
        }
        for filter in &self.filters {
            seccompiler::apply_filter(filter).map_err(|_| io::Error::other("seccomp filter refused"))?;
        }
        Ok(())
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Writes `bytes` to `path` in one write.
///
/// # Safety
/// Pre-exec context: open/write/close only.
unsafe fn write_all(path: &CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a descriptor this function owns and a buffer that outlives the call.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize { Err(error) } else { Ok(()) }
    }
}

/// Brings `lo` of the current network namespace up.
///
/// # Safety
/// Pre-exec context: socket/ioctl/close only, on a zeroed, correctly sized ifreq.
pub(super) unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: see above.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request);
        }
        let error = io::Error::last_os_error();
        libc::close(fd);
        if result < 0 { Err(error) } else { Ok(()) }
    }
}

/// Forks after `unshare(CLONE_NEWPID)`: the child, first process of the new
/// PID namespace, returns; the parent waits for it and ends as it ended.
///
/// # Safety
/// Pre-exec context: fork/waitpid/kill/_exit only.
unsafe fn become_init() -> io::Result<()> {
    // SAFETY: see above.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // Should the waiting parent be killed, the command and its namespace go too.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            return Ok(());
        }
        // The parent holds no descriptor but stdio: the spawner's exec-status pipe is
        // closed here, so the spawn returns as soon as the command has started.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        loop {
            let mut status: libc::c_int = 0;
            let waited = libc::waitpid(pid, &mut status, 0);
            if waited == pid {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    let signal = libc::WTERMSIG(status);
                    libc::signal(signal, libc::SIG_DFL);
                    libc::kill(libc::getpid(), signal);
                    libc::_exit(128 + signal);
                }
            } else if waited < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}

/// Mount flags of `path` that a read-only remount must keep (locked in a user namespace).
///
/// # Safety
/// Pre-exec context: statvfs only.
unsafe fn kept_flags(path: &CStr) -> libc::c_ulong {
    // SAFETY: a zeroed statvfs filled by the kernel.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return 0;
        }
        let mut flags = 0;
        for (st, ms) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if stat.f_flag & st != 0 {
                flags |= ms;
            }
        }
        flags
    }
}

/// Runs one step of the private root's program.
///
/// # Safety
/// Pre-exec context, in the new mount namespace.
unsafe fn run(op: &Op) -> io::Result<()> {
    let null = std::ptr::null();
    let exists = |result: libc::c_int| {
        if result < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: every string is a CString made before the fork; the calls are plain system calls.
    unsafe {
        match op {
            Op::Tmpfs { target, options, read_only } => check(libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | if *read_only { libc::MS_RDONLY } else { 0 },
                options.as_ptr().cast(),
            )),
            Op::Mkdir { path } => exists(libc::mkdir(path.as_ptr(), 0o755)),
            Op::Touch { path } => {
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            }
            Op::Bind { source, target, read_only } => {
                // Not recursive: a mount below the source (a cgroup controller, say) stays out,
                // rather than coming in writable under a read-only bind.
                check(libc::mount(source.as_ptr(), target.as_ptr(), null, libc::MS_BIND, null.cast()))?;
                if *read_only {
                    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | kept_flags(target);
                    check(libc::mount(null, target.as_ptr(), null, flags, null.cast()))?;
                }
                Ok(())
            }
            Op::Symlink { target, link } => exists(libc::symlink(target.as_ptr(), link.as_ptr())),
            Op::Proc { target } => check(libc::mount(
                c"proc".as_ptr(),
                target.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                null.cast(),
            )),
            Op::Pivot { new_root, put_old, old_inside } => {
                check(libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) as libc::c_int)?;
                check(libc::chdir(c"/".as_ptr()))?;
                check(libc::umount2(old_inside.as_ptr(), libc::MNT_DETACH))?;
                libc::rmdir(old_inside.as_ptr());
                // Nothing may be created at the top of the private root.
                let flags = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                check(libc::mount(null, c"/".as_ptr(), null, flags, null.cast()))
            }
            Op::Chdir { path } => check(libc::chdir(path.as_ptr())),
        }
    }
}

// Securebits (linux/securebits.h): root gets no capabilities from exec, ever.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the bounding set, the ambient set and every capability set, and
/// locks securebits so that executing a program (also as root) gains none.
///
/// # Safety
/// Pre-exec context: prctl/capset only.
unsafe fn drop_capabilities(in_user_namespace: bool) -> io::Result<()> {
    // SAFETY: plain system calls on stack values.
    unsafe {
        // The bounding set needs CAP_SETPCAP, which a daemon that is not root only has in its
        // own user namespace; without one it has no capability to drop.
        let privileged = in_user_namespace || libc::geteuid() == 0;
        if privileged {
            for capability in 0..64 {
                let result = libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0);
                if result < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(io::Error::last_os_error());
                }
            }
            let bits = SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED
                | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
            check(libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0))?;
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)
    }
}
