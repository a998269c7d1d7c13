//! The repository: a backend plus the master key and config. Owns reading and
//! writing typed files (config, keys, index, snapshots), loading the index,
//! and reading blobs. Commands are built on top of this one type.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset, Local};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::blob::{decode_blob, decode_blob_in_place, BlobType};
use crate::chunker::{Chunker, ChunkerParams};
use crate::constants::*;
use crate::crypto::{aad, open_with, seal_with, KdfParams, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, IndexFile};
use crate::snapshot::Snapshot;
use crate::tree::Tree;

/// Repository settings, fixed at `init` and stored encrypted in `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version.
    pub version: u32,
    /// Random repository ID.
    pub id: Id,
    /// Chunk size parameters.
    pub chunker: ChunkerParams,
    /// zstd level for new blobs (0 disables compression).
    pub zstd_level: i32,
    /// Target pack size in bytes.
    pub pack_size: usize,
}

/// Argon2id cost settings for a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        KdfCost {
            memory_kib: KDF_MEMORY_KIB,
            iterations: KDF_ITERATIONS,
        }
    }
}

/// Contents of a key file (stored as plain JSON; the master key inside is encrypted).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// Key file format version.
    pub version: u32,
    /// When the key was added.
    pub created: DateTime<FixedOffset>,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    /// Password derivation parameters.
    pub kdf: KdfParams,
    /// The master key, sealed with the password-derived key (hex).
    #[serde(with = "hex::serde")]
    pub master: Vec<u8>,
}

/// A key as listed by `cairn key list`.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// Key file name.
    pub id: String,
    /// Whether this is the key the repository was opened with.
    pub current: bool,
    /// When it was added.
    pub created: DateTime<FixedOffset>,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
}

/// An open repository.
pub struct Repository {
    backend: Box<dyn Backend>,
    key: MasterKey,
    key_name: String,
    config: Config,
}

/// A repository with its index loaded: the only handle that can read blobs.
///
/// Backup, restore, copy, stats, ls and diff take this type, so a command
/// cannot run against a repository whose index was never read (every blob
/// would look new to a backup, and missing to a restore). Made by
/// [`Repository::load_index`], or by [`Repository::with_index`] from an index
/// that check or prune assembled themselves. It derefs to the [`Repository`]
/// for everything that needs no index (snapshots, keys, metadata files).
///
/// ```
/// # use cairn::{backend::LocalBackend, repository::KdfCost, Repository};
/// # use cairn::commands::backup::{backup, BackupOptions};
/// # let dir = tempfile::tempdir().unwrap();
/// # let cost = KdfCost { memory_kib: 1024, iterations: 1 };
/// let repo = Repository::init(Box::new(LocalBackend::new(dir.path())), b"pw", cost)?;
/// let opts = BackupOptions { paths: vec![dir.path().join("nothing")], ..Default::default() };
/// let _ = backup(&repo.load_index()?, &opts);
/// # Ok::<(), cairn::Error>(())
/// ```
///
/// A repository whose index was never read does not compile as backup's argument:
///
/// ```compile_fail,E0308
/// # use cairn::{backend::LocalBackend, repository::KdfCost, Repository};
/// # use cairn::commands::backup::{backup, BackupOptions};
/// # let dir = tempfile::tempdir().unwrap();
/// # let cost = KdfCost { memory_kib: 1024, iterations: 1 };
/// let repo = Repository::init(Box::new(LocalBackend::new(dir.path())), b"pw", cost)?;
/// let opts = BackupOptions { paths: vec![dir.path().join("nothing")], ..Default::default() };
/// let _ = backup(&repo, &opts);
/// # Ok::<(), cairn::Error>(())
/// ```
pub struct IndexedRepository<'r> {
    repo: Held<'r>,
    index: Index,
}

/// The repository an [`IndexedRepository`] reads through: borrowed
/// ([`Repository::load_index`]) or its own ([`Repository::into_indexed`]).
enum Held<'r> {
    Borrowed(&'r Repository),
    Owned(Box<Repository>),
}

impl std::ops::Deref for IndexedRepository<'_> {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        match &self.repo {
            Held::Borrowed(r) => r,
            Held::Owned(r) => r,
        }
    }
}

