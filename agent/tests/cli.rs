//! End-to-end tests of the `cairn` binary on a local repository and real files.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use cairn::constants::{CHUNK_MAX, CHUNK_MIN};
use common::*;

fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(p, t, t).expect("set mtime");
}

/// A tree with every kind of entry the format must round-trip.
fn build_rich_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("a/hello.txt"), b"hello world\n").unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep".repeat(1000)).unwrap();
    fs::write(root.join("a/b/min.bin"), random_bytes(CHUNK_MIN, 1)).unwrap();
    fs::write(root.join("a/b/max.bin"), random_bytes(CHUNK_MAX, 2)).unwrap();
    fs::write(
        root.join("a/b/max-plus-one.bin"),
        random_bytes(CHUNK_MAX + 1, 3),
    )
    .unwrap();
    fs::write(root.join("a/b/two-max.bin"), random_bytes(2 * CHUNK_MAX, 4)).unwrap();
    // sparse-ish: data, a long run of zeros, data
    let mut sparse = random_bytes(100_000, 5);
    sparse.extend(std::iter::repeat_n(0u8, 12 << 20));
    sparse.extend(random_bytes(50_000, 6));
    fs::write(root.join("sparse.img"), &sparse).unwrap();
    fs::write(root.join("ünïcødé ✓ name.txt"), "ünï".repeat(100)).unwrap();
    fs::write(root.join("with\nnewline"), b"nl").unwrap();
    fs::write(root.join("-dash and spaces "), b"x").unwrap();
    let raw = std::ffi::OsStr::from_bytes(&[b'r', b'a', b'w', 0xff, 0xfe]);
    fs::write(root.join(raw), b"not utf-8 name").unwrap();
    symlink("a/hello.txt", root.join("link-to-file")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("a", root.join("link-to-dir")).unwrap();
    fs::write(root.join("a/hard1"), b"shared inode").unwrap();
    fs::hard_link(root.join("a/hard1"), root.join("a/b/hard2")).unwrap();
    let fifo =
        std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::set_permissions(root.join("a/hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("exec.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // distinct, sub-second mtimes everywhere (directories last)
    let mut paths: Vec<_> = walk(root);
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in paths.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 1000, 123_456_789 + i as u32);
    }
}

fn restored_path(env: &Env, target: &str, src: &Path) -> std::path::PathBuf {
    env.path(target).join(src.strip_prefix("/").unwrap())
}

#[test]
fn backup_and_restore_are_byte_identical_with_metadata() {
    let env = Env::new();
    let src = env.path("src");
    build_rich_tree(&src);
    env.ok(&["init"]);
    let out = env.json(&["backup", src.to_str().unwrap(), "--tag", "first"]);
    assert_eq!(out["errors"].as_array().unwrap().len(), 0);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    let restored = restored_path(&env, "out", &src);
    assert_same_tree(&src, &restored);
    // hard links restored as links, sparse file restored with holes
    let h1 = fs::metadata(restored.join("a/hard1")).unwrap();
    let h2 = fs::metadata(restored.join("a/b/hard2")).unwrap();
    assert_eq!(h1.ino(), h2.ino());
    let sparse = fs::metadata(restored.join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < sparse.len() / 2,
        "sparse file was not restored sparse"
    );
}

#[test]
fn large_file_is_restored_in_parts_with_holes_and_metadata() {
    // > 64 content blobs: restored in parts by several workers (restore::PART_BLOBS).
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut big = random_bytes(20 << 20, 11);
    big.extend(std::iter::repeat_n(0u8, 10 << 20));
    big.extend(random_bytes((20 << 20) + 12_345, 12));
    let path = src.join("volume.img");
    fs::write(&path, &big).unwrap();
    // A small file (restored whole) that ends in a run of zeros: its end is a
    // hole, and it must still be restored at its full length.
    let mut tail = random_bytes(300_000, 13);
    tail.extend(std::iter::repeat_n(0u8, 6 << 20));
    fs::write(src.join("tail-hole.img"), &tail).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&path, 1_650_000_000, 987_654_321);
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let t = env.path("out");
    let out = env.json(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(out["summary"]["files"], 2, "{out}");
    assert_eq!(
        out["summary"]["bytes"],
        (big.len() + tail.len()) as u64,
        "{out}"
    );
    let restored = restored_path(&env, "out", &src);
    assert_same_tree(&src, &restored);
    assert!(fs::read(restored.join("volume.img")).unwrap() == big);
    assert!(fs::read(restored.join("tail-hole.img")).unwrap() == tail);
    let m = fs::metadata(restored.join("volume.img")).unwrap();
    assert!(
        m.blocks() * 512 <= m.len() - (6 << 20),
        "the zero run was written instead of left as a hole: {} of {} bytes allocated",
        m.blocks() * 512,
        m.len()
    );
}

