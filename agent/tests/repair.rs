//! `repair snapshots` and check's damage assessment against what a review
//! (review 16) found: transient index errors, a backup finishing during a
//! repair, the depth limit met by a shared tree, memory on deep chains of
//! long names, a stale index, long names, damage that only `--read-data`
//! sees. Each test failed before its fix.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use cairn::backend::{Backend, FileInfo, FileKind, LocalBackend, StagedFile};
use cairn::blob::{encode_blob, BlobType};
use cairn::commands::repair::{repair_snapshots, SnapshotRepairOptions};
use cairn::error::{Error, Result};
use cairn::id::Id;
use cairn::index::IndexFile;
use cairn::pack::PackWriter;
use cairn::repository::{KdfCost, Repository};
use cairn::snapshot::{Snapshot, Summary};
use cairn::tree::{Node, NodeType, RawName, Tree};

use common::*;

// ---------------------------------------------------------------- helpers

fn node(name: &[u8], node_type: NodeType) -> Node {
    let mode = match node_type {
        NodeType::Dir => 0o40755,
        _ => 0o100644,
    };
    Node::new(RawName(name.to_vec()), node_type, mode)
}

/// Writes blobs and a snapshot as a key holder can (as hostile.rs does).
struct Forger {
    repo: Repository,
    pack: PackWriter,
}

impl Forger {
    fn new(dir: &Path, password: &[u8]) -> Forger {
        let cost = KdfCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let repo = Repository::init(Box::new(LocalBackend::new(dir)), password, cost).unwrap();
        Forger {
            repo,
            pack: PackWriter::new(),
        }
    }

    fn blob(&mut self, t: BlobType, data: &[u8]) -> Id {
        let id = self.repo.key().blob_id(data);
        let enc = encode_blob(self.repo.key(), t, &id, data, 3);
        self.pack.add(t, id, &enc, data.len() as u32);
        id
    }

    fn file(&mut self, name: &[u8], data: &[u8]) -> Node {
        let mut n = node(name, NodeType::File);
        n.content = vec![self.blob(BlobType::Data, data)];
        n.size = data.len() as u64;
        n
    }

    fn dir(&mut self, name: &[u8], subtree: Id) -> Node {
        let mut n = node(name, NodeType::Dir);
        n.subtree = Some(subtree);
        n
    }

    fn tree(&mut self, nodes: Vec<Node>) -> Id {
        let bytes = serde_json::to_vec(&Tree { nodes }).unwrap();
        self.blob(BlobType::Tree, &bytes)
    }

    fn finish(self, root: Id) -> Id {
        let p = self.pack.finish(self.repo.key());
        self.repo
            .backend()
            .write(FileKind::Pack, &p.id.to_hex(), p.bytes)
            .unwrap();
        let mut index = IndexFile::default();
        index.add_pack(p.id, &p.blobs);
        self.repo.save_json(FileKind::Index, &index).unwrap();
        let snap = Snapshot {
            time: chrono::Local::now().fixed_offset(),
            hostname: "h".into(),
            username: "u".into(),
            paths: vec!["/data".into()],
            tags: Vec::new(),
            tree: root,
            parent: None,
            original: None,
            program_version: "forged".into(),
            summary: Summary::default(),
        };
        self.repo.save_json(FileKind::Snapshot, &snap).unwrap()
    }
}

