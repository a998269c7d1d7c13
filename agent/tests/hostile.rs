//! Hostile repositories: trees crafted by someone who holds a repository key
//! (every backup Job sharing a repository does) must not make a restore touch
//! anything outside its target. The trees are written with the library's own
//! format code, the way an attacker would write them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cairn::backend::{FileKind, LocalBackend};
use cairn::blob::{encode_blob, BlobType};
use cairn::commands::restore::{restore, RestoreOptions};
use cairn::id::Id;
use cairn::index::IndexFile;
use cairn::pack::PackWriter;
use cairn::repository::{KdfCost, Repository};
use cairn::snapshot::{Snapshot, Summary};
use cairn::tree::{Node, NodeType, RawName, Tree};

fn node(name: &str, node_type: NodeType) -> Node {
    let mode = match node_type {
        NodeType::Dir => 0o40777,
        NodeType::Symlink => 0o120777,
        _ => 0o104777, // setuid, world-writable: what an attacker would like to plant
    };
    Node::new(RawName(name.as_bytes().to_vec()), node_type, mode)
}

/// Writes blobs and snapshots as a key holder can.
struct Forger {
    repo: Repository,
    pack: PackWriter,
}

impl Forger {
    fn new(dir: &Path) -> Forger {
        let cost = KdfCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let repo = Repository::init(Box::new(LocalBackend::new(dir)), b"pw", cost).unwrap();
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

    fn file(&mut self, name: &str, data: &[u8]) -> Node {
        let mut n = node(name, NodeType::File);
        n.content = vec![self.blob(BlobType::Data, data)];
        n.size = data.len() as u64;
        n
    }

    /// A tree blob exactly as given: unsorted and duplicate names included.
    fn tree(&mut self, nodes: Vec<Node>) -> Id {
        let bytes = serde_json::to_vec(&Tree { nodes }).unwrap();
        self.blob(BlobType::Tree, &bytes)
    }

    /// Write the pack, its index and a snapshot of `root`; open the
    /// repository as a restore would.
    fn finish(self, root: Id, dir: &Path) -> Repository {
        self.finish_with(root, dir, |_| {})
    }

    /// [`Forger::finish`], with the index's blob list edited first.
    fn finish_with(
        self,
        root: Id,
        dir: &Path,
        edit: impl FnOnce(&mut Vec<cairn::pack::PackedBlob>),
    ) -> Repository {
        let mut p = self.pack.finish(self.repo.key());
        let backend = self.repo.backend();
        backend
            .write(FileKind::Pack, &p.id.to_hex(), p.bytes)
            .unwrap();
        let mut index = IndexFile::default();
        edit(&mut p.blobs);
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
        self.repo.save_json(FileKind::Snapshot, &snap).unwrap();
        Repository::open(Box::new(LocalBackend::new(dir)), b"pw").unwrap()
    }
}

/// Everything below `dir` with modes, sizes and contents.
fn fingerprint(dir: &Path) -> Vec<(String, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        out.push((d.display().to_string(), m.mode(), m.uid(), Vec::new()));
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                let data = fs::read(&p).unwrap_or_default();
                out.push((p.display().to_string(), m.mode(), m.uid(), data));
            }
        }
    }
    out.sort();
    out
}

fn outside_dir(base: &Path) -> std::path::PathBuf {
    let outside = base.join("outside");
    fs::create_dir_all(outside.join("etc")).unwrap();
    fs::write(outside.join("etc/passwd"), b"root:x:0:0").unwrap();
    fs::write(outside.join("h"), b"victim file").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    outside
}

fn opts(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_path_buf(),
        threads: 2,
        ..Default::default()
    }
}