#[test]
fn restore_subpath_and_includes() {
    let env = Env::new();
    let src = env.path("src");
    build_rich_tree(&src);
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}/a", src.display());
    env.ok(&[
        "restore",
        &spec,
        "--target",
        env.path("sub").to_str().unwrap(),
    ]);
    assert_same_tree(&src.join("a"), &env.path("sub"));

    let pattern = format!("{}/a/b/c/**", src.display());
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("inc").to_str().unwrap(),
        "--include",
        &pattern,
    ]);
    let r = restored_path(&env, "inc", &src);
    assert_eq!(
        fs::read(r.join("a/b/c/deep.txt")).unwrap(),
        b"deep".repeat(1000)
    );
    assert!(!r.join("a/hello.txt").exists());
    assert!(!r.join("empty.txt").exists());
}

#[test]
fn restore_replaces_what_is_in_the_way_without_following_symlinks() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("d/f.txt"), b"new-f").unwrap();
    fs::write(src.join("file.txt"), b"new-file").unwrap();
    fs::write(src.join("e/g.txt"), b"g").unwrap();
    fs::write(src.join("same.txt"), b"fresh").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);

    // The target already holds the wrong kinds of entries under the same names.
    let t = env.path("t");
    let outside = env.path("outside");
    fs::create_dir_all(t.join("file.txt/x")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(t.join("d"), b"old").unwrap();
    symlink(&outside, t.join("e")).unwrap();
    fs::write(t.join("same.txt"), b"stale stale stale").unwrap();

    let spec = format!("latest:{}", src.display());
    env.ok(&["restore", &spec, "--target", t.to_str().unwrap()]);
    assert_eq!(fs::read(t.join("d/f.txt")).unwrap(), b"new-f");
    assert_eq!(fs::read(t.join("file.txt")).unwrap(), b"new-file");
    assert_eq!(fs::read(t.join("same.txt")).unwrap(), b"fresh");
    assert!(fs::symlink_metadata(t.join("e")).unwrap().is_dir());
    assert_eq!(fs::read(t.join("e/g.txt")).unwrap(), b"g");
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "restore wrote through a symlink in the target"
    );
    assert_same_tree(&src, &t);
}

#[test]
fn unchanged_backup_reads_nothing_and_adds_nothing() {
    let env = Env::new();
    let src = env.path("src");
    build_rich_tree(&src);
    env.ok(&["init"]);
    let first = env.json(&["backup", src.to_str().unwrap()]);
    assert!(first["summary"]["bytes_read"].as_u64().unwrap() > 20 << 20);
    let second = env.json(&["backup", src.to_str().unwrap()]);
    let s = &second["summary"];
    assert_eq!(s["bytes_read"], 0, "{s}");
    assert_eq!(
        s["files_new"].as_u64().unwrap() + s["files_changed"].as_u64().unwrap(),
        0,
        "{s}"
    );
    assert_eq!(s["files_unmodified"], first["summary"]["files_new"]);
    assert_eq!(s["data_blobs_added"], 0);
    // Only trees of the source's ancestors (/, /tmp, the test's temp dir) may
    // change: other tests create files in /tmp meanwhile.
    assert!(s["tree_blobs_added"].as_u64().unwrap() <= 3, "{s}");
    assert!(s["bytes_stored"].as_u64().unwrap() < 8192, "{s}");
    assert_eq!(second["parent"], first["snapshot_id"]);

    // touching one file re-reads only that file
    fs::write(src.join("a/hello.txt"), b"hello again\n").unwrap();
    let third = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(third["summary"]["files_changed"], 1);
    assert_eq!(third["summary"]["bytes_read"], 12);
    // --force reads everything again but stores nothing new
    let forced = env.json(&["backup", "--force", src.to_str().unwrap()]);
    assert!(forced["summary"]["bytes_read"].as_u64().unwrap() > 20 << 20);
    assert_eq!(forced["summary"]["data_blobs_added"], 0);
}

