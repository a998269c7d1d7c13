//! Comparing two snapshots: entries added, removed and modified. Identical
//! subtrees (same tree blob ID) are skipped without being read.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::{Node, NodeType};
use crate::treepath::walk;

/// How an entry differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second snapshot.
    Added,
    /// Only in the first snapshot.
    Removed,
    /// Content or type changed.
    Modified,
    /// Only metadata (mode, owner, times) changed.
    Metadata,
}

impl Change {
    /// One-letter code as in `cairn diff` output.
    pub fn code(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
        }
    }
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What changed.
    pub change: Change,
    /// Path in the snapshots.
    pub path: PathBuf,
}

fn content_differs(a: &Node, b: &Node) -> bool {
    a.node_type != b.node_type || a.content != b.content || a.target != b.target || a.size != b.size
}

fn metadata_differs(a: &Node, b: &Node) -> bool {
    a.mode != b.mode || a.uid != b.uid || a.gid != b.gid || a.mtime_ns != b.mtime_ns
}

fn add_all(
    repo: &IndexedRepository<'_>,
    node: &Node,
    path: &Path,
    change: Change,
    out: &mut Vec<Difference>,
) -> Result<()> {
    out.push(Difference {
        change,
        path: path.to_path_buf(),
    });
    if let Some(sub) = node.subtree {
        walk(repo, &sub, path, &mut |p, _| {
            out.push(Difference {
                change,
                path: p.to_path_buf(),
            });
            Ok(())
        })?;
    }
    Ok(())
}

/// Differences between two trees, in path order.
///
/// # Errors
/// Unreadable trees.
pub fn diff_trees(
    repo: &IndexedRepository<'_>,
    a: &Id,
    b: &Id,
    base: &Path,
    out: &mut Vec<Difference>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    // Crafted snapshots could nest deep enough to overflow the stack.
    if base.components().count() > MAX_TREE_DEPTH {
        return Err(Error::corrupt(
            format!("tree {b}"),
            format!("nested deeper than {MAX_TREE_DEPTH} directories"),
        ));
    }
    let (ta, tb) = (repo.load_tree(a)?, repo.load_tree(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = &ta.nodes[i];
                add_all(repo, n, &base.join(n.name.to_os()), Change::Removed, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &tb.nodes[j];
                add_all(repo, n, &base.join(n.name.to_os()), Change::Added, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.nodes[i], &tb.nodes[j]);
                let p = base.join(x.name.to_os());
                if x.node_type == NodeType::Dir && y.node_type == NodeType::Dir {
                    if metadata_differs(x, y) {
                        out.push(Difference {
                            change: Change::Metadata,
                            path: p.clone(),
                        });
                    }
                    if let (Some(sa), Some(sb)) = (x.subtree, y.subtree) {
                        diff_trees(repo, &sa, &sb, &p, out)?;
                    }
                } else if content_differs(x, y) {
                    out.push(Difference {
                        change: Change::Modified,
                        path: p,
                    });
                } else if metadata_differs(x, y) {
                    out.push(Difference {
                        change: Change::Metadata,
                        path: p,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