/// A local backend with a hook: reads of chosen index files fail as a
/// timeout would, and the first pack listing runs a closure (another
/// process finishing its backup at that moment).
struct Hooked {
    inner: LocalBackend,
    failing_index_reads: Vec<String>,
    on_pack_list: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Hooked {
    fn new(dir: &Path) -> Hooked {
        Hooked {
            inner: LocalBackend::new(dir),
            failing_index_reads: Vec::new(),
            on_pack_list: Mutex::new(None),
        }
    }
}

impl Backend for Hooked {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.inner.clock()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        self.inner.exists(kind, name)
    }
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        if kind == FileKind::Index && self.failing_index_reads.iter().any(|n| n == name) {
            return Err(Error::Backend {
                op: "read",
                key: format!("index/{name}"),
                message: "503 Service Unavailable (SlowDown)".into(),
                cause: None,
            });
        }
        self.inner.read(kind, name)
    }
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        self.inner.read_range(kind, name, offset, length)
    }
    fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        self.inner.write(kind, name, data)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        let list = self.inner.list(kind)?;
        if kind == FileKind::Pack {
            if let Some(hook) = self.on_pack_list.lock().unwrap().take() {
                hook();
            }
        }
        Ok(list)
    }
    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.remove(kind, name)
    }
    fn stage(&self, kind: FileKind) -> Result<Option<Box<dyn StagedFile>>> {
        self.inner.stage(kind)
    }
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Run `f` on a thread with a main-thread-sized stack (the CLI's), so that
/// a recursion 1025 levels deep is not a test-harness artifact.
fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

// ------------------------------------------------------------------ tests

/// Finding R16-1. The Rewriter memoizes a tree's fate by ID alone, but the
/// fate depends on depth: a tree first met below the depth limit is `Lost`,
/// and that verdict is reused where the same tree sits at depth 1 and reads
/// fine. `repair snapshots` then replaces a whole, readable directory by an
/// empty `NAME.repaired` (and `--forget` deletes the only snapshot that
/// still had it). The memo is shared by every snapshot of the run, so a
/// key holder's crafted snapshot can do this to another tenant's damaged
/// snapshot.
#[test]
fn repair_keeps_a_readable_directory_also_met_beyond_the_depth_limit() {
    big_stack(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let mut f = Forger::new(&dir, b"pw");
        let precious = f.file(b"precious", b"the only copy of this");
        let t = f.tree(vec![precious]);
        // c1024 -> T puts T at depth 1025, beyond MAX_TREE_DEPTH (1024).
        let tdir = f.dir(b"t", t);
        let mut chain = f.tree(vec![tdir]);
        for _ in 1..cairn::constants::MAX_TREE_DEPTH {
            let n = f.dir(b"n", chain);
            chain = f.tree(vec![n]);
        }
        let a = f.dir(b"a", chain);
        let b = f.dir(b"b", t);
        let root = f.tree(vec![a, b]);
        f.finish(root);

        let repo = Repository::open(Box::new(LocalBackend::new(&dir)), b"pw").unwrap();
        let r = repair_snapshots(&repo, &SnapshotRepairOptions::default()).unwrap();
        assert_eq!(r.repaired.len(), 1, "{r:?}");
        let copy = r.repaired[0].repaired.unwrap();
        let snap: Snapshot = repo.load_json(FileKind::Snapshot, &copy).unwrap();
        let repo = repo.load_index().unwrap();
        let root = repo.load_tree(&snap.tree).unwrap();
        let names: Vec<String> = root.nodes.iter().map(|n| n.name.display()).collect();
        let b = root.find(b"b").unwrap_or_else(|| {
            panic!("/b reads fine in the original, yet the repaired copy has {names:?}")
        });
        let below = repo.load_tree(&b.subtree.unwrap()).unwrap();
        assert!(below.find(b"precious").is_some(), "{below:?}");
    });
}

