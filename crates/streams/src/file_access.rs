//! Whose privileges open the local file an S3 export task names (`inputUrl: file:///…`).
//!
//! The core runs as root; a component that appends a task must not be able to upload a file
//! its own user cannot read. Greengrass runs its stream manager as the default component user;
//! Lichen does one better and opens each task's file as the user the appending component runs
//! as: a forked child switches to that user (groups, gid, uid), opens the file and hands the
//! descriptor back over a socketpair (`SCM_RIGHTS`). The check is the kernel's own, on the open
//! itself, so there is no window between a check and the use of the file.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

/// The privileges an S3 export task's input file is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAccess {
    /// The stream manager's own: the core does not run as root, the component runs as root, or
    /// no core decides (standalone `lichen stream-manager`).
    Own,
    /// A POSIX identity, as the supervisor runs the component's processes.
    User {
        uid: u32,
        gid: u32,
        /// Supplementary groups (the primary group included).
        groups: Vec<u32>,
    },
    /// No identity could be determined (e.g. the run-as user no longer exists): every file is
    /// refused with this reason.
    Denied(String),
}

impl std::fmt::Display for FileAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileAccess::Own => f.write_str("the stream manager's own user"),
            FileAccess::User { uid, gid, .. } => write!(f, "uid {uid} gid {gid}"),
            FileAccess::Denied(why) => write!(f, "no user ({why})"),
        }
    }
}

/// Decides the [`FileAccess`] of a connection from the `authToken` it connected with (`None`:
/// no token, or a task whose appender is not known, such as one appended before a restart).
pub type FileAccessResolver = Arc<dyn Fn(Option<&str>) -> FileAccess + Send + Sync>;

/// Opens `path` read-only with `access`'s privileges; only regular files are accepted (a FIFO
/// or a device would stall or never end the upload). Blocking: call it off the async workers.
pub fn open_input(path: &Path, access: &FileAccess) -> io::Result<File> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let fd = match access {
        FileAccess::Own => open_nonblocking(&cpath)?,
        FileAccess::Denied(why) => {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()));
        }
        FileAccess::User { uid, gid, groups } => {
            // SAFETY: plain system calls without arguments.
            let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
            if euid == 0 {
                open_as(&cpath, *uid, *gid, groups)?
            } else if euid == *uid && egid == *gid {
                open_nonblocking(&cpath)?
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "cannot open as uid {uid}: the stream manager runs as uid {euid}, not root"
                    ),
                ));
            }
        }
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // Regular files ignore O_NONBLOCK; clear it anyway so reads behave as usual.
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;

fn open_nonblocking(path: &CString) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), OPEN_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forks a child that drops to `uid`/`gid`/`groups`, opens `path` and sends the descriptor
/// back (or its errno). The child makes only raw system calls on memory prepared before the
/// fork, as a child of a multithreaded process must.
fn open_as(path: &CString, uid: u32, gid: u32, groups: &[u32]) -> io::Result<OwnedFd> {
    let mut pair = [0 as libc::c_int; 2];
    // SAFETY: `pair` has room for the two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let cmsg_space =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut child_cmsg = vec![0u8; cmsg_space];
    // SAFETY: fork has no preconditions; the child branch below only makes async-signal-safe
    // system calls on memory allocated before the fork, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        let sock = theirs.as_raw_fd();
        // SAFETY: see above; nothing here allocates, locks or unwinds.
        unsafe {
            let errno = || *libc::__errno_location();
            let mut code: libc::c_int = 0;
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                code = errno();
            }
            let mut fd = -1;
            if code == 0 {
                fd = libc::open(path.as_ptr(), OPEN_FLAGS);
                if fd < 0 {
                    code = errno();
                }
            }
            let mut iov = libc::iovec {
                iov_base: &mut code as *mut libc::c_int as *mut libc::c_void,
                iov_len: std::mem::size_of::<libc::c_int>(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if fd >= 0 {
                msg.msg_control = child_cmsg.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = cmsg_space as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd);
            }
            let sent = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
            libc::_exit(if sent < 0 { 1 } else { 0 });
        }
    }
    drop(theirs);
    let received = receive(&ours);
    let mut status = 0;
    // SAFETY: reaps the child forked above, which exits right after its one message.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    received
}

/// Reads the child's answer: an errno, and with 0 the descriptor.
fn receive(sock: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut code: libc::c_int = -1;
    let mut iov = libc::iovec {
        iov_base: &mut code as *mut libc::c_int as *mut libc::c_void,
        iov_len: std::mem::size_of::<libc::c_int>(),
    };
    let cmsg_space =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; cmsg_space];
    // SAFETY: msghdr zeroed, then pointed at buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = cmsg_space as _;
    let n = loop {
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR/CMSG_DATA walk the buffer it describes.
    let passed = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
            Some(OwnedFd::from_raw_fd(fd))
        } else {
            None
        }
    };
    match (
        n as usize == std::mem::size_of::<libc::c_int>(),
        code,
        passed,
    ) {
        (true, 0, Some(fd)) => Ok(fd),
        (true, code, _) if code > 0 => Err(io::Error::from_raw_os_error(code)),
        _ => Err(io::Error::other(
            "the helper process that opens the file as the component's user gave no answer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn is_root() -> bool {
        // SAFETY: no arguments.
        unsafe { libc::geteuid() == 0 }
    }

    fn nobody() -> FileAccess {
        FileAccess::User {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        }
    }

    #[test]
    fn own_access_reads_regular_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        std::fs::write(&f, b"hello").unwrap();
        let mut s = String::new();
        open_input(&f, &FileAccess::Own)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        let e = open_input(dir.path(), &FileAccess::Own).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = open_input(&f, &FileAccess::Denied("no such user".into())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_user_cannot_open_what_only_root_may_read() {
        if !is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, b"anyone").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();

        let e = open_input(&secret, &nobody()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let mut s = String::new();
        open_input(&public, &nobody())
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "anyone");
        // The core itself still reads both.
        assert!(open_input(&secret, &FileAccess::Own).is_ok());
        let e = open_input(&dir.path().join("missing"), &nobody()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
