//! Helpers shared by the integration tests: running the real `cairn` binary,
//! generating data, and comparing restored trees with their sources.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

pub mod faultproxy;
pub mod garage;
pub mod moto;

/// A scratch area with a repository location and a source directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Repository location (a local path or an `s3:` URL).
    pub location: String,
    /// Extra environment for every cairn process (S3 credentials, settings).
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A local repository in a fresh temporary directory.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = dir.path().join("repo").to_string_lossy().into_owned();
        Env {
            dir,
            location,
            vars: Vec::new(),
        }
    }
    /// A repository under a fresh prefix in the test Garage (None: Garage unavailable).
    pub fn garage(name: &str) -> Option<Env> {
        let g = garage::garage()?;
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Env {
            dir,
            location: g.repo_url(name),
            vars: g.env(),
        })
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// The repository directory of a local repository.
    pub fn repo(&self) -> PathBuf {
        PathBuf::from(&self.location)
    }
    /// `cairn` with this env's repository and password.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_REPOSITORY", &self.location)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_LOG");
        // CAIRN_TEST_LOG=info makes every cairn the tests run log at that level.
        if let Ok(level) = std::env::var("CAIRN_TEST_LOG") {
            c.env("CAIRN_LOG", level);
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        if args.first() == Some(&"init") {
            c.args(["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"]);
            c.args(&args[1..]);
        } else {
            c.args(args);
        }
        c.output().expect("run cairn")
    }
    /// Run and require exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Run with `--json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{s}"))
    }
}

pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "cairn {what:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assert a clean failure: the given exit code, the message on stderr, no panic.
pub fn assert_fails(out: &Output, code: i32, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains(message),
        "expected {message:?} in stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
}

/// Spawn a test server that the kernel kills when this test process exits.
pub use cairn_testkit::spawn_server;

/// Every path below `root` (itself included), parents before children.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// Every file below `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = walk(dir).into_iter().filter(|p| p.is_file()).collect();
    v.sort();
    v
}

/// Exit code and both streams of a command, for assertion messages.
pub fn output(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The packs of a local repository, each with the type of blobs it holds
/// (from `cairn cat pack`).
pub fn packs_by_type(env: &Env) -> Vec<(PathBuf, String)> {
    files_in(&env.repo().join("data"))
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let header = env.json(&["cat", "pack", &name]);
            let t = header[0]["type"].as_str().unwrap().to_string();
            (p, t)
        })
        .collect()
}

/// The one file below `dir`.
pub fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<_> = walk(dir).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Flip one byte, counted from the end of the file.
pub fn flip_byte(p: &Path, at_from_end: usize) {
    let mut b = fs::read(p).unwrap();
    let n = b.len();
    b[n - at_from_end] ^= 0x55;
    fs::write(p, b).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    pub content_hash: Option<[u8; 32]>,
    pub target: Option<PathBuf>,
    /// For hard links: the first relative path seen with the same inode.
    pub link_group: Option<PathBuf>,
}

/// Describe a tree: relative path → entry. The root directory's own metadata is included as "".
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).expect("stat");
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let mut link_group = None;
        if ft.is_file() && m.nlink() > 1 {
            link_group = Some(
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            );
        }
        let e = Entry {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            size: if ft.is_file() { m.len() } else { 0 },
            content_hash: ft
                .is_file()
                .then(|| *blake3::hash(&fs::read(&p).expect("read")).as_bytes()),
            target: ft
                .is_symlink()
                .then(|| fs::read_link(&p).expect("readlink")),
            link_group,
        };
        out.insert(rel, e);
        if ft.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&p)
                .expect("readdir")
                .map(|e| e.expect("entry").path())
                .collect();
            children.sort();
            stack.extend(children);
        }
    }
    out
}

/// Assert two trees are identical in content and metadata (the roots' own
/// mtimes excluded when `ignore_root` is set: a restore target is created fresh).
pub fn assert_same_tree(src: &Path, restored: &Path) {
    let a = describe(src);
    let b = describe(restored);
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "different entries");
    for (k, ea) in &a {
        let eb = &b[k];
        if k.as_os_str().is_empty() {
            continue; // the root is the restore target itself
        }
        assert_eq!(ea, eb, "entry {} differs", k.display());
    }
}
