//! The repository's one write side: every command that stores blobs (backup,
//! copy, prune's repack) hands them to a [`Writer`], which owns what makes
//! storing them safe next to concurrent readers, writers and prunes:
//!
//! - the dedup claim ([`Writer::claim`]): a blob is stored unless the loaded
//!   index holds it in a live pack or this run already claimed it;
//! - the open packs, one per blob type (data and trees never share a pack),
//!   assembled on the backend's staging storage where it has one (a local
//!   repository: no pack-sized buffers in memory), else in memory;
//! - the uploaders, as many as the backend says are worth running at once,
//!   behind bounded channels, so a slow store throttles the callers;
//! - the pending index file and its flush policy: an index file is written
//!   once [`INDEX_FLUSH_BLOBS`] blobs are pending or [`INDEX_FLUSH_INTERVAL`]
//!   has passed since the last one (checked by a timer, so a backup reading a
//!   slow source still indexes what it uploaded), and once more at the end;
//! - the order rule prune's safety argument relies on (docs/FORMAT.md §12):
//!   a tree blob is indexed only after every blob claimed before it, so an
//!   index never lists a tree whose files' data it does not also list, even
//!   when the run is killed between two index files;
//! - what happens on failure: open packs are dropped, and the packs already
//!   uploaded are indexed (best effort), so the next backup reuses them.
//!
//! Prune's repack uses [`Indexing::Collect`]: the writer returns the packs
//! it stored and writes no index (prune writes its own, all at once).
//!
//! ```text
//! callers ──Input──▶ packer (one open pack per type) ──ReadyPack──▶ uploaders ──▶ backend
//!   claim/seq                                                            │ uploaded
//!                                          index (ordered by seq) ◀──────┘
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::backend::FileKind;
use crate::blob::{blob_buffer, encode_blob_buf, BlobType, BLOB_HEADROOM};
use crate::blobset::BlobSet;
use crate::constants::{INDEX_FLUSH_BLOBS, INDEX_FLUSH_INTERVAL};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::{FinishedPack, PackWriter, PackedBlob, StagedPack, StagedPackWriter};
use crate::repository::{IndexedRepository, Repository};

/// How often the timer looks whether an index file is due.
const TICK: Duration = Duration::from_secs(1);

/// What the writer does with the packs it stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indexing {
    /// Write index files for them (backup, copy).
    Write,
    /// Return them in [`WriteReport::packs`] and write no index (prune's repack).
    Collect,
}

/// The right to store one blob, from [`Writer::claim`] or [`Writer::ticket`].
/// Its number orders the blob among everything this run stores.
#[derive(Debug)]
#[must_use = "a claimed blob must be stored"]
pub struct Ticket(u64);

/// What a write session stored.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Data blobs stored.
    pub data_blobs: u64,
    /// Tree blobs stored.
    pub tree_blobs: u64,
    /// Plaintext bytes of the blobs stored.
    pub raw_bytes: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Bytes of the packs written.
    pub pack_bytes: u64,
    /// Index files written (in order).
    pub index_files: Vec<Id>,
    /// With [`Indexing::Collect`]: the packs written and their blobs.
    pub packs: Vec<(Id, Vec<PackedBlob>)>,
}

/// A sealed blob on its way into a pack.
struct Sealed {
    blob_type: BlobType,
    id: Id,
    encoded: Vec<u8>,
    raw_len: u32,
    seq: u64,
}

enum Input {
    Blob(Sealed),
    /// Blobs one caller gathered in a [`Batch`], in the order it saved them.
    Blobs(Vec<Sealed>),
    /// Close the open packs now (for [`Writer::flush`]).
    Flush,
}

/// Claims and the order of blobs: which claimed blobs are not stored yet.
#[derive(Default)]
struct Claims {
    /// Blobs claimed by this run (not in the loaded index).
    claimed: BlobSet,
    next_seq: u64,
    /// Sequence numbers of blobs claimed and not yet in an uploaded pack.
    unstored: BTreeSet<u64>,
}

impl Claims {
    fn ticket(&mut self) -> Ticket {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unstored.insert(seq);
        Ticket(seq)
    }

    /// Every blob numbered below this is in an uploaded pack.
    fn low_water(&self) -> u64 {
        self.unstored.first().copied().unwrap_or(self.next_seq)
    }
}

/// An uploaded tree pack waiting for the blobs claimed before its trees.
struct Held {
    pack: Id,
    blobs: Vec<PackedBlob>,
    /// The highest sequence number in the pack.
    last_seq: u64,
}

/// Uploaded packs on their way into index files.
struct Pending {
    index: IndexFile,
    held: Vec<Held>,
    last_flush: Instant,
    index_files: Vec<Id>,
    collected: Vec<(Id, Vec<PackedBlob>)>,
}

#[derive(Default)]
struct Counters {
    data_blobs: AtomicU64,
    tree_blobs: AtomicU64,
    raw_bytes: AtomicU64,
    packs_written: AtomicU64,
    pack_bytes: AtomicU64,
}

