//! The same end-to-end suite against a local repository and against a real
//! S3 server (Garage on 127.0.0.1), plus S3-only failure cases: a missing
//! bucket, a wrong secret key, multipart uploads, and injected faults.

mod common;

use std::fs;
use std::path::Path;

use common::faultproxy::{FaultProxy, Faults};
use common::*;

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("db")).unwrap();
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("db/data.bin"), random_bytes(9 << 20, 1)).unwrap();
    fs::write(root.join("db/log.txt"), "row,value\n".repeat(200_000)).unwrap();
    fs::write(root.join("etc/conf.d/app.conf"), b"key = value\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("db/log.txt", root.join("log")).unwrap();
}

fn restored(env: &Env, target: &str, src: &Path) -> std::path::PathBuf {
    env.path(target).join(src.strip_prefix("/").unwrap())
}

/// Restore the latest snapshot into `out` and compare it with `src`.
fn restore_and_verify(env: &Env, src: &Path) {
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    assert_same_tree(src, &restored(env, "out", src));
}

/// init, backup, unchanged backup, changed backup, restore with verification, wrong password.
fn suite(env: &Env) {
    let src = env.path("src");
    make_tree(&src);
    let s = src.to_str().unwrap();
    env.ok(&["init"]);
    let first = env.json(&["backup", s]);
    assert!(first["summary"]["bytes_stored"].as_u64().unwrap() > 0);
    let second = env.json(&["backup", s]);
    assert_eq!(second["summary"]["bytes_read"], 0);
    assert_eq!(second["summary"]["data_blobs_added"], 0);
    fs::write(src.join("etc/conf.d/app.conf"), b"key = other value\n").unwrap();
    let third = env.json(&["backup", s]);
    assert_eq!(third["summary"]["files_changed"], 1);
    assert_eq!(third["summary"]["data_blobs_added"], 1);

    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    restore_and_verify(env, &src);

    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "wrong")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "wrong password");
    let out = env.run(&["init"]);
    assert_fails(&out, 1, "already exists");
}

#[test]
fn suite_on_local_repository() {
    suite(&Env::new());
}

#[test]
fn suite_on_garage() {
    let Some(env) = Env::garage("suite") else {
        return;
    };
    suite(&env);
}

#[test]
fn missing_bucket_and_wrong_secret_are_clear_errors() {
    let Some(g) = garage::garage() else { return };
    let mut env = Env::garage("errors").unwrap();
    env.location = format!("s3:{}/no-such-bucket/x", g.endpoint);
    let out = env.run(&["init"]);
    assert_fails(&out, 1, "bucket \"no-such-bucket\" does not exist");
    let out = env.run(&["snapshots"]);
    assert_fails(&out, 1, "no-such-bucket");

    let env = Env::garage("errors").unwrap();
    env.ok(&["init"]);
    let out = env
        .cmd()
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "access denied");
    assert_fails(&out, 1, &g.bucket);
    let out = env
        .cmd()
        .env("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "access denied");
    let out = env
        .cmd()
        .env("AWS_REGION", "us-east-1")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "wrong region for bucket");

    // an endpoint where nothing listens fails after the retry budget, with the endpoint named
    let mut env = Env::garage("errors").unwrap();
    env.location = format!(
        "s3:http://127.0.0.1:{}/{}/x",
        free_port_for_test(),
        g.bucket
    );
    let out = env
        .cmd()
        .env("CAIRN_S3_MAX_ATTEMPTS", "2")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dispatch failure") || stderr.contains("connect"),
        "{stderr}"
    );
}

fn free_port_for_test() -> u16 {
    garage::free_port()
}

#[test]
fn multipart_uploads_round_trip() {
    let Some(mut env) = Env::garage("multipart") else {
        return;
    };
    // 1 MiB parts for packs over 2 MiB: every data pack goes up in several parts.
    env.vars
        .push(("CAIRN_S3_MULTIPART_THRESHOLD".into(), (2 << 20).to_string()));
    env.vars
        .push(("CAIRN_S3_PART_SIZE".into(), (1 << 20).to_string()));
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), random_bytes(40 << 20, 7)).unwrap();
    env.ok(&["init"]);
    let out = env.json(&["backup", src.to_str().unwrap()]);
    assert!(out["summary"]["bytes_stored"].as_u64().unwrap() > 40 << 20);
    restore_and_verify(&env, &src);
}