#[test]
fn insertion_in_a_large_file_adds_only_nearby_chunks() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(48 << 20, 42);
    fs::write(src.join("big.bin"), &data).unwrap();
    env.ok(&["init"]);
    let first = env.json(&["backup", src.to_str().unwrap()]);
    let chunks = first["summary"]["data_blobs_added"].as_u64().unwrap();
    assert!(chunks >= 20, "{chunks} chunks for 48 MiB");
    let mut edited = data.clone();
    edited.splice(24 << 20..24 << 20, b"a few inserted bytes".iter().copied());
    fs::write(src.join("big.bin"), &edited).unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()]);
    let s = &second["summary"];
    assert_eq!(s["files_changed"], 1);
    assert!(s["data_blobs_added"].as_u64().unwrap() <= 2, "{s}");
    assert!(
        s["bytes_added"].as_u64().unwrap() <= 2 * CHUNK_MAX as u64 + 4096,
        "{s}"
    );
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read(restored_path(&env, "out", &src).join("big.bin")).unwrap(),
        edited
    );
}

/// Replace `src` by a copy with the same paths, sizes and mtimes but new inodes
/// and ctimes, as a volume cloned from a CSI snapshot looks (the original moves to `old`).
fn clone_volume(src: &Path, old: &Path) {
    fs::rename(src, old).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(old)
        .arg(src)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn ignore_inode_mode_trusts_size_and_mtime_for_cloned_volumes() {
    let env = Env::new();
    let src = env.path("vol");
    build_rich_tree(&src);
    fs::remove_file(src.join("fifo")).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    // Simulate a volume cloned from a CSI snapshot: same paths, sizes and
    // mtimes, but new inodes and ctimes everywhere.
    clone_volume(&src, &env.path("old"));
    let strict = env.json(&["backup", "--host", "h1", src.to_str().unwrap()]);
    assert!(strict["summary"]["bytes_read"].as_u64().unwrap() > 0);
    let base = env.json(&["backup", "--host", "h2", src.to_str().unwrap()]);
    clone_volume(&src, &env.path("old2"));
    let relaxed = env.json(&[
        "backup",
        "--host",
        "h2",
        "--ignore-inode",
        src.to_str().unwrap(),
    ]);
    assert_eq!(relaxed["parent"], base["snapshot_id"]);
    assert_eq!(
        relaxed["summary"]["bytes_read"], 0,
        "{}",
        relaxed["summary"]
    );
    assert_eq!(relaxed["summary"]["files_changed"], 0);
}

fn hash_tree(root: &Path) -> Vec<(std::path::PathBuf, [u8; 32])> {
    let mut v: Vec<_> = walk(root)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), *blake3::hash(&fs::read(&p).unwrap()).as_bytes()))
        .collect();
    v.sort();
    v
}

#[test]
fn wrong_password_is_a_clear_error_and_changes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let before = hash_tree(&env.repo());
    for args in [
        vec!["snapshots"],
        vec!["backup", src.to_str().unwrap()],
        vec![
            "restore",
            "latest",
            "--target",
            env.path("out").to_str().unwrap(),
        ],
        vec!["key", "add"],
    ] {
        let out = env
            .cmd()
            .env("CAIRN_PASSWORD", "not the password")
            .env("CAIRN_NEW_PASSWORD", "x")
            .args(&args)
            .output()
            .unwrap();
        assert_fails(&out, 1, "wrong password");
    }
    assert_eq!(hash_tree(&env.repo()), before);
    assert!(!env.path("out").exists());
}

#[test]
fn missing_and_existing_repositories() {
    let env = Env::new();
    let out = env.run(&["snapshots"]);
    assert_fails(&out, 1, "no repository at");
    env.ok(&["init"]);
    let out = env.run(&["init"]);
    assert_fails(&out, 1, "already exists");
    // A source that is not there: the path and the OS's reason, said once.
    let missing = env.path("not-there");
    let out = env.run(&["backup", missing.to_str().unwrap()]);
    assert_fails(&out, 1, "cannot back up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    let out = env
        .cmd()
        .env_remove("CAIRN_REPOSITORY")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&out, 1, "no repository given");
    let out = env
        .cmd()
        .env_remove("CAIRN_PASSWORD")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&out, 1, "no password given");
    let pwfile = env.path("pw");
    fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let out = env
        .cmd()
        .env_remove("CAIRN_PASSWORD")
        .arg("--password-file")
        .arg(&pwfile)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_success(&out, &["snapshots with --password-file"]);
}

