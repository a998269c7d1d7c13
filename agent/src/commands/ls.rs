//! Listing snapshot contents: a depth-first walk over a snapshot's trees.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;
use crate::tree::Node;

/// Call `f(path, node)` for every entry below `tree` (depth-first, sorted),
/// with paths starting at `base`.
///
/// # Errors
/// Unreadable trees; the first error `f` returns.
pub fn walk(
    repo: &Repository,
    tree: &Id,
    base: &Path,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    let t = repo.load_tree(tree)?;
    for node in &t.nodes {
        let p = base.join(node.name.to_os());
        f(&p, node)?;
        if let Some(sub) = node.subtree {
            walk(repo, &sub, &p, f)?;
        }
    }
    Ok(())
}

/// The tree ID to list for `path` inside a snapshot with root `root`
/// (the root itself for `/`), and the path it corresponds to.
///
/// # Errors
/// [`Error::NotFound`] when the path does not exist or is not a directory.
pub fn tree_at(repo: &Repository, root: &Id, path: &str) -> Result<(Id, PathBuf)> {
    let mut id = *root;
    let mut at = PathBuf::from("/");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let tree = repo.load_tree(&id)?;
        let node = tree
            .find(part.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("path {path} in the snapshot")))?;
        id = node
            .subtree
            .ok_or_else(|| Error::NotFound(format!("directory {path} in the snapshot")))?;
        at.push(part);
    }
    Ok((id, at))
}
