//! The file workers: open a file the walker found, by name in its open
//! directory and without following anything, check it is still the entry the
//! walker saw, then read, chunk and hash it, and hand the chunks not stored
//! yet to the blob workers. A file that changes while it is read is stored as
//! read and reported.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Sender;
use rustix::fs::{self as rfs, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::walk::{identity, replaced, time_ns};
use super::{add, BlobJob, Shared, SourceError};
use crate::blob::{blob_buffer, BlobType};
use crate::id::Id;

/// A regular file to read: by name in its open directory, expected to be
/// the inode the walker saw there.
pub(super) struct FileJob {
    pub(super) dir: Arc<OwnedFd>,
    pub(super) name: Vec<u8>,
    pub(super) path: PathBuf,
    pub(super) seen: (u64, u64),
    pub(super) reply: Sender<std::result::Result<FileRead, SourceError>>,
}

/// A file as read: its data blobs in order and the bytes read.
pub(super) struct FileRead {
    pub(super) content: Vec<Id>,
    pub(super) size: u64,
    /// The file changed while it was read (stored as read, reported).
    pub(super) changed: Option<SourceError>,
}

/// Open a regular file for reading without following a symlink and without
/// blocking (a FIFO swapped in opens at once, and is then refused by type).
fn open_source(dir: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    // O_NOATIME keeps backups from dirtying atimes; only the owner (or root) may use it.
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// Whether a file's size or modification time moved between two `fstat`s.
fn file_changed(before: &Stat, after: &Stat) -> Option<String> {
    #[allow(clippy::unnecessary_cast)]
    let time = |st: &Stat| time_ns(st.st_mtime as i64, st.st_mtime_nsec as i64);
    if before.st_size != after.st_size {
        Some(format!(
            "changed while being read (size {} -> {} bytes): stored as read",
            before.st_size, after.st_size
        ))
    } else {
        (time(before) != time(after))
            .then(|| "changed while being read (modified again): stored as read".to_string())
    }
}

/// Read, chunk and hash one file (a file worker's job), sending the chunks
/// not stored yet to the blob workers.
pub(super) fn read_file(
    shared: &Shared<'_>,
    chunker: &crate::chunker::Chunker,
    buf: &mut Vec<u8>,
    blobs: &Sender<BlobJob>,
    job: &FileJob,
) -> std::result::Result<FileRead, SourceError> {
    let path = job.path.as_path();
    let src_err = |message: String| SourceError {
        path: path.to_path_buf(),
        message,
    };
    #[cfg(test)]
    super::test_hooks::run("before open", path);
    let fd = match open_source(job.dir.as_fd(), &job.name) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            let msg = "replaced while the backup ran (was a regular file, opened a symbolic link): not backed up";
            return Err(src_err(msg.into()));
        }
        Err(e) => return Err(src_err(format!("cannot open: {e}"))),
    };
    let opened = rfs::fstat(&fd).map_err(|e| src_err(format!("cannot stat: {e}")))?;
    if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
        || identity(&opened) != job.seen
    {
        return Err(src_err(replaced("a regular file", &opened)));
    }
    #[cfg(test)]
    super::test_hooks::run("opened", path);
    let file = File::from(fd);
    let key = shared.repo.key();
    let mut content = Vec::new();
    let mut pipeline_closed = false;
    let size = chunker
        .chunk_stream_with::<_, std::io::Error>(buf, &file, |chunk| {
            if crate::interrupt::requested() {
                pipeline_closed = true;
                return Err(std::io::Error::new(ErrorKind::Interrupted, "interrupted"));
            }
            let id = key.blob_id(chunk);
            if let Some(ticket) = shared.claim(BlobType::Data, id) {
                let job = BlobJob {
                    ticket,
                    blob_type: BlobType::Data,
                    id,
                    data: blob_buffer(chunk),
                };
                if blobs.send(job).is_err() {
                    pipeline_closed = true;
                    return Err(std::io::Error::new(
                        ErrorKind::BrokenPipe,
                        "pipeline stopped",
                    ));
                }
            }
            content.push(id);
            Ok(())
        })
        .map_err(|e| {
            src_err(if pipeline_closed {
                "backup aborted".into()
            } else {
                format!("read error: {e}")
            })
        })?;
    add(&shared.counters.bytes_read, size);
    let after = rfs::fstat(&file).map_err(|e| src_err(format!("cannot stat: {e}")))?;
    // A file that shrank or grew while it was read (or was rewritten in
    // place) is stored as read, and said so: the backup exits 3.
    let changed = file_changed(&opened, &after)
        .or_else(|| {
            (size != after.st_size.max(0) as u64).then(|| {
                format!(
                    "changed while being read (read {size} bytes of {}): stored as read",
                    after.st_size
                )
            })
        })
        .map(src_err);
    Ok(FileRead {
        content,
        size,
        changed,
    })
}