/// Finding R16-2. Each memoized `Harm` keeps up to ten example paths,
/// copied with the full prefix at every level: a chain of D trees with
/// names of L bytes costs about 10 * L * D^2 / 2 bytes. 1024 trees with
/// 1000-byte names (a few KB of compressed trees) ask for ~5 GB, so `check`
/// on a crafted repository exhausts memory (here: aborts under a 1 GiB
/// address-space limit). The same chain with 1-byte names passes the same
/// limit.
#[test]
fn check_memory_stays_bounded_on_a_deep_chain_of_long_names() {
    for (len, lost, must_pass) in [
        (1usize, true, "control: short names"),
        (1000, false, "control: nothing lost, so no assessment"),
        (1000, true, "long names"),
    ] {
        let env = Env::new();
        let mut f = Forger::new(&env.repo(), PASSWORD.as_bytes());
        let mut files = Vec::new();
        for i in 0..10 {
            let mut n = node(format!("f{i}").as_bytes(), NodeType::File);
            if lost {
                n.content = vec![Id([7; 32])]; // in no pack: check has a problem to assess
                n.size = 1;
            }
            files.push(n);
        }
        let mut id = f.tree(files);
        let name = vec![b'd'; len];
        for _ in 0..1000 {
            let n = f.dir(&name, id);
            id = f.tree(vec![n]);
        }
        f.finish(id);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1048576; exec \"$0\" --json check")
            .arg(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_REPOSITORY", &env.location)
            .env("CAIRN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        // Exit 1: problems found (the lost blob), reported.
        let code = if lost { 1 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(code),
            "{must_pass}: {}",
            output(&out)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let damaged = report["damaged_snapshots"].as_array().unwrap().len();
        assert_eq!(damaged, usize::from(lost), "{must_pass}");
    }
}

/// Two backups of different data, each with its own index files.
fn two_backups(env: &Env) -> (String, String, Vec<String>) {
    env.ok(&["init"]);
    let mut ids = Vec::new();
    let mut last_index = Vec::new();
    for (i, name) in ["one", "two"].iter().enumerate() {
        let src = env.path(name);
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("data"), random_bytes(300_000, i as u64 + 1)).unwrap();
        let before = files_in(&env.repo().join("index"));
        let v = env.json(&["backup", src.to_str().unwrap()]);
        ids.push(v["snapshot_id"].as_str().unwrap().to_string());
        last_index = files_in(&env.repo().join("index"))
            .into_iter()
            .filter(|p| !before.contains(p))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
    }
    (ids.remove(0), ids.remove(0), last_index)
}

/// Finding R16-3. `load_index` skips an index file on *any* read error
/// (a damaged file, but also a timeout, a 503, a permission), and
/// `repair snapshots` takes every blob in no loaded index for lost. One
/// failed GET of an index file makes it cut the data of a sound snapshot
/// and, with `--forget`, delete the snapshot. Nothing in the repository is
/// damaged here.
#[test]
fn a_failed_index_read_does_not_make_repair_cut_a_sound_snapshot() {
    let env = Env::new();
    let (_s1, s2, index_of_s2) = two_backups(&env);
    env.ok(&["check", "--read-data"]);

    let mut backend = Hooked::new(&env.repo());
    backend.failing_index_reads = index_of_s2;
    let repo = Repository::open(Box::new(backend), PASSWORD.as_bytes()).unwrap();
    let result = repair_snapshots(
        &repo,
        &SnapshotRepairOptions {
            forget: true,
            ..Default::default()
        },
    );
    // Either refuse (the storage error) or find nothing to repair.
    if let Ok(r) = &result {
        assert!(r.repaired.is_empty() && r.forgotten == 0, "{r:?}");
    }
    assert!(
        snapshot_ids(&env).contains(&s2),
        "sound snapshot {s2} was forgotten: {result:?}"
    );
}

/// Finding R16-4. `repair snapshots` loads the index, lists packs, and only
/// then lists snapshots (check and prune list snapshots first). A backup
/// that finishes in between writes a snapshot whose blobs are in index
/// files the repair never read: it is taken for damaged, rewritten with
/// its new data cut out, and with `--forget` deleted. The runbook stops
/// prune during a repair, not backups (schedules keep running).
#[test]
fn repair_forget_keeps_a_backup_that_finished_meanwhile() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(200_000, 1)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let before = snapshot_ids(&env);

    let mut backend = Hooked::new(&env.repo());
    let (exe, location, src2) = (
        env!("CARGO_BIN_EXE_cairn"),
        env.location.clone(),
        env.path("src2"),
    );
    fs::create_dir_all(&src2).unwrap();
    fs::write(src2.join("b"), random_bytes(200_000, 2)).unwrap();
    *backend.on_pack_list.get_mut().unwrap() = Some(Box::new(move || {
        let out = std::process::Command::new(exe)
            .args(["backup", src2.to_str().unwrap()])
            .env("CAIRN_REPOSITORY", location)
            .env("CAIRN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output(&out));
    }));
    let repo = Repository::open(Box::new(backend), PASSWORD.as_bytes()).unwrap();
    let r = repair_snapshots(
        &repo,
        &SnapshotRepairOptions {
            forget: true,
            ..Default::default()
        },
    )
    .unwrap();
    let after = snapshot_ids(&env);
    let new: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        r.repaired.is_empty() && r.forgotten == 0,
        "the concurrent backup's snapshot was repaired/forgotten: {r:?}; snapshots now {new:?}"
    );
}