/// The review's attack: a file, then a directory `a` holding a hard-linked
/// file, then a second entry `a` that is a symlink to a directory outside
/// the target. Restore used to replace the directory by the symlink and then
/// make the hard link, write queued files and chmod through it.
#[test]
fn a_duplicate_name_cannot_redirect_a_restore_outside_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = outside_dir(tmp.path());
    let before = fingerprint(&outside);
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);

    let mut first = f.file("h", b"planted by the attacker");
    first.links = 2;
    first.inode = 7;
    let nodes = vec![f.file("x", b"queued write"), first.clone()];
    let inner = f.tree(nodes);
    let mut dir_a = node("a", NodeType::Dir);
    dir_a.subtree = Some(inner);
    let mut link_a = node("a", NodeType::Symlink);
    link_a.target = Some(RawName(outside.as_os_str().as_encoded_bytes().to_vec()));
    let mut second = first.clone();
    second.name = RawName(b"z".to_vec());
    let zero = f.file("0", b"first");
    let nodes = vec![zero, dir_a, link_a, second];
    let root = f.tree(nodes);
    let repo = f.finish(root, &repo_dir);

    let target = tmp.path().join("target");
    let err = restore(&repo.load_index().unwrap(), &root, &opts(&target)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"a\" repeats \"a\""), "{msg}");
    assert_eq!(
        fingerprint(&outside),
        before,
        "restore changed files outside its target"
    );
}

/// The same trees one level down: the bad directory is reported and left
/// out, the rest of the snapshot is restored, nothing outside changes.
#[test]
fn a_hostile_subtree_is_reported_and_the_rest_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = outside_dir(tmp.path());
    let before = fingerprint(&outside);
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);

    let nodes = vec![f.file("x", b"queued write")];
    let inner = f.tree(nodes);
    let mut dir_a = node("a", NodeType::Dir);
    dir_a.subtree = Some(inner);
    let mut link_a = node("a", NodeType::Symlink);
    link_a.target = Some(RawName(outside.as_os_str().as_encoded_bytes().to_vec()));
    let nodes = vec![f.file("b", b"1"), f.file("a", b"2")];
    let unsorted = f.tree(nodes);
    let mut dir_u = node("unsorted", NodeType::Dir);
    dir_u.subtree = Some(unsorted);
    let nodes = vec![f.file("..", b"up")];
    let dotdot = f.tree(nodes);
    let mut dir_d = node("dotdot", NodeType::Dir);
    dir_d.subtree = Some(dotdot);
    let nodes = vec![f.file("0", b"first"), dir_a, link_a];
    let bad = f.tree(nodes);
    let mut dir_bad = node("bad", NodeType::Dir);
    dir_bad.subtree = Some(bad);
    let good = f.file("good", b"restored");
    let nodes = vec![dir_bad, dir_d, good, dir_u];
    let root = f.tree(nodes);
    let repo = f.finish(root, &repo_dir);

    let target = tmp.path().join("target");
    let no_owner = RestoreOptions {
        owner: Some(false),
        ..opts(&target)
    };
    let summary = restore(&repo.load_index().unwrap(), &root, &no_owner).unwrap();
    let mut errors: Vec<String> = summary
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path.display(), e.message))
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].contains("target/bad: corrupt tree") && errors[0].contains("repeats"));
    assert!(errors[1].contains("target/dotdot: corrupt tree") && errors[1].contains("unsafe"));
    assert!(
        errors[2].contains("target/unsorted: corrupt tree") && errors[2].contains("comes after")
    );
    assert_eq!(fs::read(target.join("good")).unwrap(), b"restored");
    // Ownership not restored: the files belong to whoever restores (root,
    // here), so the forged setuid bit is dropped.
    let mode = fs::metadata(target.join("good")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o777, "{mode:o}");
    assert_eq!(
        fingerprint(&outside),
        before,
        "restore changed files outside its target"
    );
}