const METADATA_RAW: u8 = 0;
const METADATA_ZSTD: u8 = 1;

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    written: usize,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// zstd window of metadata files (2^17 bytes).
const METADATA_WINDOW_LOG: u32 = 17;

/// Serialise, compress and encrypt a metadata file: `seal(aad, flag || payload)`.
/// The JSON is streamed into the compressor, so only its compressed form is
/// held in memory (an index file of 50 000 blobs is ~12 MB of JSON, ~4 MB
/// compressed); the buffer is then sealed in place.
fn encode_metadata<T: Serialize + ?Sized>(
    key: &MasterKey,
    domain: &[u8],
    value: &T,
) -> Result<Vec<u8>> {
    let internal = |e: std::io::Error| Error::Internal(format!("encoding metadata: {e}"));
    let mut buf = vec![0u8; NONCE_LEN];
    buf.push(METADATA_ZSTD);
    let mut encoder = zstd::stream::Encoder::new(buf, DEFAULT_ZSTD_LEVEL).map_err(internal)?;
    // What repeats in this JSON is its structure, a few hundred bytes apart: a
    // 128 KiB window compresses index files as well as the level's default
    // (2 MiB, for a stream of unknown size) and the context is ~3 MB smaller.
    encoder.window_log(METADATA_WINDOW_LOG).map_err(internal)?;
    let mut json = Counting {
        inner: encoder,
        written: 0,
    };
    // serde_json writes token by token: batch them before the compressor.
    let mut batched = std::io::BufWriter::with_capacity(64 * 1024, &mut json);
    serde_json::to_writer(&mut batched, value).map_err(|e| Error::Internal(e.to_string()))?;
    std::io::Write::flush(&mut batched).map_err(internal)?;
    drop(batched);
    let json_len = json.written;
    let mut buf = json.inner.finish().map_err(internal)?;
    let compressed_len = buf.len() - NONCE_LEN - 1;
    if compressed_len >= json_len {
        // Not worth compressing (small files): store the JSON as it is.
        buf.truncate(NONCE_LEN);
        buf.push(METADATA_RAW);
        serde_json::to_writer(&mut buf, value).map_err(|e| Error::Internal(e.to_string()))?;
    }
    buf.reserve_exact(TAG_LEN);
    key.seal_in_place(domain, &mut buf);
    Ok(buf)
}

pub(crate) fn decode_metadata(
    key: &MasterKey,
    domain: &[u8],
    stored: &[u8],
    object: &str,
) -> Result<Vec<u8>> {
    let plain = key.open(domain, stored, object)?;
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut metadata_json(&plain, object)?, &mut json)
        .map_err(|e| Error::corrupt(object, format!("zstd: {e}")))?;
    Ok(json)
}

/// The JSON of a decrypted metadata file (`flag || payload`), read as it is
/// decompressed: an index file's JSON is about three times its stored size
/// and is never held whole. Read through a `BufReader` (serde_json's reader
/// takes a byte at a time, and std serves those from a `BufReader`'s buffer).
fn metadata_json<'a>(
    plain: &'a [u8],
    object: &str,
) -> Result<std::io::BufReader<std::io::Take<MetadataPayload<'a>>>> {
    let payload = match plain.split_first() {
        Some((&METADATA_RAW, rest)) => MetadataPayload::Raw(rest),
        Some((&METADATA_ZSTD, rest)) => MetadataPayload::Zstd(
            zstd::stream::read::Decoder::with_buffer(rest)
                .map_err(|e| Error::corrupt(object, format!("zstd: {e}")))?,
        ),
        _ => return Err(Error::corrupt(object, "unknown encoding")),
    };
    // A bound on what decompression may produce: a crafted frame must not
    // expand into memory without end. Past it the JSON ends early and does
    // not parse.
    let payload = std::io::Read::take(payload, MAX_METADATA_JSON);
    Ok(std::io::BufReader::with_capacity(64 << 10, payload))
}

enum MetadataPayload<'a> {
    Raw(&'a [u8]),
    Zstd(zstd::stream::read::Decoder<'a, &'a [u8]>),
}