/// State shared by the writer's callers and its threads.
struct State<'r> {
    repo: &'r IndexedRepository<'r>,
    indexing: Indexing,
    failed: AtomicBool,
    fatal: Mutex<Option<Error>>,
    claims: Mutex<Claims>,
    /// Signalled whenever a pack is uploaded (or the writer fails).
    stored: Condvar,
    pending: Mutex<Pending>,
    counters: Counters,
    /// An index file is due this long after the last one.
    interval: Duration,
    /// Held while an index file is taken from `pending` and written: a
    /// flusher waits for a write in progress on another thread, so that when
    /// `Writer::flush` returns, every index file it relies on exists.
    writing: Mutex<()>,
    /// Set when the session ends: the timer stops.
    done: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State<'_> {
    fn fail(&self, e: Error) {
        lock(&self.fatal).get_or_insert(e);
        self.failed.store(true, Ordering::SeqCst);
        // Wake a caller waiting in flush().
        let _claims = lock(&self.claims);
        self.stored.notify_all();
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Record an uploaded pack: its blobs are stored, and it goes into the
    /// index as soon as the order rule allows.
    fn uploaded(&self, id: Id, blobs: Vec<PackedBlob>, seqs: &[u64]) {
        // The pending index is locked first and kept until the pack is in it:
        // a caller in `Writer::flush` that wakes because nothing is unstored
        // must find this pack in the index it then writes (lock order:
        // pending, then claims).
        let mut p = lock(&self.pending);
        let low_water = {
            let mut c = lock(&self.claims);
            for s in seqs {
                c.unstored.remove(s);
            }
            self.stored.notify_all();
            c.low_water()
        };
        // Widens the window in which a flusher could run before this pack
        // is in the index (the race that holding `pending` closes).
        #[cfg(test)]
        std::thread::sleep(Duration::from_millis(2));
        if self.indexing == Indexing::Collect {
            p.collected.push((id, blobs));
            return;
        }
        let is_tree = blobs.first().is_some_and(|b| b.blob_type == BlobType::Tree);
        match seqs.iter().max() {
            Some(&last_seq) if is_tree => p.held.push(Held {
                pack: id,
                blobs,
                last_seq,
            }),
            _ => p.index.add_pack(id, &blobs),
        }
        release_held(&mut p, low_water);
    }

    /// Write the pending index file if it is due, or whenever it has entries
    /// when `force`.
    fn flush_index(&self, force: bool) -> Result<()> {
        if self.indexing == Indexing::Collect {
            return Ok(());
        }
        let due = |p: &Pending| {
            !p.index.packs.is_empty()
                && (force
                    || p.index.blob_count() >= INDEX_FLUSH_BLOBS
                    || p.last_flush.elapsed() >= self.interval)
        };
        // Most calls (one per uploaded pack) find nothing due: they return
        // without waiting for another thread's index write in progress.
        if !force && !due(&lock(&self.pending)) {
            return Ok(());
        }
        let _writing = lock(&self.writing);
        let file = {
            let mut p = lock(&self.pending);
            if !due(&p) {
                return Ok(());
            }
            p.last_flush = Instant::now();
            std::mem::take(&mut p.index)
        };
        match self.repo.save_json(FileKind::Index, &file) {
            Ok(id) => {
                drop(file);
                release_free_memory();
                lock(&self.pending).index_files.push(id);
                Ok(())
            }
            Err(e) => {
                // Back into the pending index: a later flush (or the failure
                // path) writes these entries instead of losing them.
                lock(&self.pending).index.packs.extend(file.packs);
                Err(e)
            }
        }
    }

    /// Move the held tree packs whose earlier blobs are all stored into the
    /// pending index, then write it (when `force`, or when due).
    fn publish(&self, force: bool) -> Result<()> {
        let low_water = lock(&self.claims).low_water();
        release_held(&mut lock(&self.pending), low_water);
        self.flush_index(force)
    }
}

/// Index the held tree packs whose every earlier blob is stored.
fn release_held(p: &mut Pending, low_water: u64) {
    let mut i = 0;
    while i < p.held.len() {
        if p.held[i].last_seq < low_water {
            let h = p.held.swap_remove(i);
            p.index.add_pack(h.pack, &h.blobs);
        } else {
            i += 1;
        }
    }
}

/// Give free memory held by the allocator back to the system. Writing an
/// index file frees several megabytes (the file's blobs, its compressed JSON)
/// that glibc would otherwise keep in the writing thread's arena, so with
/// many small files a backup's footprint grew with every index file.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The writing end handed to the session's body: claim blobs, store them,
/// flush. Shared by reference among the caller's threads.
pub struct Writer<'s, 'r> {
    state: &'s State<'r>,
    input: Sender<Input>,
    level: i32,
}