#[test]
fn corrupt_objects_are_named_in_errors() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(3 << 20, 9)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    let t = target.to_str().unwrap();

    // A flipped byte inside a data blob: restore names the blob and the pack, exits 1.
    let data_packs: Vec<_> = walk(&env.repo().join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    let big = data_packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let mut b = fs::read(&big).unwrap();
    b[100] ^= 1;
    fs::write(&big, &b).unwrap();
    let out = env.run(&["restore", "latest", "--target", t]);
    assert_fails(&out, 1, "corrupt data blob");
    assert_fails(&out, 1, &big.file_name().unwrap().to_string_lossy());
    b[100] ^= 1;
    fs::write(&big, &b).unwrap();

    // A truncated pack.
    fs::write(&big, &b[..b.len() / 2]).unwrap();
    let out = env.run(&["restore", "latest", "--target", t]);
    assert_fails(&out, 1, "truncated");
    fs::write(&big, &b).unwrap();

    // A modified index file.
    let index = only_file(&env.repo().join("index"));
    let saved = fs::read(&index).unwrap();
    flip_byte(&index, 5);
    let out = env.run(&["restore", "latest", "--target", t]);
    assert_fails(
        &out,
        1,
        &format!(
            "corrupt index {}",
            index.file_name().unwrap().to_string_lossy()
        ),
    );
    fs::write(&index, &saved[..saved.len() - 3]).unwrap();
    let out = env.run(&["snapshots"]);
    assert_success(&out, &["snapshots does not need the index"]);
    let out = env.run(&["ls", "latest"]);
    assert_fails(&out, 1, "corrupt index");
    fs::write(&index, &saved).unwrap();

    // A modified snapshot file: listed as skipped, named (see also
    // tests/damaged.rs: the other snapshots stay usable).
    let snap = only_file(&env.repo().join("snapshots"));
    flip_byte(&snap, 1);
    let out = env.run(&["snapshots"]);
    assert_success(&out, &["snapshots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = snap.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(&format!("corrupt snapshot {name}")),
        "{stderr}"
    );

    // A corrupt config and a damaged key file.
    let config = env.repo().join("config");
    flip_byte(&config, 1);
    assert_fails(&env.run(&["snapshots"]), 1, "corrupt config");
    let key = only_file(&env.repo().join("keys"));
    fs::write(&key, b"{ not json").unwrap();
    assert_fails(&env.run(&["snapshots"]), 1, "corrupt key");
}

#[test]
fn unreadable_files_are_listed_and_exit_code_is_3() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("secret-dir")).unwrap();
    fs::write(src.join("ok.txt"), b"fine").unwrap();
    fs::write(src.join("secret.txt"), b"no access").unwrap();
    fs::write(src.join("secret-dir/inner"), b"x").unwrap();
    fs::set_permissions(src.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("secret-dir"), fs::Permissions::from_mode(0o000)).unwrap();
    env.ok(&["init"]);
    // Root reads everything: run the backup as an unprivileged user when we are root.
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if as_root {
        for p in [env.dir.path(), &src] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
        let st = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(env.repo())
            .status()
            .unwrap();
        assert!(st.success());
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_cairn"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
    };
    let out = cmd
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD", PASSWORD)
        .args(["--json", "backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("secret.txt") && stderr.contains("secret-dir"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["errors"], 2);
    let listing = env.ok(&["ls", "latest"]);
    assert!(listing.contains("ok.txt"));
    assert!(!listing.contains("secret.txt"));
}

#[test]
fn keys_can_be_added_changed_and_removed() {
    let env = Env::new();
    env.ok(&["init"]);
    let add = env
        .cmd()
        .env("CAIRN_NEW_PASSWORD", "second")
        .args([
            "--json",
            "key",
            "add",
            "--kdf-memory-kib",
            "1024",
            "--kdf-iterations",
            "1",
        ])
        .output()
        .unwrap();
    assert_success(&add, &["key add"]);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // the key in use cannot be removed; open with the second password and remove the first
    assert_fails(&env.run(&["key", "remove", &first[..8]]), 1, "refusing");
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "second")
        .args(["key", "remove", &first[..8]])
        .output()
        .unwrap();
    assert_success(&out, &["key remove"]);
    assert_fails(&env.run(&["snapshots"]), 1, "wrong password");
    // change the password of the remaining key; the old one stops working
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "second")
        .env("CAIRN_NEW_PASSWORD", "third")
        .args([
            "key",
            "passwd",
            "--kdf-memory-kib",
            "1024",
            "--kdf-iterations",
            "1",
        ])
        .output()
        .unwrap();
    assert_success(&out, &["key passwd"]);
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "second")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_fails(&out, 1, "wrong password");
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "third")
        .args(["--json", "key", "list"])
        .output()
        .unwrap();
    assert_success(&out, &["key list"]);
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    // too-weak KDF settings are refused
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "third")
        .env("CAIRN_NEW_PASSWORD", "x")
        .args(["key", "add", "--kdf-memory-kib", "8"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "key derivation cost too low");
}

