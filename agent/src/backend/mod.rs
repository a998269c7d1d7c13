//! Storage: one trait that every backend implements, so commands never know
//! where the repository lives. Backends store opaque, write-once files.

pub mod cache;
mod local;
pub mod s3;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Config};

use crate::error::{Error, Result};

/// The kinds of file a repository holds; each kind lives under its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The single `config` file.
    Config,
    /// Key files (`keys/`).
    Key,
    /// Snapshot files (`snapshots/`).
    Snapshot,
    /// Index files (`index/`).
    Index,
    /// Pack files (`data/XX/`).
    Pack,
}

impl FileKind {
    /// Every kind of file.
    pub const ALL: [FileKind; 5] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Pack,
    ];

    /// The directory holding files of this kind, relative to the repository
    /// root (packs sit one level below it, in `data/XX/`; "" for the config).
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Pack => "data",
        }
    }

    /// Human name, used in messages.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Snapshot => "snapshot",
            FileKind::Index => "index",
            FileKind::Pack => "pack",
        }
    }

    /// The object's path relative to the repository root.
    pub fn path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            FileKind::Key => format!("keys/{name}"),
            FileKind::Snapshot => format!("snapshots/{name}"),
            FileKind::Index => format!("index/{name}"),
            FileKind::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or("00")),
        }
    }
}

/// A listed file: its name (without prefix) and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Name within its kind.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Storage for a repository. Files are written once and never modified;
/// they are only ever created whole or deleted.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages (never contains credentials).
    fn location(&self) -> String;

    /// How many requests are worth running at once (uploads during backup,
    /// downloads during restore).
    fn concurrency(&self) -> usize {
        2
    }

    /// Largest ranged read worth making at once when consecutive blobs are
    /// read together (restore): large for object stores, where every request
    /// costs latency and money.
    fn max_read_run(&self) -> u64 {
        16 << 20
    }

    /// Remove temporary files that writers left behind (a backup killed while
    /// writing a pack) once they are older than `age` at `now` (the storage's
    /// clock, [`Backend::clock`]: the files' times are the storage's too);
    /// returns how many were removed and their bytes. Object stores have
    /// none: an upload is visible whole or not at all.
    ///
    /// # Errors
    /// Listing or removal failures.
    fn remove_stale_temporaries(
        &self,
        _age: std::time::Duration,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(u64, u64)> {
        Ok((0, 0))
    }

    /// The storage's own clock: the modification time it gives a probe file
    /// written now (and removed at once). Prune ages its marks by it, so
    /// hosts whose clocks disagree still agree on when a mark was made; on a
    /// network filesystem it is the server's clock, which also stamps the
    /// temporary files prune ages. `None` when the storage keeps no times.
    ///
    /// # Errors
    /// Storage errors.
    fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }

    /// Prepare an empty location for a new repository.
    ///
    /// # Errors
    /// [`Error::RepositoryExists`] if a repository is already there.
    fn create(&self) -> Result<()>;

    /// Whether the file exists.
    ///
    /// # Errors
    /// Storage errors.
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool>;

    /// Read a whole file.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it does not exist; storage errors.
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;

    /// Read `length` bytes at `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] if the file is shorter than the range.
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, length: u32) -> Result<Vec<u8>>;

    /// Store a new file atomically: readers see all of it or nothing.
    ///
    /// # Errors
    /// Storage errors, including a full disk; an existing file of that name.
    fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()>;

    /// List all files of a kind.
    ///
    /// # Errors
    /// Storage errors.
    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>>;

    /// Hint that a whole pack will be read piecemeal (a tree pack): a caching
    /// backend may fetch and keep it. The default does nothing.
    ///
    /// # Errors
    /// Storage errors.
    fn cache_pack(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Delete a file.
    ///
    /// # Errors
    /// Storage errors.
    fn remove(&self, kind: FileKind, name: &str) -> Result<()>;

    /// Start a file of `kind` that is written piece by piece where it will be
    /// stored and named when complete ([`StagedFile::commit`]), so that no
    /// copy of it needs to be held in memory. `None` (the default) when the
    /// backend cannot do this; callers then assemble the file in memory and
    /// use [`Backend::write`].
    ///
    /// # Errors
    /// Storage errors.
    fn stage(&self, _kind: FileKind) -> Result<Option<Box<dyn StagedFile>>> {
        Ok(None)
    }
}

/// A file being written in place under a temporary name (see
/// [`Backend::stage`]). Dropping it without committing removes it.
pub trait StagedFile: Send {
    /// Append bytes.
    ///
    /// # Errors
    /// Storage errors, including a full disk.
    fn write_all(&mut self, data: &[u8]) -> Result<()>;

    /// Make the file durable and give it its final name, with the same
    /// guarantees as [`Backend::write`]: readers see all of it or nothing, and
    /// an existing file is never replaced.
    ///
    /// # Errors
    /// Storage errors; an existing file of that name.
    fn commit(self: Box<Self>, name: &str) -> Result<()>;
}

/// [`open`], for a new repository that a local path shares with its group
/// (directories 0770, files 0660; see [`LocalBackend::shared_with_group`]).
/// Other backends are opened as by [`open`].
///
/// # Errors
/// As [`open`].
pub fn open_group_shared(location: &str) -> Result<Box<dyn Backend>> {
    let path = location.strip_prefix("local:").unwrap_or(location);
    if location.is_empty() || location.starts_with("s3:") {
        return open(location);
    }
    Ok(Box::new(LocalBackend::shared_with_group(path)))
}

/// Open the backend a repository location names: `s3:...` or a local path
/// (optionally written `local:PATH`). A remote repository is read through
/// the local cache ([`cache`]) unless `CAIRN_NO_CACHE` is set.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty or unsupported location.
pub fn open(location: &str) -> Result<Box<dyn Backend>> {
    open_with(location, true)
}

/// [`open`] without the local cache: every read goes to the repository.
/// `check` uses it, so that it verifies the repository as other hosts see
/// it, not a cached copy of packs the repository may have lost or damaged.
///
/// # Errors
/// As [`open`].
pub fn open_uncached(location: &str) -> Result<Box<dyn Backend>> {
    open_with(location, false)
}

fn open_with(location: &str, cached: bool) -> Result<Box<dyn Backend>> {
    if location.is_empty() {
        return Err(Error::InvalidInput(
            "no repository given: use --repo or set CAIRN_REPOSITORY".into(),
        ));
    }
    if let Some(rest) = location.strip_prefix("local:") {
        return Ok(Box::new(LocalBackend::new(rest)));
    }
    if location.starts_with("s3:") {
        let s3: Box<dyn Backend> = Box::new(S3Backend::new(S3Config::parse(location)?)?);
        let no_cache = std::env::var("CAIRN_NO_CACHE").is_ok_and(|v| !v.is_empty() && v != "0");
        return Ok(match cache::default_cache_root() {
            Some(root) if cached && !no_cache => cache::CachedBackend::wrap(s3, &root),
            _ => s3,
        });
    }
    Ok(Box::new(LocalBackend::new(location)))
}