/// Symlinks already in the target (a volume a pod wrote, a previous
/// restore) are replaced, never followed: not for directories, files, hard
/// links or the metadata applied at the end.
#[test]
fn symlinks_in_the_target_are_replaced_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = outside_dir(tmp.path());
    let before = fingerprint(&outside);
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);

    let mut first = f.file("h", b"linked");
    first.links = 2;
    first.inode = 9;
    let mut second = first.clone();
    second.name = RawName(b"h2".to_vec());
    let nodes = vec![first, second, f.file("passwd", b"attacker")];
    let inner = f.tree(nodes);
    let mut etc = node("etc", NodeType::Dir);
    etc.subtree = Some(inner);
    let nodes = vec![etc, f.file("h", b"file over a symlink")];
    let root = f.tree(nodes);
    let repo = f.finish(root, &repo_dir);

    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(outside.join("etc"), target.join("etc")).unwrap();
    std::os::unix::fs::symlink(outside.join("h"), target.join("h")).unwrap();
    let summary = restore(&repo.load_index().unwrap(), &root, &opts(&target)).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(
        fingerprint(&outside),
        before,
        "restore changed files outside its target"
    );
    assert!(fs::symlink_metadata(target.join("etc")).unwrap().is_dir());
    assert_eq!(fs::read(target.join("etc/passwd")).unwrap(), b"attacker");
    assert_eq!(fs::read(target.join("h")).unwrap(), b"file over a symlink");
    let (a, b) = (
        fs::metadata(target.join("etc/h")).unwrap(),
        fs::metadata(target.join("etc/h2")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

/// An index that records another plaintext length than the pack: restore
/// places large files' parts at offsets summed from these lengths, so the
/// mismatch must be caught on decode and by `check`, never cancel out.
#[test]
fn a_raw_length_that_disagrees_with_the_pack_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);
    let file = f.file("f", b"twelve bytes");
    let data_id = file.content[0];
    let nodes = vec![file];
    let root = f.tree(nodes);
    let repo = f.finish_with(root, &repo_dir, |blobs| {
        for b in blobs.iter_mut().filter(|b| b.id == data_id) {
            b.raw_length += 1;
        }
    });
    let target = tmp.path().join("target");
    let summary = restore(&repo.load_index().unwrap(), &root, &opts(&target)).unwrap();
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert!(
        summary.errors[0].message.contains("index records 13"),
        "{:?}",
        summary.errors
    );
    // One that claims more than any blob holds is refused before decoding
    // reserves room for it.
    let tmp2 = tempfile::tempdir().unwrap();
    let repo2_dir = tmp2.path().join("repo");
    let mut f = Forger::new(&repo2_dir);
    let file = f.file("f", b"twelve bytes");
    let data_id2 = file.content[0];
    let nodes = vec![file];
    let root2 = f.tree(nodes);
    let repo2 = f.finish_with(root2, &repo2_dir, |blobs| {
        for b in blobs.iter_mut().filter(|b| b.id == data_id2) {
            b.raw_length = 3 << 30;
        }
    });
    let summary = restore(
        &repo2.load_index().unwrap(),
        &root2,
        &opts(&tmp2.path().join("t")),
    )
    .unwrap();
    assert!(
        summary.errors[0]
            .message
            .contains("more than such a blob holds"),
        "{:?}",
        summary.errors
    );
    let report =
        cairn::commands::check::check(&repo, cairn::commands::check::ReadData::None).unwrap();
    let problems: Vec<String> = report.problems.iter().map(|p| format!("{p:?}")).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("header does not match the index")),
        "{problems:?}"
    );
}