impl Writer<'_, '_> {
    /// The repository written to.
    pub fn repo(&self) -> &IndexedRepository<'_> {
        self.state.repo
    }

    /// Whether the blob must be stored: it is in no live pack of the loaded
    /// index and this run has not claimed it yet. The ticket must then be
    /// spent on [`Writer::save`] (or the session ends with an error).
    pub fn claim(&self, t: BlobType, id: Id) -> Option<Ticket> {
        if self.state.repo.index().contains_live(t, &id) {
            return None;
        }
        let mut c = lock(&self.state.claims);
        c.claimed.insert(t, id).then(|| c.ticket())
    }

    /// Whether the blob is in a live pack of the loaded index or claimed by
    /// this run.
    pub fn has(&self, t: BlobType, id: &Id) -> bool {
        self.state.repo.index().contains_live(t, id)
            || lock(&self.state.claims).claimed.contains(t, id)
    }

    /// A ticket without a dedup claim (prune's repack, which copies blobs it
    /// chose itself).
    pub fn ticket(&self) -> Ticket {
        lock(&self.state.claims).ticket()
    }

    /// Whether the writer failed (the session then ends with its error).
    pub fn failed(&self) -> bool {
        self.state.failed()
    }

    /// Encode (compress, pad, encrypt) and store a blob; `plain` in a
    /// [`blob_buffer`] (the plaintext after [`BLOB_HEADROOM`] bytes).
    ///
    /// # Errors
    /// The writer failed or stopped.
    pub fn save_buf(&self, ticket: Ticket, t: BlobType, id: Id, buf: Vec<u8>) -> Result<()> {
        let raw_len = u32::try_from(buf.len().saturating_sub(BLOB_HEADROOM))
            .map_err(|_| Error::Internal(format!("blob {id} larger than 4 GiB")))?;
        let encoded = encode_blob_buf(self.state.repo.key(), t, &id, buf, self.level);
        self.save_sealed(ticket, t, id, encoded, raw_len)
    }

    /// [`Writer::save_buf`] for plaintext in any buffer.
    ///
    /// # Errors
    /// The writer failed or stopped.
    pub fn save(&self, ticket: Ticket, t: BlobType, id: Id, plain: &[u8]) -> Result<()> {
        self.save_buf(ticket, t, id, blob_buffer(plain))
    }

    /// Store a blob already sealed with this repository's key.
    ///
    /// # Errors
    /// The writer failed or stopped.
    pub fn save_sealed(
        &self,
        ticket: Ticket,
        t: BlobType,
        id: Id,
        encoded: Vec<u8>,
        raw_len: u32,
    ) -> Result<()> {
        let sealed = Sealed {
            blob_type: t,
            id,
            encoded,
            raw_len,
            seq: ticket.0,
        };
        self.input
            .send(Input::Blob(sealed))
            .map_err(|_| Error::Internal("pack writer stopped".into()))
    }

    /// Store everything saved so far and index it: on return, every blob
    /// saved before the call is in the repository's index files (for a
    /// caller about to write a snapshot while the session goes on). Only
    /// meaningful when no other thread is saving meanwhile.
    ///
    /// # Errors
    /// The writer failed (its error).
    pub fn flush(&self) -> Result<()> {
        self.input
            .send(Input::Flush)
            .map_err(|_| Error::Internal("pack writer stopped".into()))?;
        {
            let mut c = lock(&self.state.claims);
            while !c.unstored.is_empty() && !self.state.failed() {
                c = self
                    .state
                    .stored
                    .wait(c)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        self.check_failed()?;
        self.state.publish(true)?;
        // An index write of another thread that this flush waited for may
        // have failed meanwhile.
        self.check_failed()
    }

    /// The writer's first error, once it failed.
    fn check_failed(&self) -> Result<()> {
        if self.state.failed() {
            return Err(lock(&self.state.fatal)
                .take()
                .unwrap_or_else(|| Error::Internal("pack writer failed".into())));
        }
        Ok(())
    }

    /// Close the open packs and wait (at most `limit`) until everything
    /// saved so far is uploaded: an interrupted run then indexes it all.
    fn finish_uploads(&self, limit: Duration) {
        if self.input.send(Input::Flush).is_err() {
            return;
        }
        let deadline = Instant::now() + limit;
        let mut c = lock(&self.state.claims);
        while !c.unstored.is_empty() && !self.state.failed() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            c = self
                .state
                .stored
                .wait_timeout(c, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A batch is handed to the packer once it holds this many blobs...
const BATCH_BLOBS: usize = 64;
/// ...or this many sealed bytes (a single chunk of file data is usually
/// more, so large blobs still go one by one).
const BATCH_BYTES: usize = 256 << 10;

/// Blobs saved by one thread and handed to the packer in groups instead of
/// one at a time. For a caller that stores many small blobs (a copy of
/// 200 000 tiny files), waking the packer for each blob was most of the
/// CPU time the writer added (channel spinning, futex wake-ups and context
/// switches: about 8 % of the copy's samples).
///
/// The blobs keep their tickets, so the order rule and the claims are
/// unchanged; a blob not yet handed over is simply not in a pack yet.
/// [`Batch::flush`] hands over what is gathered before [`Writer::flush`];
/// dropping the batch hands it over too, so that every claimed blob reaches
/// the packer (an interrupted body's blobs are then uploaded and indexed by
/// the session like any other).
pub struct Batch<'a, 's, 'r> {
    writer: &'a Writer<'s, 'r>,
    blobs: Vec<Sealed>,
    bytes: usize,
}

impl<'s, 'r> Writer<'s, 'r> {
    /// A batch of saves for the calling thread.
    pub fn batch(&self) -> Batch<'_, 's, 'r> {
        Batch {
            writer: self,
            blobs: Vec::new(),
            bytes: 0,
        }
    }
}

impl<'s, 'r> Batch<'_, 's, 'r> {
    /// The writer the batch saves to.
    pub fn writer(&self) -> &Writer<'s, 'r> {
        self.writer
    }

    /// [`Writer::save`], handed to the packer with the next full batch.
    ///
    /// # Errors
    /// The writer failed or stopped.
    pub fn save(&mut self, ticket: Ticket, t: BlobType, id: Id, plain: &[u8]) -> Result<()> {
        let w = self.writer;
        let buf = blob_buffer(plain);
        let raw_len = u32::try_from(plain.len())
            .map_err(|_| Error::Internal(format!("blob {id} larger than 4 GiB")))?;
        let encoded = encode_blob_buf(w.state.repo.key(), t, &id, buf, w.level);
        self.bytes += encoded.len();
        self.blobs.push(Sealed {
            blob_type: t,
            id,
            encoded,
            raw_len,
            seq: ticket.0,
        });
        if self.blobs.len() >= BATCH_BLOBS || self.bytes >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// Hand the gathered blobs to the packer.
    ///
    /// # Errors
    /// The writer stopped.
    pub fn send(&mut self) -> Result<()> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let blobs = std::mem::take(&mut self.blobs);
        self.writer
            .input
            .send(Input::Blobs(blobs))
            .map_err(|_| Error::Internal("pack writer stopped".into()))
    }

    /// Hand over the gathered blobs, then [`Writer::flush`].
    ///
    /// # Errors
    /// As [`Writer::flush`].
    pub fn flush(&mut self) -> Result<()> {
        self.send()?;
        self.writer.flush()
    }
}

impl Drop for Batch<'_, '_, '_> {
    fn drop(&mut self) {
        // Claimed blobs must reach the packer, or the session waits for them.
        let _ = self.send();
    }
}

