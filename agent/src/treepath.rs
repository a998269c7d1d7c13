//! Paths in a snapshot: the entry a path names, the tree to list for a
//! directory, and a depth-first walk over everything below a tree. The
//! commands that reach into a snapshot by path or list it (ls, restore,
//! stats, diff) resolve and walk here rather than each on its own.
//!
//! Trees are read with [`Repository::load_tree`], so every one is hash-checked
//! and held to the reader rules; the tree format itself is [`crate::tree`]'s.
//! Walks that do more than visit (check's and prune's reachability with
//! de-duplication, copy's rewriting, restore's creation of what it visits)
//! stay with their commands.

use std::path::{Path, PathBuf};

use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::Node;

/// Where a path inside a snapshot leads.
enum Lookup {
    /// The root tree: the path has no components (`/`, empty).
    Root,
    /// The entry the path names.
    Entry(Node),
    /// This component names an entry without a tree below it (not a
    /// directory), and the path goes on.
    NotADirectory(String),
}

/// Follow `path` (components separated by `/`, empty ones ignored) from the
/// root tree `root`, reading one tree per component.
///
/// # Errors
/// [`Error::NotFound`] when an entry along the path does not exist;
/// unreadable trees.
fn lookup(repo: &IndexedRepository<'_>, root: &Id, path: &str) -> Result<Lookup> {
    let mut tree_id = *root;
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        let tree = repo.load_tree(&tree_id)?;
        let node = tree
            .find(part.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("path {path} in the snapshot")))?;
        if parts.peek().is_none() {
            return Ok(Lookup::Entry(node.clone()));
        }
        match node.subtree {
            Some(sub) => tree_id = sub,
            None => return Ok(Lookup::NotADirectory(part.to_string())),
        }
    }
    Ok(Lookup::Root)
}

/// The tree ID to list for `path` inside a snapshot with root `root`
/// (the root itself for `/`), and the path it corresponds to.
///
/// # Errors
/// [`Error::NotFound`] when the path does not exist or is not a directory;
/// unreadable trees.
pub fn tree_at(repo: &IndexedRepository<'_>, root: &Id, path: &str) -> Result<(Id, PathBuf)> {
    let not_a_directory = || Error::NotFound(format!("directory {path} in the snapshot"));
    let id = match lookup(repo, root, path)? {
        Lookup::Root => *root,
        Lookup::Entry(node) => node.subtree.ok_or_else(not_a_directory)?,
        Lookup::NotADirectory(_) => return Err(not_a_directory()),
    };
    let mut at = PathBuf::from("/");
    at.extend(path.split('/').filter(|p| !p.is_empty()));
    Ok((id, at))
}

/// The entry at `path` inside a snapshot with root `root` (any type).
///
/// # Errors
/// [`Error::NotFound`] when the path does not exist or passes through an
/// entry that is not a directory; [`Error::InvalidInput`] for a path without
/// components (the root is no entry); unreadable trees.
pub fn entry_at(repo: &IndexedRepository<'_>, root: &Id, path: &str) -> Result<Node> {
    match lookup(repo, root, path)? {
        Lookup::Entry(node) => Ok(node),
        Lookup::NotADirectory(part) => Err(Error::NotFound(format!(
            "path {path} in the snapshot ({part} is not a directory)"
        ))),
        Lookup::Root => Err(Error::InvalidInput("empty path".into())),
    }
}

/// Call `f(path, node)` for every entry below `tree` (depth-first, sorted,
/// each entry before what is below it), with paths starting at `base`.
///
/// # Errors
/// Unreadable trees; trees nested deeper than [`MAX_TREE_DEPTH`] (a crafted
/// snapshot would otherwise overflow the stack); the first error `f` returns.
pub fn walk(
    repo: &IndexedRepository<'_>,
    tree: &Id,
    base: &Path,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    walk_below(repo, tree, base, 0, f)
}