/// Trees nested deeper than any stack should hold, forged or on disk: the
/// part below the limit is restored or backed up, the rest reported.
#[test]
fn nesting_beyond_the_depth_limit_is_reported_not_followed() {
    use cairn::constants::MAX_TREE_DEPTH;
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);
    let mut id = f.tree(Vec::new());
    for _ in 0..MAX_TREE_DEPTH + 10 {
        let mut d = node("d", NodeType::Dir);
        d.subtree = Some(id);
        id = f.tree(vec![d]);
    }
    let repo = f.finish(id, &repo_dir);
    let target = tmp.path().join("target");
    let summary = restore(&repo.load_index().unwrap(), &id, &opts(&target)).unwrap();
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert!(summary.errors[0].message.contains("nested deeper"));
    assert_eq!(summary.dirs as usize, MAX_TREE_DEPTH);
    let report =
        cairn::commands::check::check(&repo, cairn::commands::check::ReadData::None).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("nested deeper")),
        "{:?}",
        report.problems
    );

    // The same depth on disk, backed up.
    let src = tmp.path().join("src");
    let mut deep = src.clone();
    for _ in 0..MAX_TREE_DEPTH + 10 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    let result = cairn::commands::backup::backup(
        &repo.load_index().unwrap(),
        &cairn::commands::backup::BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
    assert!(result.errors[0].message.contains("nested deeper"));
}

/// Paths beyond PATH_MAX (30 directories of 200-byte names): entries are
/// made relative to their directory, and what is opened again at the end
/// (directory metadata, hard links) is resolved one component at a time.
#[test]
fn paths_longer_than_path_max_restore_with_metadata_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);
    let mut first = f.file("f", b"linked");
    first.links = 2;
    first.inode = 5;
    let mut second = first.clone();
    second.name = RawName(b"g".to_vec());
    let nodes = vec![first, second];
    let mut id = f.tree(nodes);
    let long = "n".repeat(200);
    for _ in 0..30 {
        let mut d = node(&long, NodeType::Dir);
        d.mode = 0o40750;
        d.subtree = Some(id);
        id = f.tree(vec![d]);
    }
    let repo = f.finish(id, &repo_dir);
    let target = tmp.path().join("target");
    let summary = restore(&repo.load_index().unwrap(), &id, &opts(&target)).unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.dirs, 30);
    assert_eq!(summary.others, 1); // the hard link
}

/// Whoever writes the source tree while the agent backs it up (a tenant's
/// pod) keeps swapping files for symlinks to `/proc/self/environ` (the
/// agent's own environment, with the repository password), directories for
/// symlinks to `/etc`, and files for FIFOs. Every backup finishes, and no
/// snapshot holds a byte from outside the tree.
#[test]
fn swapping_entries_during_backups_never_stores_what_is_outside_the_tree() {
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const MARKER: &str = "SECRET-MARKER-7f3a9";
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    fs::create_dir_all(src.join("dir")).unwrap();
    for i in 0..200 {
        fs::write(src.join(format!("f{i}")), b"original").unwrap();
    }
    fs::write(src.join("dir/inner"), b"inner").unwrap();
    let cairn = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_REPOSITORY", &repo)
            .env("CAIRN_PASSWORD", format!("pw-{MARKER}"))
            .env("AWS_SECRET_ACCESS_KEY", MARKER)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let st = cairn(&["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"])
        .status()
        .unwrap();
    assert!(st.success());

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let f = src.join(format!("f{}", i % 200));
                let tmp_name = src.join(".swap");
                let _ = fs::remove_file(&tmp_name);
                match i % 3 {
                    0 => {
                        let _ = std::os::unix::fs::symlink("/proc/self/environ", &tmp_name);
                    }
                    1 => {
                        let _ = rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &tmp_name,
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
                            0,
                        );
                    }
                    _ => {
                        let _ = fs::write(&tmp_name, b"original");
                    }
                }
                let _ = fs::rename(&tmp_name, &f);
                // The directory: a symlink to /etc, then back.
                let d = src.join("dir");
                let moved = src.join(".dir");
                if fs::rename(&d, &moved).is_ok() {
                    let _ = std::os::unix::fs::symlink("/etc", &d);
                    let _ = fs::remove_file(&d);
                    let _ = fs::rename(&moved, &d);
                }
                i += 1;
            }
        });
        for _ in 0..5 {
            let mut child = cairn(&["backup", src.to_str().unwrap()]).spawn().unwrap();
            let started = Instant::now();
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if started.elapsed() > Duration::from_secs(120) {
                    let _ = child.kill();
                    stop.store(true, Ordering::Relaxed);
                    panic!("a backup hung while entries were swapped");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            // 0, or 3 when it reported swapped entries.
            assert!(matches!(status.code(), Some(0 | 3)), "{status:?}");
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Restore every snapshot and read every regular file restored.
    let mut b = Command::new(env!("CARGO_BIN_EXE_cairn"));
    let out = b
        .env("CAIRN_REPOSITORY", &repo)
        .env("CAIRN_PASSWORD", format!("pw-{MARKER}"))
        .args(["--json", "snapshots"])
        .output()
        .unwrap();
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5, "{snaps}");
    let etc_hostname = fs::read("/etc/hostname").unwrap_or_default();
    for id in ids {
        let target = tmp.path().join(format!("r-{}", &id[..8]));
        let st = cairn(&["restore", &id, "--target", target.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "restore {id}: {st:?}");
        let mut stack = vec![target];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    let data = fs::read(&p).unwrap();
                    let text = String::from_utf8_lossy(&data);
                    assert!(
                        !text.contains(MARKER),
                        "{} holds the agent's environment",
                        p.display()
                    );
                    assert!(
                        data == b"original" || data == b"inner" || data.is_empty(),
                        "{} holds bytes from outside the tree: {text:?}",
                        p.display()
                    );
                    assert!(etc_hostname.is_empty() || data != etc_hostname);
                }
            }
        }
    }
}