/// Finding R16-5. The empty tree a lost directory becomes is stored through
/// the writer's dedup claim, which trusts the loaded index: when the empty
/// tree is indexed in the very pack that was lost (a lost tree pack usually
/// holds it), nothing is stored and the "repaired" copy refers to a lost
/// tree; check still names it damaged and a second repair renames again
/// (NAME.repaired.repaired). Run without `repair index` first (README asks
/// for it, the command neither refuses nor warns).
#[test]
fn repair_refuses_a_stale_index_and_after_repair_index_the_copy_is_whole() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("empty")).unwrap();
    fs::write(src.join("keep/a"), b"kept").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let first = packs_by_type(&env);
    fs::create_dir_all(src.join("new")).unwrap();
    fs::write(src.join("new/x"), b"new file").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // The first backup's tree pack holds `keep`'s tree and the empty tree.
    let (tree_pack, _) = first.iter().find(|(_, t)| t == "tree").unwrap();
    fs::remove_file(tree_pack).unwrap();

    // Refused while the index lists the lost pack (the repaired trees would
    // deduplicate against what is gone), with the way out.
    let out = env.run(&["repair", "snapshots"]);
    assert_fails(&out, 1, "run `cairn repair index` first");
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));
    let r = env.json(&["repair", "snapshots"]);
    let copies: Vec<String> = r["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["repaired"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(copies.len(), 1, "{r}");
    let out = env.run(&["--json", "check"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let still: Vec<_> = report["damaged_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| copies.iter().any(|c| d["snapshot"] == c.as_str()))
        .collect();
    assert!(
        still.is_empty(),
        "the repaired copy is still damaged: {still:?}"
    );
}

/// Finding R16-6. `NAME.repaired` is not bounded: a damaged file whose name
/// is 250 bytes (legal) gets a 259-byte name, which no Linux filesystem
/// accepts, so the repaired copy does not restore that file (the rename is
/// what is meant to keep it).
#[test]
fn a_damaged_file_with_a_long_name_restores_from_the_repaired_copy() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let long = "n".repeat(250);
    fs::write(src.join(&long), random_bytes(300_000, 5)).unwrap();
    fs::write(src.join("small"), b"tiny").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let (data_pack, _) = packs_by_type(&env)
        .into_iter()
        .filter(|(_, t)| t == "data")
        .max_by_key(|(p, _)| fs::metadata(p).unwrap().len())
        .unwrap();
    fs::remove_file(&data_pack).unwrap();
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));
    let r = env.json(&["repair", "snapshots"]);
    let copy = r["repaired"][0]["repaired"].as_str().unwrap().to_string();
    let target = env.path("r");
    let out = env.run(&["restore", &copy, "--target", target.to_str().unwrap()]);
    assert_success(&out, &["restore", "the repaired copy"]);
}

/// Finding R16-7. `check --read-data` names a snapshot whose data blob is
/// damaged inside a pack that is present (bit rot) and the runbook sends
/// the operator to `repair index` + `repair snapshots`, but repair neither
/// drops the blob (its header is fine) nor reads data blobs: it reports the
/// snapshot clean, and step 4's `check --read-data` keeps failing.
#[test]
fn repair_snapshots_repairs_what_check_read_data_names() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(400_000, 9)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let (data_pack, _) = packs_by_type(&env)
        .into_iter()
        .find(|(_, t)| t == "data")
        .unwrap();
    let size = fs::metadata(&data_pack).unwrap().len() as usize;
    flip_byte(&data_pack, size / 2); // inside the blob, not the header
    let out = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", output(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damaged_snapshots"].as_array().unwrap().len(), 1);
    env.run(&["repair", "index"]);
    let r = env.json(&["repair", "snapshots", "--forget", "--read-data"]);
    assert_eq!(
        r["repaired"].as_array().unwrap().len(),
        1,
        "check --read-data names a damaged snapshot, repair snapshots finds none: {r}"
    );
}