fn walk_below(
    repo: &IndexedRepository<'_>,
    tree: &Id,
    base: &Path,
    depth: usize,
    f: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    if depth >= MAX_TREE_DEPTH {
        return Err(Error::corrupt(
            format!("tree {tree}"),
            format!("nested deeper than {MAX_TREE_DEPTH} directories"),
        ));
    }
    let t = repo.load_tree(tree)?;
    for node in &t.nodes {
        let p = base.join(node.name.to_os());
        f(&p, node)?;
        if let Some(sub) = node.subtree {
            walk_below(repo, &sub, &p, depth + 1, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::blob::BlobType;
    use crate::repository::KdfCost;
    use crate::repository::Repository;
    use crate::tree::{NodeType, RawName, Tree};
    use crate::writer::{write_session, Indexing, Writer};

    fn node(name: &str, node_type: NodeType) -> Node {
        Node::new(RawName(name.as_bytes().to_vec()), node_type, 0o644)
    }

    fn store(w: &Writer<'_, '_>, nodes: Vec<Node>) -> Result<Id> {
        let bytes = Tree { nodes }.to_bytes();
        let id = w.repo().key().blob_id(&bytes);
        if let Some(ticket) = w.claim(BlobType::Tree, id) {
            w.save(ticket, BlobType::Tree, id, &bytes)?;
        }
        Ok(id)
    }

    /// `/a/f`, `/a/g` and `/f` (a file).
    fn snapshot(dir: &Path) -> (IndexedRepository<'static>, Id, Id) {
        let cost = KdfCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let repo = Repository::init(Box::new(LocalBackend::new(dir)), b"pw", cost).unwrap();
        let repo = repo.load_index().unwrap();
        let ((root, a), _) = write_session(&repo, Indexing::Write, |w| {
            let a = store(
                w,
                vec![node("f", NodeType::File), node("g", NodeType::File)],
            )?;
            let mut a_node = node("a", NodeType::Dir);
            a_node.subtree = Some(a);
            let root = store(w, vec![a_node, node("f", NodeType::File)])?;
            Ok((root, a))
        })
        .unwrap();
        let repo = Repository::open(Box::new(LocalBackend::new(dir)), b"pw").unwrap();
        (repo.into_indexed().unwrap(), root, a)
    }

    #[test]
    fn paths_resolve_to_trees_and_entries_with_the_commands_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, root, a) = snapshot(tmp.path());

        for p in ["", "/", "//"] {
            assert_eq!(tree_at(&repo, &root, p).unwrap(), (root, "/".into()));
        }
        for p in ["a", "/a", "/a/", "//a"] {
            assert_eq!(tree_at(&repo, &root, p).unwrap(), (a, "/a".into()));
        }
        assert_eq!(entry_at(&repo, &root, "/a/g").unwrap().name.0, b"g");
        assert_eq!(entry_at(&repo, &root, "a").unwrap().subtree, Some(a));

        let cases: [(Result<()>, &str); 6] = [
            (
                tree_at(&repo, &root, "/f").map(drop),
                "directory /f in the snapshot not found",
            ),
            (
                tree_at(&repo, &root, "/f/x").map(drop),
                "directory /f/x in the snapshot not found",
            ),
            (
                tree_at(&repo, &root, "/a/nope").map(drop),
                "path /a/nope in the snapshot not found",
            ),
            (
                entry_at(&repo, &root, "/f/x").map(drop),
                "path /f/x in the snapshot (f is not a directory) not found",
            ),
            (
                entry_at(&repo, &root, "/nope").map(drop),
                "path /nope in the snapshot not found",
            ),
            (entry_at(&repo, &root, "/").map(drop), "empty path"),
        ];
        for (result, want) in cases {
            assert_eq!(result.unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn walk_visits_each_entry_before_what_is_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, root, _) = snapshot(tmp.path());
        let mut seen = Vec::new();
        walk(&repo, &root, Path::new("/"), &mut |p, _| {
            seen.push(p.display().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["/a", "/a/f", "/a/g", "/f"]);
    }

    #[test]
    fn a_walk_stops_at_the_depth_limit_instead_of_overflowing_the_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, _, _) = snapshot(tmp.path());
        // A chain of directories deeper than any walk may go.
        let root = write_session(&repo, Indexing::Write, |w| {
            let mut id = store(w, vec![node("f", NodeType::File)])?;
            for _ in 0..MAX_TREE_DEPTH + 10 {
                let mut d = node("d", NodeType::Dir);
                d.subtree = Some(id);
                id = store(w, vec![d])?;
            }
            Ok(id)
        })
        .unwrap()
        .0;
        let repo = Repository::open(Box::new(LocalBackend::new(tmp.path())), b"pw").unwrap();
        let repo = repo.load_index().unwrap();
        let mut seen = 0usize;
        let e = walk(&repo, &root, Path::new("/"), &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("nested deeper than"), "{e}");
        assert_eq!(seen, MAX_TREE_DEPTH);
    }
}
