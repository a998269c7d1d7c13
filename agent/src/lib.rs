//! Cairn's backup engine: a deduplicating, compressing, encrypting snapshot
//! store over pluggable storage. See `docs/ARCHITECTURE.md` for the data flow
//! and `docs/FORMAT.md` for the repository format.
//!
//! The `cairn` binary is a thin layer over this library.

pub mod archiver;
pub mod backend;
pub mod beneath;
pub mod blob;
pub mod blobset;
pub mod check;
pub mod chunker;
pub mod constants;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod error;
pub mod forget;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
pub mod index;
pub mod interrupt;
pub mod ls;
pub mod pack;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod snapshot;
pub mod stats;
pub mod tree;
pub mod writer;

pub use error::{Error, Result};
pub use id::Id;
pub use repository::Repository;