impl std::io::Read for MetadataPayload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Raw(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

/// Name the pack in a blob's corruption error, so the user knows which object is damaged.
fn in_pack(e: Error, pack: &Id) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::Corrupt {
            object: format!("{object} in pack {pack}"),
            reason,
        },
        other => other,
    }
}

/// Host name of this machine.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Name of the user running cairn.
pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: geteuid has no preconditions.
            format!("uid {}", unsafe { libc::geteuid() })
        })
}

fn now() -> DateTime<FixedOffset> {
    Local::now().fixed_offset()
}

fn new_key_file(master: &MasterKey, password: &[u8], cost: KdfCost) -> Result<Vec<u8>> {
    if password.is_empty() {
        return Err(Error::InvalidInput(
            "the password is empty: a repository key needs a password".into(),
        ));
    }
    if cost.memory_kib < KDF_MIN_MEMORY_KIB || cost.iterations == 0 {
        return Err(Error::InvalidInput(format!(
            "key derivation cost too low (at least {KDF_MIN_MEMORY_KIB} KiB and 1 iteration)"
        )));
    }
    if cost.memory_kib > KDF_MAX_MEMORY_KIB || cost.iterations > KDF_MAX_ITERATIONS {
        return Err(Error::InvalidInput(format!(
            "key derivation cost too high (at most {KDF_MAX_MEMORY_KIB} KiB and {KDF_MAX_ITERATIONS} iterations)"
        )));
    }
    let kdf = KdfParams::new(cost.memory_kib, cost.iterations, KDF_PARALLELISM);
    let kek = kdf.derive(password)?;
    let master_json = zeroize::Zeroizing::new(
        serde_json::to_vec(master).map_err(|e| Error::Internal(e.to_string()))?,
    );
    let file = KeyFile {
        version: 1,
        created: now(),
        hostname: hostname(),
        username: username(),
        kdf,
        master: seal_with(&kek, aad::KEY, &master_json),
    };
    serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.to_string()))
}

/// Upper bounds on Argon2id costs, for keys made and keys read: a planted key
/// file must not get `open` OOM-killed in a pod or make it spin for minutes
/// (the default is 64 MiB and 3 passes).
const KDF_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const KDF_MAX_ITERATIONS: u32 = 16;
const KDF_MAX_PARALLELISM: u32 = 16;

pub(crate) fn parse_key_file(name: &str, bytes: &[u8]) -> Result<KeyFile> {
    let object = format!("key {name}");
    if Id::of_stored(bytes).to_hex() != name {
        return Err(Error::corrupt(
            object,
            "content does not match its name (modified or truncated)",
        ));
    }
    let file: KeyFile =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(&object, e.to_string()))?;
    if file.version != 1 {
        return Err(Error::corrupt(
            object,
            format!("unsupported key file version {}", file.version),
        ));
    }
    let k = &file.kdf;
    if k.memory_kib > KDF_MAX_MEMORY_KIB
        || k.iterations > KDF_MAX_ITERATIONS
        || k.parallelism > KDF_MAX_PARALLELISM
    {
        return Err(Error::corrupt(
            object,
            "key derivation parameters out of range",
        ));
    }
    Ok(file)
}

/// Snapshots sorted by time, and the snapshot files skipped (name, reason).
pub type SnapshotList = (Vec<(Id, Snapshot)>, Vec<(String, String)>);

impl Repository {
    /// Create a new repository in an empty location.
    ///
    /// # Errors
    /// [`Error::RepositoryExists`]; storage errors; invalid KDF cost.
    pub fn init(backend: Box<dyn Backend>, password: &[u8], cost: KdfCost) -> Result<Repository> {
        Repository::init_from(backend, password, cost, None)
    }

