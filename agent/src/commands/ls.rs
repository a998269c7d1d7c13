//! `ls`: the entries of a snapshot below a directory, depth-first.

use std::path::Path;

use crate::error::Result;
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::Node;
use crate::treepath::{tree_at, walk};

/// Call `f(path, node)` for every entry below the directory `path` (`/` for
/// all) of the snapshot with root tree `root`, depth-first and sorted, with
/// absolute paths in the snapshot.
///
/// # Errors
/// [`crate::Error::NotFound`] when the path does not exist or is not a
/// directory; unreadable trees; the first error `f` returns.
pub fn ls(
    repo: &IndexedRepository<'_>,
    root: &Id,
    path: &str,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    let (tree, base) = tree_at(repo, root, path)?;
    walk(repo, &tree, &base, f)
}
