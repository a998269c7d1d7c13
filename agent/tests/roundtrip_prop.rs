//! Property test: any generated tree backs up and restores byte-identical,
//! with metadata, through the library API on a real local repository; a
//! second backup of the same tree adds nothing.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use cairn::backend::LocalBackend;
use cairn::commands::backup::{backup, BackupOptions};
use cairn::commands::restore::{restore, RestoreOptions};
use cairn::constants::{CHUNK_MAX, CHUNK_MIN};
use cairn::repository::{KdfCost, Repository};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Spec {
    File {
        size: usize,
        seed: u64,
        mode: u32,
    },
    Dir {
        children: Vec<(String, Spec)>,
        mode: u32,
    },
    Symlink(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[a-zA-Z0-9 ._-]{1,12}",
        Just("ünïcødé".to_string()),
        Just("日本語のファイル".to_string()),
        Just(" leading space".to_string()),
        Just("trailing.dot.".to_string()),
        Just("emoji 🦀".to_string()),
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn file_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..2000,
        1 => Just(0usize),
        1 => Just(CHUNK_MIN),
        1 => Just(CHUNK_MIN + 1),
        1 => Just(CHUNK_MAX),
        1 => Just(CHUNK_MAX - 1),
        1 => CHUNK_MAX..3 * CHUNK_MAX,
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![
        4 => (file_size(), any::<u64>(), prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o400)])
            .prop_map(|(size, seed, mode)| Spec::File { size, seed, mode }),
        1 => "[a-z/.]{1,20}".prop_map(Spec::Symlink),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        (
            prop::collection::vec((name(), inner), 0..6),
            prop_oneof![Just(0o755u32), Just(0o700), Just(0o555)],
        )
            .prop_map(|(children, mode)| Spec::Dir { children, mode })
    })
}

fn create(path: &Path, spec: &Spec, stamp: &mut i64) {
    match spec {
        Spec::File { size, seed, mode } => {
            let data = if seed % 3 == 0 {
                b"compressible text "
                    .iter()
                    .cycle()
                    .take(*size)
                    .copied()
                    .collect()
            } else {
                common::random_bytes(*size, *seed)
            };
            fs::write(path, data).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        Spec::Symlink(target) => symlink(target, path).unwrap(),
        Spec::Dir { children, mode } => {
            fs::create_dir(path).unwrap();
            let mut seen = std::collections::HashSet::new();
            for (name, child) in children {
                if seen.insert(name.clone()) {
                    create(&path.join(name), child, stamp);
                }
            }
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
    *stamp += 7_777_777_777;
    let t =
        filetime::FileTime::from_unix_time(*stamp / 1_000_000_000, (*stamp % 1_000_000_000) as u32);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(children in prop::collection::vec((name(), spec()), 0..8)) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut stamp = 1_500_000_000_000_000_000i64;
        create(&src, &Spec::Dir { children, mode: 0o755 }, &mut stamp);

        let cost = KdfCost { memory_kib: 1024, iterations: 1 };
        let repo_path = tmp.path().join("repo");
        let repo = Repository::init(Box::new(LocalBackend::new(&repo_path)), b"pw", cost).unwrap();
        let repo = repo.load_index().unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], ..Default::default() };
        let first = backup(&repo, &opts).unwrap();
        prop_assert!(first.errors.is_empty(), "{:?}", first.errors);

        // a freshly opened repository sees everything (nothing only in memory)
        let repo = Repository::open(Box::new(LocalBackend::new(&repo_path)), b"pw").unwrap();
        let repo = repo.load_index().unwrap();
        let second = backup(&repo, &opts).unwrap();
        prop_assert_eq!(second.snapshot.summary.bytes_read, 0);
        prop_assert_eq!(second.snapshot.summary.data_blobs_added, 0);
        // reopen: the second backup's new trees (changed ancestors) are in the index now
        let repo = Repository::open(Box::new(LocalBackend::new(&repo_path)), b"pw").unwrap();
        let repo = repo.load_index().unwrap();
        // The source's own tree is unchanged. (Trees of its ancestors, such as
        // /tmp, may change: other processes create files there.)
        let src_str = src.to_string_lossy().into_owned();
        let (sub_first, _) = cairn::treepath::tree_at(&repo, &first.snapshot.tree, &src_str).unwrap();
        let (sub_second, _) = cairn::treepath::tree_at(&repo, &second.snapshot.tree, &src_str).unwrap();
        prop_assert_eq!(sub_first, sub_second);

        let target = tmp.path().join("out");
        let sub = src.to_string_lossy().into_owned();
        let summary = restore(&repo, &second.snapshot.tree, &RestoreOptions { target: target.clone(), subpath: Some(sub), ..Default::default() }).unwrap();
        prop_assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        common::assert_same_tree(&src, &target);
    }
}
