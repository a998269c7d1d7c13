//! What a lost or damaged pack costs: which snapshots, and which files and
//! directories in them, can no longer be restored. `check` uses it to name
//! them; `repair snapshots` to write copies without them.
//!
//! A file is damaged when one of its data blobs is lost: in no index, in a
//! pack that storage no longer holds, or found damaged by `check
//! --read-data`. A directory is damaged when its tree cannot be read. Trees
//! are shared between snapshots and within one (two identical directories
//! have one tree), so every result is kept per tree ID: a snapshot whose
//! trees share subtrees exponentially (as a crafted one may) costs one visit
//! per distinct tree (per tree and depth where the depth limit cuts below
//! it), each result names at most [`EXAMPLES`] paths, sharing their tails
//! with the trees below, and the counts saturate instead of overflowing.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::blob::BlobType;
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::{NodeType, Tree};

/// Paths named per damaged snapshot (the counts cover all of them).
pub const EXAMPLES: usize = 10;

/// What is known to be lost.
#[derive(Debug, Default)]
pub struct Damage {
    /// Packs storage holds. A blob indexed in any other pack is lost.
    pub packs: HashSet<Id>,
    /// Data blobs found damaged (by reading them).
    pub data: HashSet<Id>,
    /// Trees found unreadable.
    pub trees: HashSet<Id>,
}

impl Damage {
    /// Whether a data blob cannot be read back.
    pub fn data_lost(&self, repo: &IndexedRepository<'_>, id: &Id) -> bool {
        self.data.contains(id) || self.not_stored(repo, BlobType::Data, id)
    }

    fn not_stored(&self, repo: &IndexedRepository<'_>, t: BlobType, id: &Id) -> bool {
        repo.index()
            .lookup(t, id)
            .is_none_or(|loc| !self.packs.contains(&loc.pack))
    }

    /// Read a tree, or `None` when it is lost. Errors that say nothing about
    /// the tree (a timeout, a permission) are returned: they must not be
    /// mistaken for damage.
    pub fn load_tree(&self, repo: &IndexedRepository<'_>, id: &Id) -> Result<Option<Tree>> {
        if self.trees.contains(id) || self.not_stored(repo, BlobType::Tree, id) {
            return Ok(None);
        }
        match repo.load_tree(id) {
            Ok(t) => Ok(Some(t)),
            Err(Error::NotFound(_) | Error::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A damaged path, relative to the tree whose [`Harm`] holds it: a name, then
/// the rest of the path below it. Shared between the trees above, so that a
/// deep chain of long names costs one name per tree, not one path.
#[derive(Debug)]
pub struct PathLink {
    name: Vec<u8>,
    rest: Option<Rc<PathLink>>,
}

impl PathLink {
    /// The path as `/a/b/c` (as `ls` shows it).
    pub fn display(&self) -> String {
        let mut out = Vec::new();
        let mut at = Some(self);
        while let Some(l) = at {
            if !l.name.is_empty() {
                out.push(b'/');
                out.extend_from_slice(&l.name);
            }
            at = l.rest.as_deref();
        }
        if out.is_empty() {
            out.push(b'/');
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The damage below one tree.
#[derive(Debug, Default)]
pub struct Harm {
    /// Files that lost data.
    pub files: u64,
    /// Directories whose tree is lost (what was in them is not counted).
    pub dirs: u64,
    /// Up to [`EXAMPLES`] of the damaged paths, relative to the tree.
    pub examples: Vec<Rc<PathLink>>,
    /// Whether the depth limit cut something below: then the result holds
    /// only at the depth it was found at.
    limited: bool,
}

impl Harm {
    /// Nothing below the tree is damaged.
    pub fn is_clean(&self) -> bool {
        self.files == 0 && self.dirs == 0
    }

    /// The examples as paths (`/a/b`).
    pub fn paths(&self) -> Vec<String> {
        self.examples.iter().map(|e| e.display()).collect()
    }

    fn add(&mut self, name: &[u8], below: &Harm) {
        self.files = self.files.saturating_add(below.files);
        self.dirs = self.dirs.saturating_add(below.dirs);
        self.limited |= below.limited;
        for e in &below.examples {
            if self.examples.len() >= EXAMPLES {
                break;
            }
            self.examples.push(Rc::new(PathLink {
                name: name.to_vec(),
                rest: Some(e.clone()),
            }));
        }
    }

    fn one(&mut self, name: &[u8], dir: bool) {
        if dir {
            self.dirs = self.dirs.saturating_add(1);
        } else {
            self.files = self.files.saturating_add(1);
        }
        if self.examples.len() < EXAMPLES {
            self.examples.push(Rc::new(PathLink {
                name: name.to_vec(),
                rest: None,
            }));
        }
    }
}

/// Walks snapshots and remembers the harm below every tree it has seen.
pub struct Assessor<'a, 'r> {
    repo: &'a IndexedRepository<'r>,
    damage: &'a Damage,
    /// Per tree, where the depth limit played no part.
    memo: HashMap<Id, Rc<Harm>>,
    /// Per tree and depth, where it did (bounded by trees × depth limit).
    deep: HashMap<(Id, usize), Rc<Harm>>,
    clean: Rc<Harm>,
}

impl<'a, 'r> Assessor<'a, 'r> {
    /// An assessor of `damage` in `repo`.
    pub fn new(repo: &'a IndexedRepository<'r>, damage: &'a Damage) -> Self {
        Assessor {
            repo,
            damage,
            memo: HashMap::new(),
            deep: HashMap::new(),
            clean: Rc::new(Harm::default()),
        }
    }

    /// The harm below a snapshot's root tree; a lost root counts as one
    /// damaged directory, `/`.
    ///
    /// # Errors
    /// Storage errors other than lost objects.
    pub fn snapshot(&mut self, root: &Id) -> Result<Rc<Harm>> {
        match self.tree(root, 0)? {
            None => {
                let mut h = Harm::default();
                h.one(b"", true);
                Ok(Rc::new(h))
            }
            Some(below) => {
                let mut h = Harm::default();
                h.add(b"", &below);
                Ok(Rc::new(h))
            }
        }
    }

    fn tree(&mut self, id: &Id, depth: usize) -> Result<Option<Rc<Harm>>> {
        if let Some(h) = self.memo.get(id).or_else(|| self.deep.get(&(*id, depth))) {
            return Ok(Some(h.clone()));
        }
        let Some(tree) = self.damage.load_tree(self.repo, id)? else {
            return Ok(None);
        };
        let h = self.below(&tree, depth)?;
        if h.limited {
            self.deep.insert((*id, depth), h.clone());
        } else {
            self.memo.insert(*id, h.clone());
        }
        Ok(Some(h))
    }

    fn below(&mut self, tree: &Tree, depth: usize) -> Result<Rc<Harm>> {
        let mut h = Harm::default();
        for node in &tree.nodes {
            let name = &node.name.0;
            if node.node_type == NodeType::File
                && node
                    .content
                    .iter()
                    .any(|b| self.damage.data_lost(self.repo, b))
            {
                h.one(name, false);
            }
            let Some(sub) = node.subtree else { continue };
            // Deeper than any reader goes: restore refuses it, so it is lost
            // (here: the same tree may read fine where it sits higher up).
            if depth + 1 > MAX_TREE_DEPTH {
                h.one(name, true);
                h.limited = true;
                continue;
            }
            match self.tree(&sub, depth + 1)? {
                None => h.one(name, true),
                Some(below) => h.add(name, &below),
            }
        }
        Ok(if h.is_clean() && !h.limited {
            self.clean.clone()
        } else {
            Rc::new(h)
        })
    }
}
