//! Constants. The padding rule, nonce and tag sizes are fixed by repository
//! format version 1 (see `docs/FORMAT.md`); chunk sizes, pack size and zstd
//! level are defaults written into each new repository's config; the KDF and
//! index-flush values are writer settings.

/// Repository format version written by this build and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// FastCDC minimum chunk size (bytes).
pub const CHUNK_MIN: usize = 128 * 1024;
/// FastCDC average (target) chunk size (bytes). Chosen by measurement: see
/// `docs/FORMAT.md` (chunk parameters) and `examples/chunk_params.rs`.
pub const CHUNK_AVG: usize = 512 * 1024;
/// FastCDC maximum chunk size (bytes).
pub const CHUNK_MAX: usize = 2 * 1024 * 1024;
/// FastCDC normalisation level (2020 paper, "NC level").
pub const CHUNK_NORMALIZATION: u8 = 1;

/// Target size of a pack file; a pack is closed once it reaches this size.
pub const PACK_TARGET_SIZE: usize = 16 * 1024 * 1024;

/// Default zstd level for blobs and metadata.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Tree blobs are compressed at least at this level: directory listings are
/// rewritten whole whenever one entry changes, and level 6 stores a tree of
/// 1 000 small files ~10 % smaller than level 3 at half its speed (~116 MB/s).
pub const TREE_ZSTD_LEVEL: i32 = 6;

/// Blob sizes are padded to a multiple of `max(PAD_MIN, next_pow2(len) / PAD_DIVISOR)`
/// so that stored sizes do not reveal exact chunk lengths.
pub const PAD_DIVISOR: u64 = 256;
/// Smallest padding granule (bytes).
pub const PAD_MIN: u64 = 64;

/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// Default Argon2id memory cost (KiB) for new key files.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
/// Default Argon2id iterations for new key files.
pub const KDF_ITERATIONS: u32 = 3;
/// Default Argon2id parallelism for new key files.
pub const KDF_PARALLELISM: u32 = 1;
/// Lowest Argon2id memory cost accepted when creating a key (KiB).
pub const KDF_MIN_MEMORY_KIB: u32 = 1024;

/// An index file is written once this many new blobs are pending, so that a
/// crash loses little indexing work and index files stay small.
pub const INDEX_FLUSH_BLOBS: usize = 50_000;
/// An index file is also written once this long has passed since the last one,
/// so an uploaded pack is indexed soon after upload: `prune` treats packs that
/// stay unindexed for its grace period as debris of crashed backups.
pub const INDEX_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Deepest directory nesting that backup, restore and check descend into
/// (each level is a stack frame and, in backup and restore, an open
/// directory). Deeper subtrees are reported and skipped: a tree a tenant
/// nests a million levels deep must not overflow a stack.
pub const MAX_TREE_DEPTH: usize = 1024;

/// Largest plaintext a tree blob may have (a directory of a few million
/// entries); readers refuse index entries that claim more.
pub const MAX_TREE_BLOB: u64 = 1 << 30;

/// Largest JSON a metadata file (config, index, snapshot) may decompress to;
/// an index file of 50 000 blobs is about 10 MB, so a small crafted frame
/// cannot make a pod with a small memory limit allocate much.
pub const MAX_METADATA_JSON: u64 = 256 << 20;
