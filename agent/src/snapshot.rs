//! Snapshots: the record of one backup (when, where from, what tree, with
//! what result). Stored as encrypted JSON files named by their hash.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// Statistics of the backup that wrote a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose metadata changed since the parent (re-read).
    pub files_changed: u64,
    /// Files unchanged since the parent (not read).
    pub files_unmodified: u64,
    /// Directories not in the parent snapshot.
    pub dirs_new: u64,
    /// Directories whose listing changed.
    pub dirs_changed: u64,
    /// Directories whose listing is unchanged.
    pub dirs_unmodified: u64,
    /// Data blobs added to the repository.
    pub data_blobs_added: u64,
    /// Tree blobs added to the repository.
    pub tree_blobs_added: u64,
    /// Plaintext bytes of the blobs added.
    pub bytes_added: u64,
    /// Bytes written to storage (packs, after compression and encryption).
    pub bytes_stored: u64,
    /// Bytes read from source files.
    pub bytes_read: u64,
    /// Files in the snapshot.
    pub total_files: u64,
    /// Sum of the sizes of the files in the snapshot.
    pub total_bytes: u64,
    /// Source entries that could not be read (listed on stderr during backup).
    pub errors: u64,
    /// Wall-clock duration of the backup in seconds.
    pub duration_seconds: f64,
}

/// A snapshot file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, with the local UTC offset.
    pub time: DateTime<FixedOffset>,
    /// Host the backup ran on.
    pub hostname: String,
    /// User that ran it.
    pub username: String,
    /// Absolute source paths.
    pub paths: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Root tree blob.
    pub tree: Id,
    /// Snapshot used to skip unchanged files, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// For a snapshot made by `cairn copy`: the ID of the snapshot it copies
    /// (the first original, for a copy of a copy); by `cairn repair
    /// snapshots`: the damaged snapshot (unless that had an original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// Version of cairn that wrote it.
    pub program_version: String,
    /// Backup statistics.
    pub summary: Summary,
}

impl Snapshot {
    /// Whether this snapshot has the same host and path set as another backup would.
    pub fn same_source(&self, hostname: &str, paths: &[String]) -> bool {
        let mut a = self.paths.clone();
        let mut b = paths.to_vec();
        a.sort();
        b.sort();
        self.hostname == hostname && a == b
    }
}