/// A pack being assembled, with the sequence numbers of its blobs.
struct OpenPack {
    pack: PackBody,
    seqs: Vec<u64>,
}

enum PackBody {
    Memory(PackWriter),
    Staged(Box<StagedPackWriter>),
}

/// A complete pack on its way to the uploaders.
struct ReadyPack {
    body: ReadyBody,
    seqs: Vec<u64>,
}

enum ReadyBody {
    Memory(FinishedPack),
    Staged(StagedPack),
}

impl OpenPack {
    fn new(repo: &Repository) -> Result<OpenPack> {
        let pack = match repo.backend().stage(FileKind::Pack)? {
            Some(file) => PackBody::Staged(Box::new(StagedPackWriter::new(file))),
            None => PackBody::Memory(PackWriter::new()),
        };
        Ok(OpenPack {
            pack,
            seqs: Vec::new(),
        })
    }

    fn add(&mut self, b: &Sealed) -> Result<usize> {
        self.seqs.push(b.seq);
        Ok(match &mut self.pack {
            PackBody::Memory(w) => {
                w.add(b.blob_type, b.id, &b.encoded, b.raw_len);
                w.size()
            }
            PackBody::Staged(w) => {
                w.add(b.blob_type, b.id, &b.encoded, b.raw_len)?;
                w.size()
            }
        })
    }

    fn finish(self, key: &crate::crypto::MasterKey) -> Result<ReadyPack> {
        let body = match self.pack {
            PackBody::Memory(w) => ReadyBody::Memory(w.finish(key)),
            PackBody::Staged(w) => ReadyBody::Staged(w.finish(key)?),
        };
        Ok(ReadyPack {
            body,
            seqs: self.seqs,
        })
    }
}