    /// Create a new repository; with `from`, one that shares `from`'s blob-ID
    /// and chunker keys and chunk sizes (its own encryption key), so that
    /// `copy` between them transfers only missing blobs and backups into
    /// either deduplicate the same way.
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_from(
        backend: Box<dyn Backend>,
        password: &[u8],
        cost: KdfCost,
        from: Option<&Repository>,
    ) -> Result<Repository> {
        if backend.exists(FileKind::Config, "")? {
            return Err(Error::RepositoryExists(backend.location()));
        }
        let key = match from {
            Some(r) => r.key.sibling(),
            None => MasterKey::generate(),
        };
        let key_bytes = new_key_file(&key, password, cost)?;
        backend.create()?;
        let key_name = Id::of_stored(&key_bytes).to_hex();
        backend.write(FileKind::Key, &key_name, key_bytes)?;
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random(),
            chunker: match from {
                Some(r) => r.config.chunker,
                None => ChunkerParams {
                    min: CHUNK_MIN,
                    avg: CHUNK_AVG,
                    max: CHUNK_MAX,
                    normalization: CHUNK_NORMALIZATION,
                },
            },
            zstd_level: DEFAULT_ZSTD_LEVEL,
            pack_size: PACK_TARGET_SIZE,
        };
        // The config is written last: a location without it is not a repository.
        backend.write(
            FileKind::Config,
            "",
            encode_metadata(&key, aad::CONFIG, &config)?,
        )?;
        Ok(Repository {
            backend,
            key,
            key_name,
            config,
        })
    }

    /// Open an existing repository with a password.
    ///
    /// # Errors
    /// [`Error::RepositoryNotFound`], [`Error::WrongPassword`], corrupt config or keys.
    pub fn open(backend: Box<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let config_bytes = match backend.read(FileKind::Config, "") {
            Ok(b) => b,
            Err(Error::NotFound(_)) => return Err(Error::RepositoryNotFound(backend.location())),
            Err(e) => return Err(e),
        };
        let keys = backend.list(FileKind::Key)?;
        if keys.is_empty() {
            return Err(Error::corrupt("repository", "it has no key files"));
        }
        // A damaged or foreign file in keys/ must not lock users out: try every key.
        let mut first_problem = None;
        let mut config_problem = None;
        let mut files = Vec::new();
        for k in &keys {
            match backend
                .read(FileKind::Key, &k.name)
                .and_then(|b| parse_key_file(&k.name, &b))
            {
                Ok(f) => files.push((k, f)),
                Err(e) => {
                    tracing::warn!("skipping key {}: {e}", k.name);
                    first_problem.get_or_insert(e);
                }
            }
        }
        let usable = files.len();
        // Cheapest derivation first: a planted key costlier than the right
        // one is then tried after it, and never delays an open that succeeds.
        files.sort_by_key(|(_, f)| u64::from(f.kdf.memory_kib) * u64::from(f.kdf.iterations));
        for (k, file) in files {
            let kek = match file.kdf.derive(password) {
                Ok(kek) => kek,
                Err(e) => {
                    tracing::warn!("skipping key {}: {e}", k.name);
                    first_problem.get_or_insert(e);
                    continue;
                }
            };
            let Some(master_json) = open_with(&kek, aad::KEY, &file.master) else {
                continue;
            };
            let master_json = zeroize::Zeroizing::new(master_json);
            let key: MasterKey = match serde_json::from_slice(&master_json) {
                Ok(key) => key,
                Err(e) => {
                    let e = Error::corrupt(format!("key {}", k.name), e.to_string());
                    tracing::warn!("skipping key {}: {e}", k.name);
                    config_problem.get_or_insert(e);
                    continue;
                }
            };
            // A key whose master key does not open the config is another
            // repository's: left by an init that was killed or lost a race
            // with another init (each writes its key, then the config).
            let json = match decode_metadata(&key, aad::CONFIG, &config_bytes, "config") {
                Ok(json) => json,
                Err(e) => {
                    tracing::debug!("key {} does not open the config: {e}", k.name);
                    config_problem.get_or_insert(e);
                    continue;
                }
            };
            let config: Config = serde_json::from_slice(&json)
                .map_err(|e| Error::corrupt("config", e.to_string()))?;
            if config.version != FORMAT_VERSION {
                return Err(Error::UnsupportedVersion {
                    found: config.version,
                    supported: FORMAT_VERSION,
                });
            }
            config
                .chunker
                .validate()
                .map_err(|e| Error::corrupt("config", e))?;
            if config.pack_size < 1 << 20 || config.pack_size > 1 << 30 {
                return Err(Error::corrupt(
                    "config",
                    format!("pack size {} out of range", config.pack_size),
                ));
            }
            return Ok(Repository {
                backend,
                key,
                key_name: k.name.clone(),
                config,
            });
        }
        match (config_problem, first_problem) {
            // The password opened a key, but no key opened the config.
            (Some(e), _) => Err(e),
            (None, Some(e)) if usable == 0 => Err(e),
            _ => Err(Error::WrongPassword),
        }
    }

    /// The storage backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The master key.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// The repository config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A chunker keyed for this repository.
    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.key.chunker_key(), self.config.chunker)
    }

    // ---- typed files ----

    fn domain(kind: FileKind) -> Result<&'static [u8]> {
        match kind {
            FileKind::Snapshot => Ok(aad::SNAPSHOT),
            FileKind::Index => Ok(aad::INDEX),
            other => Err(Error::Internal(format!(
                "{} files are not JSON metadata files",
                other.name()
            ))),
        }
    }

    /// Encrypt and store a JSON file (snapshot or index); returns its ID.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_json<T: Serialize>(&self, kind: FileKind, value: &T) -> Result<Id> {
        let stored = encode_metadata(&self.key, Self::domain(kind)?, value)?;
        let id = Id::of_stored(&stored);
        self.backend.write(kind, &id.to_hex(), stored)?;
        Ok(id)
    }

    /// Load and decrypt a JSON file (snapshot or index), verifying its name.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] naming the file.
    pub fn load_json<T: DeserializeOwned>(&self, kind: FileKind, id: &Id) -> Result<T> {
        let object = format!("{} {id}", kind.name());
        let mut stored = self.backend.read(kind, &id.to_hex())?;
        if Id::of_stored(&stored) != *id {
            return Err(Error::corrupt(
                object,
                "content does not match its name (modified or truncated)",
            ));
        }
        let plain = self
            .key
            .open_in_place(Self::domain(kind)?, &mut stored, &object)?;
        let json = metadata_json(plain, &object)?;
        let parsed = serde_json::from_reader(json);
        parsed.map_err(|e| Error::corrupt(object, e.to_string()))
    }

    /// Decrypted raw JSON of a file, for `cairn cat`.
    ///
    /// # Errors
    /// As [`Repository::load_json`].
    pub fn cat_file(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        match kind {
            FileKind::Config => {
                let stored = self.backend.read(kind, "")?;
                decode_metadata(&self.key, aad::CONFIG, &stored, "config")
            }
            FileKind::Key => self.backend.read(kind, name),
            FileKind::Snapshot | FileKind::Index => {
                let id: Id = name.parse()?;
                let v: serde_json::Value = self.load_json(kind, &id)?;
                serde_json::to_vec_pretty(&v).map_err(|e| Error::Internal(e.to_string()))
            }
            FileKind::Pack => Err(Error::InvalidInput(
                "use `cairn cat pack ID` for pack headers".into(),
            )),
        }
    }

    /// Resolve a unique ID prefix among the files of `kind`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AmbiguousId`].
    pub fn resolve(&self, kind: FileKind, prefix: &str) -> Result<Id> {
        if prefix.len() == 64 {
            return prefix.parse();
        }
        let mut found = None;
        for f in self.backend.list(kind)? {
            if f.name.starts_with(prefix) {
                if found.is_some() {
                    return Err(Error::AmbiguousId(prefix.to_string()));
                }
                found = Some(f.name);
            }
        }
        match found {
            Some(name) => name.parse(),
            None => Err(Error::NotFound(format!("{} {prefix}", kind.name()))),
        }
    }

    // ---- snapshots ----

    /// All snapshots, oldest first.
    ///
    /// # Errors
    /// Storage errors; corrupt snapshot files.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        Ok(self.snapshot_list()?.0)
    }

    /// [`Repository::snapshots`], and the snapshot files that were skipped
    /// (name and why).
    ///
    /// # Errors
    /// Storage errors while listing.
    pub fn snapshot_list(&self) -> Result<SnapshotList> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for f in self.backend.list(FileKind::Snapshot)? {
            let Ok(id) = f.name.parse::<Id>() else {
                tracing::warn!("skipping {:?} in snapshots/: its name is not an ID", f.name);
                continue;
            };
            match self.load_json::<Snapshot>(FileKind::Snapshot, &id) {
                Ok(s) => out.push((id, s)),
                // Removed by a concurrent forget between listing and reading.
                Err(Error::NotFound(_)) => continue,
                // One damaged snapshot must not hide the others (nor stop a
                // backup); `check` reports it and prune refuses to run.
                Err(e) => {
                    tracing::warn!("skipping snapshot {id}: {e}");
                    skipped.push((f.name, e.to_string()));
                }
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, skipped))
    }

    /// The newest snapshot that `matches`. While a snapshot file is damaged
    /// nobody can tell whether it is newer: refused, so that `latest` never
    /// silently means an older snapshot.
    ///
    /// # Errors
    /// [`Error::Refused`] with a damaged snapshot; [`Error::NotFound`].
    pub fn latest_snapshot(
        &self,
        what: &str,
        matches: impl Fn(&Snapshot) -> bool,
    ) -> Result<(Id, Snapshot)> {
        let (list, skipped) = self.snapshot_list()?;
        if let Some((name, why)) = skipped.first() {
            return Err(Error::Refused(format!(
                "cannot tell which is the latest {what}: snapshot {name} is damaged ({why}); name a snapshot by its ID, or remove the damaged file (`cairn check` lists it)"
            )));
        }
        list.into_iter()
            .rev()
            .find(|(_, s)| matches(s))
            .ok_or_else(|| Error::NotFound(what.to_string()))
    }

    /// Find a snapshot by ID prefix, or `latest`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AmbiguousId`], corrupt snapshot.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            return self.latest_snapshot("snapshot (the repository has no snapshots)", |_| true);
        }
        let id = self.resolve(FileKind::Snapshot, spec)?;
        Ok((id, self.load_json(FileKind::Snapshot, &id)?))
    }

    // ---- index and blobs ----

    /// Load every index file into memory.
    ///
    /// # Errors
    /// Storage errors; corrupt index files.
    pub fn load_index(&self) -> Result<IndexedRepository<'_>> {
        Ok(self.with_index(self.read_index()?))
    }

    /// [`Repository::load_index`], for a caller that has no further use for
    /// the repository without its index.
    ///
    /// # Errors
    /// As [`Repository::load_index`].
    pub fn into_indexed(self) -> Result<IndexedRepository<'static>> {
        let index = self.read_index()?;
        Ok(IndexedRepository {
            repo: Held::Owned(Box::new(self)),
            index,
        })
    }

    fn read_index(&self) -> Result<Index> {
        let mut index = Index::new();
        let mut loaded = BTreeSet::new();
        // A concurrent prune replaces index files: it writes the new ones, then
        // deletes the old. A file that vanishes between listing and reading
        // means a replacement exists, so list again (index files only add up).
        for attempt in 1.. {
            let mut vanished = None;
            for f in self.backend.list(FileKind::Index)? {
                if loaded.contains(&f.name) {
                    continue;
                }
                let Ok(id) = f.name.parse::<Id>() else {
                    tracing::warn!("skipping {:?} in index/: its name is not an ID", f.name);
                    loaded.insert(f.name);
                    continue;
                };
                match self.load_json::<IndexFile>(FileKind::Index, &id) {
                    Ok(file) => index.add_file(&file),
                    Err(Error::NotFound(what)) => {
                        vanished = Some(what);
                        continue;
                    }
                    // A damaged index file costs the blobs it lists (a backup
                    // stores them again, a restore reports the files that
                    // need them), not the whole repository. Prune and check
                    // read index files themselves and stop or report.
                    Err(e @ Error::Corrupt { .. }) => tracing::warn!("skipping index {id}: {e}"),
                    // Anything else (a timeout, a refusal) says nothing about
                    // the file: going on without it would make its blobs
                    // look lost (stored again, or cut by a repair).
                    Err(e) => return Err(e),
                }
                loaded.insert(f.name);
            }
            match vanished {
                None => break,
                Some(what) if attempt >= 5 => {
                    return Err(Error::NotFound(format!(
                        "{what} (index files keep changing while being read; is a prune running in a loop?)"
                    )))
                }
                Some(what) => tracing::debug!("{what} vanished while loading the index; listing again"),
            }
        }
        index.finish();
        Ok(index)
    }

    /// This repository with an index assembled elsewhere (check and prune
    /// read index files themselves, to report or refuse bad ones).
    pub fn with_index(&self, mut index: Index) -> IndexedRepository<'_> {
        index.finish();
        IndexedRepository {
            repo: Held::Borrowed(self),
            index,
        }
    }
}