#[test]
fn snapshots_tags_hosts_excludes_ls_diff_stats_and_cat() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep.txt"), b"keep").unwrap();
    fs::write(src.join("skip.tmp"), b"skip").unwrap();
    fs::write(src.join("cache/blob"), b"cached").unwrap();
    env.ok(&["init"]);
    let cache_glob = format!("{}/cache", src.display());
    let a = env.json(&[
        "backup",
        "--tag",
        "daily",
        "--host",
        "db-0",
        "--exclude",
        "*.tmp",
        "--exclude",
        &cache_glob,
        src.to_str().unwrap(),
    ]);
    fs::write(src.join("keep.txt"), b"kept, changed").unwrap();
    fs::write(src.join("new.txt"), b"new").unwrap();
    let b = env.json(&["backup", "--host", "db-1", src.to_str().unwrap()]);
    assert!(b["parent"].is_null(), "another host must not be the parent");

    let snaps = env.json(&["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["id"], a["snapshot_id"]);
    assert_eq!(snaps[0]["tags"][0], "daily");
    assert_eq!(snaps[0]["hostname"], "db-0");
    assert_eq!(snaps[0]["paths"][0], src.to_str().unwrap());
    assert_eq!(
        env.json(&["snapshots", "--tag", "daily"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.json(&["snapshots", "--host", "db-1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let short_a = &a["snapshot_id"].as_str().unwrap()[..8];
    let listing = env.ok(&["ls", short_a]);
    assert!(listing.contains("keep.txt"));
    assert!(!listing.contains("skip.tmp"), "{listing}");
    assert!(!listing.contains("cache"), "{listing}");

    let diff = env.json(&["diff", short_a, "latest"]);
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let p = |n: &str| format!("{}/{n}", src.display());
    assert!(
        changes.contains(&("modified".into(), p("keep.txt"))),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("added".into(), p("new.txt"))),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("added".into(), p("skip.tmp"))),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("added".into(), p("cache/blob"))),
        "{changes:?}"
    );

    let stats = env.json(&["stats"]);
    assert_eq!(stats["snapshots"], 2);
    assert!(stats["stored_size"].as_u64().unwrap() > 0);

    let config = env.json(&["cat", "config"]);
    assert_eq!(config["version"], 1);
    let snap = env.json(&["cat", "snapshot", short_a]);
    let tree = env.json(&["cat", "tree", snap["tree"].as_str().unwrap()]);
    assert!(tree["nodes"].is_array());
    assert_fails(&env.run(&["cat", "snapshot", "ffffffffff"]), 1, "not found");
    assert_fails(&env.run(&["cat", "bogus", "x"]), 1, "unknown object kind");
}

#[test]
fn many_files_in_many_directories() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..40 {
        let dir = src.join(format!("d{d:02}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(
                dir.join(format!("f{f}")),
                format!("file {d} {f}").repeat(f + 1),
            )
            .unwrap();
        }
    }
    env.ok(&["init"]);
    let out = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(out["summary"]["total_files"], 2000);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    assert_same_tree(&src, &restored_path(&env, "out", &src));
}

#[test]
fn check_verifies_structure_and_data_and_names_damaged_objects() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data.bin"), random_bytes(5 << 20, 11)).unwrap();
    fs::write(src.join("notes.txt"), "some text\n".repeat(5000)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    assert!(env.ok(&["check"]).contains("no errors were found"));
    let full = env.json(&["check", "--read-data"]);
    assert_eq!(full["problems"].as_array().unwrap().len(), 0);
    let packs = full["packs_read"].as_u64().unwrap();
    assert!(
        packs >= 2 && full["blobs_read"].as_u64().unwrap() >= 3,
        "{full}"
    );
    let halves: u64 = ["1/2", "2/2"]
        .iter()
        .map(|g| {
            env.json(&["check", "--read-data-subset", g])["packs_read"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        halves, packs,
        "groups 1/2 and 2/2 together read every pack once"
    );
    assert_fails(
        &env.run(&["check", "--read-data-subset", "3/2"]),
        1,
        "use a percentage",
    );

    let mut packs: Vec<_> = walk(&env.repo().join("data"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let (tree_pack, data_pack) = (packs[0].clone(), packs[packs.len() - 1].clone());
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    // A flipped byte inside a data blob: the structure is fine, the data is not.
    let good = fs::read(&data_pack).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 1;
    fs::write(&data_pack, &bad).unwrap();
    env.ok(&["check"]);
    let out = env.run(&["check", "--read-data"]);
    assert_fails(&out, 1, "check found");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pack {}", name(&data_pack))),
        "{stdout}"
    );
    assert!(stdout.contains("data blob"), "{stdout}");
    fs::write(&data_pack, &good).unwrap();

    // A missing tree pack: named, and the snapshot's trees are reported unreadable.
    let saved = fs::read(&tree_pack).unwrap();
    fs::remove_file(&tree_pack).unwrap();
    let out = env.run(&["check"]);
    assert_fails(&out, 1, "check found");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pack {}: missing", name(&tree_pack))),
        "{stdout}"
    );
    assert!(stdout.contains("tree "), "{stdout}");
    fs::write(&tree_pack, &saved).unwrap();

    // A damaged index file is named, and the check goes on.
    let index = walk(&env.repo().join("index"))
        .into_iter()
        .find(|p| p.is_file())
        .unwrap();
    flip_byte(&index, 3);
    let out = env.run(&["check"]);
    assert_fails(&out, 1, "check found");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("index {}", name(&index))));
}

#[test]
fn forget_applies_a_retention_policy_and_explains_it() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["init"]);
    let mut ids = Vec::new();
    for i in 0..4 {
        fs::write(src.join("f"), format!("version {i}")).unwrap();
        let tag = if i == 0 { "release" } else { "nightly" };
        ids.push(
            env.json(&["backup", "--tag", tag, src.to_str().unwrap()])["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_fails(&env.run(&["forget"]), 1, "no retention policy given");
    let dry = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "release",
        "--dry-run",
    ]);
    assert_eq!(dry["removed"], 2);
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        4,
        "dry run removed something"
    );
    let decisions = &dry["groups"][0]["decisions"];
    assert_eq!(decisions[0]["id"], ids[3].as_str());
    assert_eq!(decisions[0]["reasons"][0], "last snapshot #1");
    assert_eq!(decisions[3]["reasons"][0], "has tag release");

    let out = env.ok(&["forget", "--keep-last", "1", "--keep-tag", "release"]);
    assert!(out.contains("removed 2 snapshots"), "{out}");
    let left: Vec<String> = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[0].clone(), ids[3].clone()]);
    // what is left still restores and checks clean
    env.ok(&[
        "restore",
        &ids[0][..8],
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read(restored_path(&env, "out", &src).join("f")).unwrap(),
        b"version 0"
    );
    env.ok(&["check", "--read-data"]);
}