fn pack_blobs(state: &State<'_>, input: Receiver<Input>, packs: Sender<ReadyPack>) {
    let _guard = FailOnPanic(state);
    let repo = state.repo;
    let key = repo.key();
    let target = repo.config().pack_size;
    // [data, trees]: the two kinds go to separate packs.
    let mut open: [Option<OpenPack>; 2] = [None, None];
    let c = &state.counters;
    let close = |open: &mut [Option<OpenPack>; 2]| {
        for w in open.iter_mut().filter_map(Option::take) {
            match w.finish(key) {
                Ok(ready) => {
                    if packs.send(ready).is_err() {
                        return;
                    }
                }
                Err(e) => state.fail(e),
            }
        }
    };
    // Adds one blob; false when the uploaders are gone.
    let add = |open: &mut [Option<OpenPack>; 2], b: Sealed| -> bool {
        match b.blob_type {
            BlobType::Data => c.data_blobs.fetch_add(1, Ordering::Relaxed),
            BlobType::Tree => c.tree_blobs.fetch_add(1, Ordering::Relaxed),
        };
        c.raw_bytes
            .fetch_add(u64::from(b.raw_len), Ordering::Relaxed);
        let slot = &mut open[b.blob_type.index()];
        let step = (|| -> Result<Option<ReadyPack>> {
            let w = match slot {
                Some(w) => w,
                None => slot.insert(OpenPack::new(repo)?),
            };
            if w.add(&b)? < target {
                return Ok(None);
            }
            slot.take().map(|full| full.finish(key)).transpose()
        })();
        match step {
            Ok(Some(ready)) => packs.send(ready).is_ok(),
            Ok(None) => true,
            Err(e) => {
                state.fail(e);
                true
            }
        }
    };
    for msg in input {
        if state.failed() {
            continue; // drain, so that the callers can finish
        }
        match msg {
            Input::Blob(b) => {
                if !add(&mut open, b) {
                    return;
                }
            }
            Input::Blobs(blobs) => {
                for b in blobs {
                    if state.failed() {
                        break;
                    }
                    if !add(&mut open, b) {
                        return;
                    }
                }
            }
            Input::Flush => close(&mut open),
        }
    }
    if !state.failed() {
        close(&mut open);
    }
    // On failure the open packs are dropped here (staged ones are removed).
}

/// Marks the writer failed if the thread holding it panics, so that a
/// caller waiting in `Writer::flush` for its uploads is woken.
struct FailOnPanic<'s, 'r>(&'s State<'r>);

impl Drop for FailOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(Error::Internal("a pack writer thread panicked".into()));
        }
    }
}

fn upload_packs(state: &State<'_>, packs: Receiver<ReadyPack>) {
    let _guard = FailOnPanic(state);
    for p in packs {
        if state.failed() {
            continue; // drain, so that the packer can finish
        }
        let (id, size, stored) = match p.body {
            ReadyBody::Memory(f) => {
                let size = f.bytes.len() as u64;
                let stored = state
                    .repo
                    .backend()
                    .write(FileKind::Pack, &f.id.to_hex(), f.bytes)
                    .map(|()| f.blobs);
                (f.id, size, stored)
            }
            ReadyBody::Staged(s) => (s.id, s.size, s.commit()),
        };
        match stored {
            Ok(blobs) => {
                let c = &state.counters;
                c.packs_written.fetch_add(1, Ordering::Relaxed);
                c.pack_bytes.fetch_add(size, Ordering::Relaxed);
                state.uploaded(id, blobs, &p.seqs);
                if let Err(e) = state.flush_index(false) {
                    state.fail(e);
                }
            }
            Err(e) => state.fail(e),
        }
    }
}

/// Run `body` with a [`Writer`] on `repo`, then store and index everything
/// it saved. The repository's index must be loaded (it is the dedup base).
///
/// On success every saved blob is in an uploaded pack and (with
/// [`Indexing::Write`]) in an index file written before this returns, so the
/// caller may then write a snapshot that references them.
///
/// # Errors
/// The body's error, or the writer's first storage error. Either way the
/// packs uploaded so far are indexed first (best effort), so that a later
/// backup reuses them; open packs are dropped.
pub fn write_session<R>(
    repo: &IndexedRepository<'_>,
    indexing: Indexing,
    body: impl FnOnce(&Writer<'_, '_>) -> Result<R>,
) -> Result<(R, WriteReport)> {
    session(repo, indexing, INDEX_FLUSH_INTERVAL, body)
}