#[test]
fn backups_survive_injected_faults() {
    let Some(g) = garage::garage() else { return };
    let proxy = FaultProxy::start(
        g.s3_port,
        Faults {
            every_503: 4,
            every_reset: 5,
            every_stall: 7,
            stall: std::time::Duration::from_secs(3),
            every_cut: 2,
            cut_after_bytes: 3 << 20,
            ..Faults::default()
        },
    );
    let mut env = Env::garage("faults").unwrap();
    let prefix = env.location.rsplit('/').next().unwrap().to_string();
    env.location = format!("s3:http://127.0.0.1:{}/{}/{prefix}", proxy.port, g.bucket);
    env.vars
        .push(("CAIRN_S3_ATTEMPT_TIMEOUT".into(), "1.5".into()));
    env.vars.push(("CAIRN_S3_MAX_ATTEMPTS".into(), "10".into()));
    let src = env.path("src");
    make_tree(&src);
    fs::write(src.join("more.bin"), random_bytes(30 << 20, 3)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    restore_and_verify(&env, &src);
    let c = &proxy.counts;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "faults injected: {} connections, {} 503s, {} resets, {} stalls, {} cuts",
        c.connections.load(Relaxed),
        c.slowdowns.load(Relaxed),
        c.resets.load(Relaxed),
        c.stalls.load(Relaxed),
        c.cuts.load(Relaxed)
    );
    assert!(
        c.slowdowns.load(Relaxed) > 0 && c.resets.load(Relaxed) > 0 && c.stalls.load(Relaxed) > 0
    );
    assert!(c.cuts.load(Relaxed) > 0, "no transfer was cut");
}

#[test]
fn persistent_faults_fail_cleanly_after_the_retry_budget() {
    let Some(g) = garage::garage() else { return };
    let env = Env::garage("persistent").unwrap();
    env.ok(&["init"]);
    let src = env.path("src");
    make_tree(&src);
    let proxy = FaultProxy::start(
        g.s3_port,
        Faults {
            always_503: true,
            ..Faults::default()
        },
    );
    let prefix = env.location.rsplit('/').next().unwrap().to_string();
    let mut bad = Env::garage("persistent").unwrap();
    bad.location = format!("s3:http://127.0.0.1:{}/{}/{prefix}", proxy.port, g.bucket);
    let out = bad
        .cmd()
        .env("CAIRN_S3_MAX_ATTEMPTS", "3")
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_fails(&out, 1, "503");
    // nothing was written: the repository (reached directly) has no snapshot
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);
}

fn count_lines(out: &std::process::Output, needle: &str) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn metadata_cache_saves_downloads_and_never_changes_results() {
    let Some(mut env) = Env::garage("cache") else {
        return;
    };
    let cache = env.path("cache");
    env.vars.push((
        "CAIRN_CACHE_DIR".into(),
        cache.to_string_lossy().into_owned(),
    ));
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let listing = env.ok(&["ls", "latest"]);

    // Written snapshot and index files are cached; tree packs are cached on first read.
    let debug = |args: &[&str]| {
        env.cmd()
            .env("CAIRN_LOG", "cairn=debug")
            .args(args)
            .output()
            .unwrap()
    };
    let out = debug(&["ls", "latest"]);
    assert_success(&out, &["ls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
    assert_eq!(
        count_lines(&out, "cache miss"),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(count_lines(&out, "cache hit: index") >= 1);
    assert!(count_lines(&out, "cache hit: snapshot") >= 1);
    assert!(count_lines(&out, "cache hit: pack") >= 1);

    // An incremental backup reads index, parent snapshot and trees from the cache.
    let out = debug(&["backup", src.to_str().unwrap()]);
    assert_success(&out, &["backup"]);
    assert_eq!(
        count_lines(&out, "cache miss"),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged cache file is detected, dropped and fetched again: same result.
    let index_dir = walk_files(&cache)
        .into_iter()
        .find(|p| p.parent().is_some_and(|d| d.ends_with("index")))
        .unwrap();
    let mut bytes = fs::read(&index_dir).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&index_dir, bytes).unwrap();
    let out = debug(&["ls", "latest"]);
    assert_success(&out, &["ls with damaged cache"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
    assert!(count_lines(&out, "discarding damaged cache file") >= 1);

    // A deleted cache changes nothing either.
    fs::remove_dir_all(&cache).unwrap();
    assert_eq!(env.ok(&["ls", "latest"]), listing);
    // And without any cache at all.
    let out = env
        .cmd()
        .env("CAIRN_NO_CACHE", "1")
        .args(["ls", "latest"])
        .output()
        .unwrap();
    assert_success(&out, &["ls without cache"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), listing);
}

fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.push(p);
        }
    }
    out
}