/// `cairn agent ...`, the operator's Job entrypoint: JSON result on stdout and
/// in the termination-message file, exit codes like the CLI.
#[test]
fn durations_have_one_grammar_and_a_bare_m_is_refused() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    // restic's `--keep-within 6m` means months: read as minutes it would
    // forget far more, so it is refused, with both spellings offered.
    for args in [
        &["forget", "--keep-within", "6m"][..],
        &["forget", "--keep-within", "1y6m", "--dry-run"],
        &["prune", "--grace", "90m"],
        &["forget", "--keep-last", "1", "--prune", "--grace", "1h30m"],
    ] {
        let out = env.run(args);
        assert_fails(&out, 1, "a bare \"m\" is ambiguous");
        assert_fails(&out, 1, "\"mo\" for months or \"min\" for minutes");
    }
    assert_fails(
        &env.run(&["forget", "--keep-within", "90min"]),
        1,
        "finer than an hour",
    );
    assert_fails(&env.run(&["prune", "--grace", "1mo"]), 1, "no fixed length");
    // Nothing was removed by the refused runs.
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    let r = env.json(&["forget", "--keep-within", "1y6mo", "--dry-run"]);
    assert_eq!(r["removed"], 0);
    env.json(&["forget", "--keep-within", "2w12h", "--dry-run"]);
    let r = env.json(&["prune", "--grace", "1h30min", "--dry-run"]);
    assert_eq!(r["grace_seconds"], 5_400);
    // Prune says its grace period in the same grammar.
    let out = env.ok(&["prune", "--grace", "90min", "--dry-run"]);
    assert!(out.contains("marked at least 90min ago"), "{out}");

    // The agent reports the refusal in its result, as the controller reads it.
    let term = env.path("termination-log");
    let out = env
        .cmd()
        .env("CAIRN_TERMINATION_LOG", &term)
        .args(["agent", "backup", "--source", src.to_str().unwrap()])
        .args(["--id", "ns/pvc", "--keep-within", "6m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&term).unwrap()).unwrap();
    assert_eq!((&r["command"], &r["ok"]), (&"backup".into(), &false.into()));
    let e = r["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("--keep-within") && e.contains("\"mo\" for months"),
        "{e}"
    );
    // Refused before anything was written.
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn agent_commands_write_a_result_for_the_controller() {
    let env = Env::new();
    let vol = env.path("vol");
    fs::create_dir_all(vol.join("sub")).unwrap();
    fs::write(vol.join("a"), b"hello").unwrap();
    fs::write(vol.join("sub/b"), random_bytes(1 << 20, 9)).unwrap();
    let term = env.path("termination-log");
    let agent = |args: &[&str]| {
        let out = env
            .cmd()
            .env("CAIRN_TERMINATION_LOG", &term)
            .arg("agent")
            .args(args)
            .output()
            .unwrap();
        let stdout: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        let file: serde_json::Value = serde_json::from_slice(&fs::read(&term).unwrap()).unwrap();
        assert_eq!(stdout, file);
        (out.status.code(), stdout)
    };
    let kdf = ["--kdf-memory-kib", "1024", "--kdf-iterations", "1"];
    let (code, r) = agent(&[&["init"][..], &kdf].concat());
    assert_eq!(
        (code, &r["initialized"]),
        (Some(0), &serde_json::json!(true))
    );
    let (code, r) = agent(&[&["init"][..], &kdf].concat());
    assert_eq!(
        (code, &r["initialized"]),
        (Some(0), &serde_json::json!(false))
    );

    let v = vol.to_str().unwrap();
    let backup = [
        "backup",
        "--source",
        v,
        "--id",
        "shop/data",
        "--tag",
        "nightly",
        "--keep-last",
        "2",
    ];
    let (code, first) = agent(&backup);
    assert_eq!(code, Some(0), "{first}");
    assert_eq!(first["command"], "backup");
    assert_eq!(first["ok"], true);
    assert_eq!(first["files"], 2);
    assert_eq!(first["bytesProcessed"], (1 << 20) + 5);
    assert!(first["bytesAdded"].as_u64().unwrap() >= 1 << 20);
    agent(&backup);
    let (_, third) = agent(&backup);
    assert_eq!(third["bytesAdded"], 0);
    assert_eq!(third["snapshotsForgotten"], 1);
    // Another volume's snapshots are not touched by this volume's retention.
    let (_, other) = agent(&[
        "backup",
        "--source",
        v,
        "--id",
        "shop/other",
        "--keep-last",
        "1",
    ]);
    assert_eq!(other["snapshotsForgotten"], 0);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3);

    // Prune (no backup running) reports in the same format.
    let (code, p) = agent(&["prune", "--grace", "0"]);
    assert_eq!(code, Some(0), "{p}");
    assert_eq!(
        (&p["command"], &p["ok"]),
        (&serde_json::json!("prune"), &serde_json::json!(true))
    );
    assert_eq!(p["snapshots"], 3);
    assert!(p["storedBytes"].as_u64().unwrap() > 1 << 20, "{p}");

    let out = env.path("out");
    let (code, r) = agent(&[
        "restore",
        "--target",
        out.to_str().unwrap(),
        "--latest-of",
        "shop/data",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["snapshotId"], third["snapshotId"]);
    assert_same_tree(&vol, &out);

    let (code, r) = agent(&[
        "restore",
        "--target",
        out.to_str().unwrap(),
        "--latest-of",
        "shop/none",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("not found"), "{r}");

    let mut c = env.cmd();
    c.env("CAIRN_TERMINATION_LOG", &term)
        .env("CAIRN_PASSWORD", "wrong")
        .args(["agent", "backup", "--source", v, "--id", "shop/data"]);
    assert_fails(&c.output().unwrap(), 1, "wrong password");
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&term).unwrap()).unwrap();
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("wrong password"),
        "{r}"
    );
}