fn session<R>(
    repo: &IndexedRepository<'_>,
    indexing: Indexing,
    interval: Duration,
    body: impl FnOnce(&Writer<'_, '_>) -> Result<R>,
) -> Result<(R, WriteReport)> {
    let state = State {
        repo,
        indexing,
        failed: AtomicBool::new(false),
        fatal: Mutex::new(None),
        claims: Mutex::new(Claims::default()),
        stored: Condvar::new(),
        pending: Mutex::new(Pending {
            index: IndexFile::default(),
            held: Vec::new(),
            last_flush: Instant::now(),
            index_files: Vec::new(),
            collected: Vec::new(),
        }),
        counters: Counters::default(),
        interval,
        writing: Mutex::new(()),
        done: Mutex::new(false),
        wake: Condvar::new(),
    };
    let uploaders = repo.backend().concurrency().max(1);
    let result = std::thread::scope(|s| {
        let state = &state;
        let (input_tx, input_rx) = bounded::<Input>(uploaders.max(2) * 2);
        let (pack_tx, pack_rx) = bounded::<ReadyPack>(1);
        s.spawn(move || pack_blobs(state, input_rx, pack_tx));
        for _ in 0..uploaders {
            let rx = pack_rx.clone();
            s.spawn(move || upload_packs(state, rx));
        }
        drop(pack_rx);
        if indexing == Indexing::Write {
            let input = input_tx.clone();
            s.spawn(move || {
                let mut last_close = Instant::now();
                let mut done = lock(&state.done);
                while !*done {
                    done = state
                        .wake
                        .wait_timeout(done, TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if *done || state.failed() {
                        continue;
                    }
                    // Tree packs held back by a data pack that stays open
                    // (few new data blobs, many changed trees): close the open
                    // packs once per interval so that the trees get indexed.
                    if last_close.elapsed() >= state.interval
                        && !lock(&state.pending).held.is_empty()
                    {
                        last_close = Instant::now();
                        let _ = input.try_send(Input::Flush);
                    }
                    if let Err(e) = state.publish(false) {
                        state.fail(e);
                    }
                }
                // `input` is dropped here, after the body's writer: the
                // packer then sees the input closed.
            });
        }
        // Declared first, dropped last: even when the body panics, the input
        // closes (the packer and the uploaders finish) and then the timer stops,
        // so the scope can join them all instead of waiting forever.
        let stop_timer = StopTimer(state);
        let writer = Writer {
            state,
            input: input_tx,
            level: repo.config().zstd_level,
        };
        let result = body(&writer);
        if matches!(result, Err(Error::Interrupted)) {
            // Upload what is packed so far (bounded: Kubernetes sends SIGKILL
            // 30 s after SIGTERM by default), so that all of it is indexed.
            writer.finish_uploads(Duration::from_secs(15));
        }
        if result.is_err() {
            // Stop packing: what is not uploaded yet is dropped.
            state.failed.store(true, Ordering::SeqCst);
        }
        drop(writer);
        drop(stop_timer);
        result
    });
    // Every thread of the session has finished here (the scope joined them).
    let fatal = lock(&state.fatal).take();
    // A storage error of the writer explains why the body stopped.
    let outcome = match (result, fatal) {
        (_, Some(e)) | (Err(e), None) => Err(e),
        (Ok(r), None) => Ok(r),
    };
    match outcome {
        Ok(r) => {
            let c = lock(&state.claims);
            if !c.unstored.is_empty() {
                return Err(Error::Internal(format!(
                    "{} blobs were claimed but never stored",
                    c.unstored.len()
                )));
            }
            drop(c);
            state.publish(true)?;
            Ok((r, report(state)))
        }
        Err(e) => {
            // Index what was uploaded (the order rule still holds: trees
            // whose earlier blobs are missing stay out), so that the next
            // backup reuses it instead of uploading it again.
            if let Err(ie) = state.publish(true) {
                tracing::warn!("could not index the packs uploaded before the failure: {ie}");
            }
            Err(e)
        }
    }
}

/// Tells the timer thread to stop when dropped.
struct StopTimer<'s, 'r>(&'s State<'r>);

impl Drop for StopTimer<'_, '_> {
    fn drop(&mut self) {
        *lock(&self.0.done) = true;
        self.0.wake.notify_all();
    }
}

fn report(state: State<'_>) -> WriteReport {
    let c = &state.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let p = state
        .pending
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    WriteReport {
        data_blobs: get(&c.data_blobs),
        tree_blobs: get(&c.tree_blobs),
        raw_bytes: get(&c.raw_bytes),
        packs_written: get(&c.packs_written),
        pack_bytes: get(&c.pack_bytes),
        index_files: p.index_files,
        packs: p.collected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::repository::KdfCost;

    fn repo(dir: &std::path::Path) -> Repository {
        let cost = KdfCost {
            memory_kib: 1024,
            iterations: 1,
        };
        Repository::init(Box::new(LocalBackend::new(dir)), b"pw", cost).unwrap()
    }

    /// The index files written so far, in no particular order, as the blob
    /// IDs each lists.
    fn index_files(repo: &Repository) -> Vec<Vec<Id>> {
        let backend = repo.backend();
        let mut out = Vec::new();
        for f in backend.list(FileKind::Index).unwrap() {
            let id: Id = f.name.parse().unwrap();
            let file: IndexFile = repo.load_json(FileKind::Index, &id).unwrap();
            out.push(
                file.packs
                    .iter()
                    .flat_map(|p| p.blobs.iter().map(|b| b.id))
                    .collect(),
            );
        }
        out
    }

    /// Wait until `n` claimed blobs are still unstored.
    fn wait_unstored(w: &Writer<'_, '_>, n: usize) {
        let mut c = lock(&w.state.claims);
        while c.unstored.len() != n {
            c = w.state.stored.wait(c).unwrap();
        }
    }

    /// The order rule of FORMAT.md §12: a tree stored before the data it
    /// references (blob workers run in parallel) must not be indexed before
    /// that data, or a backup killed between two index files leaves an
    /// index that lists a tree whose data is nowhere.
    #[test]
    fn a_tree_is_indexed_only_after_the_blobs_claimed_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let data = b"file content".to_vec();
        let data_id = repo.key().blob_id(&data);
        let tree = b"a tree that lists the file".to_vec();
        let tree_id = repo.key().blob_id(&tree);
        write_session(&repo, Indexing::Write, |w| {
            let d = w.claim(BlobType::Data, data_id).unwrap();
            let t = w.claim(BlobType::Tree, tree_id).unwrap();
            assert!(w.claim(BlobType::Data, data_id).is_none(), "claimed twice");
            w.save(t, BlobType::Tree, tree_id, &tree)?;
            w.input.send(Input::Flush).unwrap();
            wait_unstored(w, 1); // the tree's pack is uploaded; the data is not
            w.state.publish(true)?;
            assert_eq!(
                index_files(&repo),
                Vec::<Vec<Id>>::new(),
                "tree indexed first"
            );
            w.save(d, BlobType::Data, data_id, &data)?;
            w.flush()?;
            let files = index_files(&repo);
            assert_eq!(files.len(), 1, "{files:?}");
            assert!(files[0].contains(&data_id) && files[0].contains(&tree_id));
            Ok(())
        })
        .unwrap();
    }

    /// A session that fails indexes the packs it uploaded, so the next
    /// backup finds them instead of uploading them again.
    #[test]
    fn a_failed_session_indexes_what_it_uploaded() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let data = vec![3u8; 100_000];
        let data_id = repo.key().blob_id(&data);
        let failed = write_session(&repo, Indexing::Write, |w| -> Result<()> {
            let d = w.claim(BlobType::Data, data_id).unwrap();
            w.save(d, BlobType::Data, data_id, &data)?;
            w.input.send(Input::Flush).unwrap();
            wait_unstored(w, 0);
            Err(Error::InvalidInput("the caller gave up".into()))
        });
        assert!(matches!(failed, Err(Error::InvalidInput(_))), "{failed:?}");
        assert_eq!(index_files(&repo), vec![vec![data_id]]);
    }

    /// A blob claimed and never saved is a bug of the caller: the session
    /// says so instead of ending as if everything were stored.
    #[test]
    fn a_claim_never_saved_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let id = repo.key().blob_id(b"x");
        let r = write_session(&repo, Indexing::Write, |w| {
            let _never_saved = w.claim(BlobType::Data, id);
            Ok(())
        });
        assert!(matches!(r, Err(Error::Internal(_))), "{r:?}");
    }

    /// An uploaded pack is indexed on time even when nothing else happens
    /// (a backup reading a slow source uploads no further pack for long).
    #[test]
    fn uploaded_packs_are_indexed_on_time_without_further_uploads() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let data = vec![5u8; 10_000];
        let data_id = repo.key().blob_id(&data);
        session(&repo, Indexing::Write, Duration::from_millis(200), |w| {
            let d = w.claim(BlobType::Data, data_id).unwrap();
            w.save(d, BlobType::Data, data_id, &data)?;
            w.input.send(Input::Flush).unwrap();
            wait_unstored(w, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while index_files(&repo).is_empty() {
                assert!(Instant::now() < deadline, "not indexed within 10 s");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(index_files(&repo), vec![vec![data_id]]);
            Ok(())
        })
        .unwrap();
    }

    /// After `flush` returns, the index files list every blob saved before
    /// it (a copy writes its snapshot right then). Repeated, because the
    /// flusher and the uploader race.
    #[test]
    fn after_flush_every_saved_blob_is_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        write_session(&repo, Indexing::Write, |w| {
            for i in 0..200u32 {
                let plain = i.to_le_bytes().repeat(100);
                let id = repo.key().blob_id(&plain);
                let ticket = w.claim(BlobType::Data, id).unwrap();
                w.save(ticket, BlobType::Data, id, &plain)?;
                w.flush()?;
                let indexed = index_files(&repo).concat();
                assert!(
                    indexed.contains(&id),
                    "round {i}: blob saved before flush not indexed"
                );
            }
            Ok(())
        })
        .unwrap();
    }

    /// Blobs saved through a batch are stored and indexed by its flush, in
    /// packs like any other, and a batch dropped with blobs still gathered
    /// hands them over (the session would otherwise report them claimed and
    /// never stored).
    #[test]
    fn a_batch_hands_over_its_blobs_on_flush_and_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let blob = |i: u32| {
            let plain = i.to_le_bytes().repeat(50);
            (repo.key().blob_id(&plain), plain)
        };
        let (_, report) = write_session(&repo, Indexing::Write, |w| {
            let mut batch = w.batch();
            for i in 0..(BATCH_BLOBS as u32 * 2 + 5) {
                let (id, plain) = blob(i);
                let t = w.claim(BlobType::Data, id).unwrap();
                batch.save(t, BlobType::Data, id, &plain)?;
            }
            batch.flush()?;
            let indexed = index_files(&repo).concat();
            assert_eq!(indexed.len(), BATCH_BLOBS * 2 + 5, "all indexed by flush");
            let (id, plain) = blob(10_000);
            let t = w.claim(BlobType::Data, id).unwrap();
            batch.save(t, BlobType::Data, id, &plain)?;
            Ok(()) // dropped with one blob gathered
        })
        .unwrap();
        assert_eq!(report.data_blobs, BATCH_BLOBS as u64 * 2 + 6);
        assert_eq!(index_files(&repo).concat().len(), BATCH_BLOBS * 2 + 6);
    }

    /// A panicking body (a bug) ends the session with the panic instead of
    /// leaving the writer's threads waiting forever.
    #[test]
    fn a_panicking_body_does_not_hang_the_session() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_session(&repo, Indexing::Write, |_| -> Result<()> {
                panic!("a bug")
            })
        }));
        assert!(r.is_err());
    }

    /// Writing without a loaded index would store every blob again.
    /// A local backend whose index writes take 300 ms (an S3 PUT) and, while
    /// `fail_index` is above zero, then fail.
    struct SlowIndex {
        inner: LocalBackend,
        fail_index: std::sync::atomic::AtomicUsize,
    }

    impl crate::backend::Backend for SlowIndex {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn concurrency(&self) -> usize {
            2
        }
        fn create(&self) -> Result<()> {
            self.inner.create()
        }
        fn exists(&self, k: FileKind, n: &str) -> Result<bool> {
            self.inner.exists(k, n)
        }
        fn read(&self, k: FileKind, n: &str) -> Result<Vec<u8>> {
            self.inner.read(k, n)
        }
        fn read_range(&self, k: FileKind, n: &str, o: u64, l: u32) -> Result<Vec<u8>> {
            self.inner.read_range(k, n, o, l)
        }
        fn write(&self, k: FileKind, n: &str, d: Vec<u8>) -> Result<()> {
            if k == FileKind::Index {
                std::thread::sleep(Duration::from_millis(300));
                let fail = &self.fail_index;
                if fail.load(Ordering::SeqCst) > 0 {
                    fail.fetch_sub(1, Ordering::SeqCst);
                    return Err(Error::Internal("injected: index write failed".into()));
                }
            }
            self.inner.write(k, n, d)
        }
        fn list(&self, k: FileKind) -> Result<Vec<crate::backend::FileInfo>> {
            self.inner.list(k)
        }
        fn remove(&self, k: FileKind, n: &str) -> Result<()> {
            self.inner.remove(k, n)
        }
        fn stage(&self, k: FileKind) -> Result<Option<Box<dyn crate::backend::StagedFile>>> {
            self.inner.stage(k)
        }
    }

    fn slow_repo(dir: &std::path::Path, fail: usize) -> Repository {
        repo(dir);
        let backend = SlowIndex {
            inner: LocalBackend::new(dir),
            fail_index: std::sync::atomic::AtomicUsize::new(fail),
        };
        Repository::open(Box::new(backend), b"pw").unwrap()
    }

    /// With an index due at every upload (a copy running for more than the
    /// interval), the uploader's own index write is in progress when the
    /// caller flushes: flush must wait for it (found by review: 12 of 20
    /// flushes returned before the index listing their blob was written).
    #[test]
    fn flush_waits_for_an_index_write_in_progress_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = slow_repo(tmp.path(), 0);
        let repo = repo.load_index().unwrap();
        session(&repo, Indexing::Write, Duration::ZERO, |w| {
            for i in 0..10u32 {
                let plain = i.to_le_bytes().repeat(100);
                let id = repo.key().blob_id(&plain);
                let t = w.claim(BlobType::Data, id).unwrap();
                w.save(t, BlobType::Data, id, &plain)?;
                w.flush()?;
                let indexed = index_files(&repo).concat();
                assert!(
                    indexed.contains(&id),
                    "flush {i} returned before its index was written"
                );
            }
            Ok(())
        })
        .unwrap();
    }

    /// An index write that fails keeps its entries: flush reports the
    /// failure (a copy then writes no snapshot) and the failure path indexes
    /// the uploaded pack.
    #[test]
    fn a_failed_index_write_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = slow_repo(tmp.path(), 1);
        let repo = repo.load_index().unwrap();
        let plain = vec![9u8; 5000];
        let id = repo.key().blob_id(&plain);
        let r = session(&repo, Indexing::Write, Duration::ZERO, |w| {
            let t = w.claim(BlobType::Data, id).unwrap();
            w.save(t, BlobType::Data, id, &plain)?;
            w.flush()
        });
        assert!(r.is_err(), "the failed index write must be reported");
        assert_eq!(
            index_files(&repo),
            vec![vec![id]],
            "the uploaded pack is indexed"
        );
    }

    /// Collect mode stores packs and writes no index.
    #[test]
    fn collect_mode_returns_the_packs_and_writes_no_index() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let repo = repo.load_index().unwrap();
        let ((), report) = write_session(&repo, Indexing::Collect, |w| {
            for i in 0..3u8 {
                let plain = vec![i; 1000];
                let id = repo.key().blob_id(&plain);
                w.save(w.ticket(), BlobType::Data, id, &plain)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(report.packs.len(), 1);
        assert_eq!(report.packs[0].1.len(), 3);
        assert_eq!(report.data_blobs, 3);
        assert!(index_files(&repo).is_empty());
        let listed = repo.backend().list(FileKind::Pack).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, report.packs[0].0.to_hex());
    }
}