impl IndexedRepository<'_> {
    /// The loaded index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Read, decrypt and verify a blob.
    ///
    /// # Errors
    /// [`Error::NotFound`] if not indexed; [`Error::Corrupt`] naming the blob and pack.
    pub fn read_blob(&self, t: BlobType, id: &Id) -> Result<Vec<u8>> {
        let loc = self
            .index
            .lookup(t, id)
            .ok_or_else(|| Error::NotFound(format!("{t} blob {id} (not in the index)")))?;
        if t == BlobType::Tree {
            // Trees are read again by every incremental backup, ls and diff: let a
            // caching backend keep their (small) packs locally.
            if let Err(e) = self.backend.cache_pack(&loc.pack.to_hex()) {
                tracing::debug!("not caching tree pack {}: {e}", loc.pack);
            }
        }
        self.check_raw_length(t, id, loc.raw_length)?;
        let stored = self.backend.read_range(
            FileKind::Pack,
            &loc.pack.to_hex(),
            u64::from(loc.offset),
            loc.length,
        )?;
        decode_blob(&self.key, t, id, &stored, loc.raw_length).map_err(|e| in_pack(e, &loc.pack))
    }

    /// Read data blobs in order, calling `f` with each plaintext. Blobs that lie
    /// back to back in one pack are fetched with one ranged read of at most
    /// `max_run` bytes: a restored file usually costs one request per pack, not
    /// one per chunk.
    ///
    /// # Errors
    /// As [`Repository::read_blob`]; the first error `f` returns.
    pub fn read_data_blobs(
        &self,
        ids: &[Id],
        max_run: u64,
        mut f: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let locs =
            ids.iter()
                .map(|id| {
                    let loc = self.index.lookup(BlobType::Data, id).ok_or_else(|| {
                        Error::NotFound(format!("data blob {id} (not in the index)"))
                    })?;
                    self.check_raw_length(BlobType::Data, id, loc.raw_length)?;
                    Ok((*id, loc))
                })
                .collect::<Result<Vec<_>>>()?;
        // Decompressed plaintexts: one buffer for the whole call.
        let mut scratch = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            let first = locs[i].1;
            let start = u64::from(first.offset);
            let mut end = start + u64::from(first.length);
            let mut j = i + 1;
            while j < locs.len()
                && locs[j].1.pack == first.pack
                && u64::from(locs[j].1.offset) == end
                && end + u64::from(locs[j].1.length) - start <= max_run
            {
                end += u64::from(locs[j].1.length);
                j += 1;
            }
            let mut run = self.backend.read_range(
                FileKind::Pack,
                &first.pack.to_hex(),
                start,
                (end - start) as u32,
            )?;
            for (id, loc) in &locs[i..j] {
                let at = (u64::from(loc.offset) - start) as usize;
                let stored = run
                    .get_mut(at..at + loc.length as usize)
                    .ok_or_else(|| Error::corrupt(format!("pack {}", loc.pack), "short read"))?;
                let data = decode_blob_in_place(
                    &self.key,
                    BlobType::Data,
                    id,
                    stored,
                    loc.raw_length,
                    &mut scratch,
                )
                .map_err(|e| in_pack(e, &loc.pack))?;
                f(data)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Read and parse a tree blob.
    ///
    /// # Errors
    /// As [`Repository::read_blob`], plus unparsable trees and trees that
    /// break the reader rules ([`Tree::validate`]).
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(BlobType::Tree, id)?;
        let tree: Tree = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("tree {id}"), e.to_string()))?;
        tree.validate()
            .map_err(|reason| Error::corrupt(format!("tree {id}"), reason))?;
        Ok(tree)
    }
}

