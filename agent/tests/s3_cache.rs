//! The local cache against a repository that changes behind its back. In its
//! own test binary because it sets process environment variables for the
//! in-process S3 backend that plays the other host (or the failing store).

mod common;

use std::fs;
use std::path::PathBuf;

use cairn::backend::{Backend, FileKind, S3Backend, S3Config};
use common::*;

/// A tree pack cached on this host, then damaged and later lost in the
/// repository. Check used to read it from the cache and pass, while every
/// other host failed to restore; now check reads the repository only, and
/// the next listing of packs drops the cached copy.
#[test]
fn check_sees_the_repository_not_the_cache_and_lost_packs_leave_the_cache() {
    let Some(mut env) = Env::garage("cache-stale") else {
        return;
    };
    let cache = env.path("cache");
    env.vars.push((
        "CAIRN_CACHE_DIR".into(),
        cache.to_string_lossy().into_owned(),
    ));
    let src = env.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file"), random_bytes(200_000, 41)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["ls", "latest"]); // caches the tree pack
    let cached: Vec<PathBuf> = files_in(&cache)
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "data"))
        .collect();
    assert_eq!(cached.len(), 1, "one tree pack cached: {cached:?}");
    let pack = cached[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // The other host: the repository itself, without a cache.
    for (k, v) in &env.vars {
        std::env::set_var(k, v);
    }
    let remote = S3Backend::new(S3Config::parse(&env.location).unwrap()).unwrap();
    let mut bytes = remote.read(FileKind::Pack, &pack).unwrap();
    bytes[3] ^= 0x55; // inside the first blob
    remote.remove(FileKind::Pack, &pack).unwrap();
    remote.write(FileKind::Pack, &pack, bytes).unwrap();

    // This host still restores (its cached copy is intact)...
    env.ok(&["ls", "latest"]);
    // ...but check reports what everyone else sees.
    let out = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].to_string();
    assert!(problems.contains(&pack), "{report}");
    assert_eq!(
        report["damaged_snapshots"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(
        cached[0].exists(),
        "check neither reads nor changes the cache"
    );

    // Lost for good: the next listing of packs drops the cached copy.
    remote.remove(FileKind::Pack, &pack).unwrap();
    env.ok(&["stats"]);
    assert!(
        !cached[0].exists(),
        "the cache still holds a pack the repository lost"
    );
    let out = env.run(&["ls", "latest"]);
    assert!(
        !out.status.success(),
        "listed a snapshot whose trees are gone"
    );
}