/// What a restore Job meets: the root of a new volume belongs to root, the
/// agent does not. The contents are restored; the target's own metadata is
/// left (a warning), not an error that fails the restore.
#[test]
fn restore_into_a_directory_owned_by_someone_else() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to make a directory another user cannot chmod");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/f"), b"content").unwrap();
    fs::set_permissions(src.join("data"), fs::Permissions::from_mode(0o750)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    // Everything readable by the unprivileged user; the target is root's,
    // writable by all (as a volume with fsGroup would be), not theirs.
    let st = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let target = env.path("volume");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o777)).unwrap();
    let spec = format!("latest:{}", src.join("data").display());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(["restore", &spec, "--target", target.to_str().unwrap()])
        .env("CAIRN_REPOSITORY", &env.location)
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("HOME", env.dir.path())
        .output()
        .unwrap();
    assert_success(&out, &["restore as another user"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the owner"));
    assert_eq!(fs::read(target.join("f")).unwrap(), b"content");
}

/// A repository on a volume that agent pods of different users share through
/// the volume's group: `--group-access` makes it 0770/0660 despite the
/// umask, a fresh filesystem's lost+found does not make the volume "not
/// empty", and the agent's backup leaves the volume root's lost+found out.
#[test]
fn group_shared_repository_on_a_fresh_volume() {
    let env = Env::new();
    let volume = env.path("volume");
    fs::create_dir_all(volume.join("lost+found")).unwrap();
    let repo = volume.join("repo-root");
    fs::create_dir(&repo).unwrap();
    fs::create_dir(repo.join("lost+found")).unwrap();
    // The kubelet makes an fsGroup volume's root set-group-ID (2770).
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o2775)).unwrap();
    let term = env.path("termination-log");
    let agent = |args: &[&str]| {
        env.cmd()
            .env("CAIRN_REPOSITORY", &repo)
            .env("CAIRN_TERMINATION_LOG", &term)
            .arg("agent")
            .args(args)
            .output()
            .unwrap()
    };
    let out = agent(&[
        "init",
        "--group-access",
        "--kdf-memory-kib",
        "1024",
        "--kdf-iterations",
        "1",
    ]);
    assert_success(&out, &["agent init --group-access"]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&repo.join("config")), 0o660);
    // Set-group-ID kept: files made later by agents of other users and
    // groups still get the volume's group.
    assert_eq!(mode(&repo.join("data")), 0o2770);
    for k in fs::read_dir(repo.join("keys")).unwrap() {
        assert_eq!(mode(&k.unwrap().path()), 0o660);
    }
    // The source volume has a lost+found the agent could not read.
    let src = env.path("pvc");
    fs::create_dir_all(src.join("lost+found/#1234")).unwrap();
    fs::write(src.join("app.db"), b"rows").unwrap();
    let out = agent(&[
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--id",
        "ns/pvc",
    ]);
    assert_success(&out, &["agent backup"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files"], 1, "{r}");
    // New packs and their directories are group-writable too.
    let mut dirs = vec![repo.join("data")];
    let mut packs = 0;
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o2770, "{}", p.display());
                dirs.push(p);
            } else {
                assert_eq!(mode(&p), 0o660, "{}", p.display());
                packs += 1;
            }
        }
    }
    assert!(packs > 0);
}