/// A crafted snapshot whose trees share subtrees at every level has 2^64
/// paths in 65 trees. Check names its damage, stats counts it and repair
/// rewrites it with one visit per distinct tree (a walk per path never
/// ends: stats used to), and the counts saturate instead of overflowing.
#[test]
fn damage_in_a_snapshot_of_shared_subtrees_is_assessed_per_tree_not_per_path() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let mut f = Forger::new(&repo_dir);
    let mut lost = node("f", NodeType::File);
    lost.content = vec![Id([7; 32])]; // in no pack
    lost.size = 10;
    let kept = f.file("g", b"kept");
    let mut id = f.tree(vec![lost, kept]);
    for _ in 0..64 {
        let mut a = node("a", NodeType::Dir);
        a.subtree = Some(id);
        let mut b = node("b", NodeType::Dir);
        b.subtree = Some(id);
        id = f.tree(vec![a, b]);
    }
    let repo = f.finish(id, &repo_dir);
    let report =
        cairn::commands::check::check(&repo, cairn::commands::check::ReadData::None).unwrap();
    assert_eq!(report.damaged_snapshots.len(), 1, "{report:?}");
    let d = &report.damaged_snapshots[0];
    assert_eq!(d.damaged_files, u64::MAX, "2^64 files, saturated");
    assert_eq!(d.examples.len(), cairn::commands::damage::EXAMPLES);
    assert!(d.examples[0].starts_with("/a/a/a/"), "{:?}", d.examples);

    // stats counts distinct blobs, per distinct tree.
    let st = cairn::commands::stats::stats(&repo.load_index().unwrap(), &[]).unwrap();
    assert_eq!((st.unique_blobs, st.unique_size), (2, 4), "{st:?}");

    let r = cairn::commands::repair::repair_snapshots(&repo, &Default::default()).unwrap();
    assert_eq!(r.repaired.len(), 1, "{r:?}");
    let copy = r.repaired[0].repaired.unwrap();
    let report =
        cairn::commands::check::check(&repo, cairn::commands::check::ReadData::None).unwrap();
    assert!(
        report
            .damaged_snapshots
            .iter()
            .all(|d| d.snapshot != copy.to_hex()),
        "the repaired copy is whole: {report:?}"
    );
}