impl Repository {
    /// Decoding reserves `raw_length` bytes up front: an index entry may not
    /// claim more than a blob can hold (a data blob, the chunker's maximum;
    /// a tree, [`MAX_TREE_BLOB`]), or a forged entry and a zstd bomb could
    /// make every restore worker allocate 4 GiB.
    pub(crate) fn check_raw_length(&self, t: BlobType, id: &Id, raw_length: u32) -> Result<()> {
        let max = match t {
            BlobType::Data => self.config.chunker.max as u64,
            BlobType::Tree => MAX_TREE_BLOB,
        };
        if u64::from(raw_length) > max {
            return Err(Error::corrupt(
                format!("{t} blob {id}"),
                format!(
                    "the index records {raw_length} bytes, more than such a blob holds ({max})"
                ),
            ));
        }
        Ok(())
    }

    // ---- keys ----

    /// Add a key file for another password; returns its name.
    ///
    /// # Errors
    /// Storage errors; KDF cost too low.
    pub fn add_key(&self, password: &[u8], cost: KdfCost) -> Result<String> {
        let bytes = new_key_file(&self.key, password, cost)?;
        let name = Id::of_stored(&bytes).to_hex();
        self.backend.write(FileKind::Key, &name, bytes)?;
        Ok(name)
    }