/// A mistyped CA bundle is a clear error (exit 1), never the TLS layer's
/// panic on a bundle without a PEM certificate; a plain-http endpoint needs
/// no certificates at all.
#[test]
fn bad_ca_bundles_are_clear_errors() {
    let env = Env::new();
    let s3 = |c: &mut Command, location: &str| {
        c.env("CAIRN_REPOSITORY", location)
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y")
            .env("AWS_REGION", "garage")
            .env("CAIRN_S3_MAX_ATTEMPTS", "1")
            .arg("snapshots");
    };
    let junk = env.path("ca.pem");
    fs::write(&junk, b"this is not a certificate\n").unwrap();
    let mut c = env.cmd();
    c.env("CAIRN_S3_CA_BUNDLE", &junk);
    s3(&mut c, "s3:https://127.0.0.1:9/bucket");
    assert_fails(&c.output().unwrap(), 1, "holds no PEM certificate");

    fs::write(
        &junk,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut c = env.cmd();
    c.env("CAIRN_S3_CA_BUNDLE", &junk);
    s3(&mut c, "s3:https://127.0.0.1:9/bucket");
    assert_fails(&c.output().unwrap(), 1, "not PEM certificates");

    // Plain http: the error is the connection's, not about certificates.
    let mut c = env.cmd();
    s3(&mut c, "s3:http://127.0.0.1:9/bucket");
    assert_fails(&c.output().unwrap(), 1, "Connection refused");
}
