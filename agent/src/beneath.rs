//! Filesystem access relative to directory descriptors, never following a
//! symbolic link. Backup reads a tree that someone else may be changing (a
//! tenant's volume) and restore writes one described by a snapshot that anyone
//! with a repository key can craft: both must act on the entry they looked at,
//! and never on whatever a symlink put in its place. So every operation names
//! an open directory and one path component, and opens use `O_NOFOLLOW`.
//!
//! This module owns only the descriptor mechanics; what to do with an entry
//! is the caller's business.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::constants::MAX_TREE_DEPTH;

/// Flags for a directory opened to list it or to act inside it.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open the directory `name` inside `dir`; a symlink (`ELOOP`) or a
/// non-directory (`ENOTDIR`) there is an error.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Open a directory by a path the caller trusts (a backup source, a restore
/// target given by the user): symlinks in it are followed as the user wrote
/// them, as any command-line tool does.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rfs::open(path, flags, Mode::empty())?)
}

/// Open `rel` (a relative path of plain components) beneath `root` with
/// `flags`, following no symlink in any component and never leaving `root`.
/// Uses `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel
/// has it, else a walk that opens one component at a time with `O_NOFOLLOW`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rfs::openat2(root, rel, flags, Mode::empty(), resolve) {
        // ENOSYS: kernels before 5.6; EPERM: seccomp profiles that deny it;
        // ENAMETOOLONG: paths beyond PATH_MAX, which the walk opens one
        // component at a time.
        Err(Errno::NOSYS) | Err(Errno::PERM) | Err(Errno::NAMETOOLONG) => {}
        r => return Ok(r?),
    }
    walk_beneath(root, rel, flags)
}

/// [`open_beneath`] without `openat2`: one component at a time, each opened
/// with `O_NOFOLLOW`; `..` and absolute paths are refused.
fn walk_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::CurDir => None,
            _ => Some(Err(io::Error::from(Errno::XDEV))),
        })
        .collect::<io::Result<_>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Ok(rfs::openat(root, ".", flags, Mode::empty())?);
    };
    let mut cur: Option<OwnedFd> = None;
    for d in dirs {
        let at = cur.as_ref().map_or(root, |f| f.as_fd());
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        cur = Some(rfs::openat(at, *d, flags, Mode::empty())?);
    }
    let at = cur.as_ref().map_or(root, |f| f.as_fd());
    Ok(rfs::openat(at, *last, flags, Mode::empty())?)
}

/// The names in an open directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Remove the entry `name` inside `dir`, a whole directory tree included.
/// Nothing is followed: a symlink is removed, not what it points to. The
/// walk keeps one open directory per level (no recursion), and a tree nested
/// deeper than [`MAX_TREE_DEPTH`] is an error, not a stack overflow.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR) => {}
        Err(Errno::NOENT) => return Ok(()),
        r => return Ok(r?),
    }
    // Directories being emptied, outermost first, with their names.
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = vec![(open_dir_at(dir, name)?, name.to_vec())];
    while let Some((top, _)) = stack.last() {
        let mut subdir = None;
        for child in list_dir(top.as_fd())? {
            match rfs::unlinkat(top, child.as_slice(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    subdir = Some(child);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(child) = subdir {
            if stack.len() >= MAX_TREE_DEPTH {
                return Err(io::Error::other(format!(
                    "nested deeper than {MAX_TREE_DEPTH} directories: not removed"
                )));
            }
            let fd = open_dir_at(top.as_fd(), &child)?;
            stack.push((fd, child));
            continue;
        }
        // Empty now: remove it from its parent.
        let Some((fd, name)) = stack.pop() else { break };
        drop(fd);
        let parent = stack.last().map_or(dir, |(f, _)| f.as_fd());
        rfs::unlinkat(parent, name.as_slice(), AtFlags::REMOVEDIR)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn nothing_is_followed_out_of_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        symlink(&outside, root.join("a/link")).unwrap();
        symlink("../..", root.join("a/b/up")).unwrap();
        let fd = open_dir_path(&root).unwrap();
        // Both resolvers: openat2's and the component walk used without it.
        let openat2 = |rel: &str| open_beneath(fd.as_fd(), Path::new(rel), OFlags::RDONLY);
        let walk = |rel: &str| {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            walk_beneath(fd.as_fd(), Path::new(rel), flags)
        };
        for open in [&openat2 as &dyn Fn(&str) -> io::Result<OwnedFd>, &walk] {
            assert!(open("a/b").is_ok());
            assert!(open("").is_ok() || open(".").is_ok());
            for bad in [
                "a/link",
                "a/link/secret",
                "a/b/up",
                "a/b/up/outside",
                "../outside",
                "/etc",
            ] {
                assert!(open(bad).is_err(), "{bad} was opened");
            }
        }
        assert!(open_dir_at(fd.as_fd(), b"a").is_ok());
        let a = open_dir_at(fd.as_fd(), b"a").unwrap();
        assert!(open_dir_at(a.as_fd(), b"link").is_err());
        let mut names = list_dir(a.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, [b"b".to_vec(), b"link".to_vec()]);
        // Removing the symlink removes the link, not the directory it names.
        remove_at(a.as_fd(), b"link").unwrap();
        assert!(outside.join("secret").exists());
        remove_at(fd.as_fd(), b"a").unwrap();
        assert!(!root.join("a").exists());
        remove_at(fd.as_fd(), b"missing").unwrap();
    }

    #[test]
    fn remove_at_removes_deep_trees_without_recursion_and_refuses_deeper() {
        let tmp = tempfile::tempdir().unwrap();
        let root = open_dir_path(tmp.path()).unwrap();
        // Built with descriptors: the paths are far beyond PATH_MAX.
        let make = |name: &[u8], levels: usize| {
            rfs::mkdirat(&root, name, Mode::RWXU).unwrap();
            let mut cur = open_dir_at(root.as_fd(), name).unwrap();
            for i in 0..levels {
                rfs::mkdirat(&cur, "d", Mode::RWXU).unwrap();
                if i % 100 == 0 {
                    rfs::mknodat(&cur, "fifo", rfs::FileType::Fifo, Mode::RUSR, 0).unwrap();
                    rfs::symlinkat("/etc", &cur, "link").unwrap();
                }
                cur = open_dir_at(cur.as_fd(), b"d").unwrap();
            }
        };
        make(b"ok", MAX_TREE_DEPTH - 2);
        remove_at(root.as_fd(), b"ok").unwrap();
        assert!(!tmp.path().join("ok").exists());
        make(b"deep", MAX_TREE_DEPTH + 5);
        let err = remove_at(root.as_fd(), b"deep").unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
}