    /// List key files.
    ///
    /// # Errors
    /// Storage errors; unparsable key files.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for f in self.backend.list(FileKind::Key)? {
            let file = parse_key_file(&f.name, &self.backend.read(FileKind::Key, &f.name)?)?;
            out.push(KeyInfo {
                current: f.name == self.key_name,
                id: f.name,
                created: file.created,
                hostname: file.hostname,
                username: file.username,
            });
        }
        out.sort_by_key(|k| k.created);
        Ok(out)
    }

    /// Resolve a key name prefix.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AmbiguousId`].
    pub fn resolve_key(&self, prefix: &str) -> Result<String> {
        let matches: BTreeSet<String> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .map(|f| f.name)
            .filter(|n| n.starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Err(Error::NotFound(format!("key {prefix}"))),
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            _ => Err(Error::AmbiguousId(prefix.to_string())),
        }
    }

    /// Remove a key file. Refuses the key in use and the last key.
    ///
    /// # Errors
    /// [`Error::Refused`]; storage errors.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        if name == self.key_name {
            return Err(Error::Refused(
                "refusing to remove the key this repository was opened with (open it with another key)".into(),
            ));
        }
        if self.other_keys(name)? == 0 {
            return Err(Error::Refused("refusing to remove the last key".into()));
        }
        // Two removals running at once can each see another key left; the
        // one that finds none after its delete puts its key back.
        let bytes = self.backend.read(FileKind::Key, name)?;
        self.backend.remove(FileKind::Key, name)?;
        if self.other_keys(name)? == 0 {
            self.backend.write(FileKind::Key, name, bytes)?;
            return Err(Error::Refused(format!(
                "refusing to remove the last key: another key was removed at the same time, so key {name} was put back"
            )));
        }
        Ok(())
    }

    /// How many key files other than `name` are usable ones (a damaged or
    /// foreign file in keys/ opens nothing, so it does not count).
    fn other_keys(&self, name: &str) -> Result<usize> {
        let mut n = 0;
        for f in self.backend.list(FileKind::Key)? {
            if f.name != name
                && self
                    .backend
                    .read(FileKind::Key, &f.name)
                    .and_then(|b| parse_key_file(&f.name, &b))
                    .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Replace the current key's password: add a new key, then remove the old one.
    ///
    /// # Errors
    /// Storage errors; KDF cost too low.
    pub fn change_password(&mut self, new_password: &[u8], cost: KdfCost) -> Result<String> {
        let new_name = self.add_key(new_password, cost)?;
        let old = std::mem::replace(&mut self.key_name, new_name.clone());
        self.backend.remove(FileKind::Key, &old)?;
        Ok(new_name)
    }

    /// Name of the key file in use.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}
