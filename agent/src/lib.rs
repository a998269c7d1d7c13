//! Cairn's backup engine: a deduplicating, compressing, encrypting snapshot
//! store over pluggable storage. See `docs/ARCHITECTURE.md` for the data flow
//! and `docs/FORMAT.md` for the repository format.
//!
//! Two levels. The modules at the root own the repository format and its
//! storage: chunking, crypto, blobs, packs, indexes, trees and paths in them, snapshots, the
//! backends, [`Repository`] and its writer. [`commands`] holds one module per
//! operation over a repository (backup, restore, check, prune, ...), built
//! from those parts and never the other way round.
//!
//! The `cairn` binary is a thin layer over this library.

pub mod backend;
pub mod beneath;
pub mod blob;
pub mod blobset;
pub mod chunker;
pub mod constants;
pub mod crypto;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
pub mod index;
pub mod interrupt;
pub mod pack;
pub mod repository;
pub mod snapshot;
pub mod tree;
pub mod treepath;
pub mod writer;

pub mod commands;

pub use error::{Error, Result};
pub use id::Id;
pub use repository::{IndexedRepository, Repository};
