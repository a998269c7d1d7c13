//! Repository maintenance end to end: prune (two-phase, lock-free), its races
//! with running and killed backups, and many writers at once against Garage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn::backend;
use cairn::commands::backup::{self, BackupOptions};
use cairn::commands::prune::{prune, PruneOptions};
use cairn::Repository;
use common::*;

fn pack_count(env: &Env) -> usize {
    walk_files(&env.repo().join("data")).len()
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}

fn repo_bytes(env: &Env) -> u64 {
    walk_files(&env.repo())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn restore_check(env: &Env, snapshot: &str, src: &Path, target: &str) {
    let t = env.path(target);
    env.ok(&["restore", snapshot, "--target", t.to_str().unwrap()]);
    assert_same_tree(src, &t.join(src.strip_prefix("/").unwrap()));
    fs::remove_dir_all(&t).unwrap();
}

fn check_clean(env: &Env) -> serde_json::Value {
    let r = env.json(&["check", "--read-data"]);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    r
}

#[test]
fn prune_reclaims_space_repacks_and_keeps_snapshots_restorable() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Many small files share packs: deleting some leaves packs partly used.
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), random_bytes(400_000, i)).unwrap();
    }
    let s = src.to_str().unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", s]);
    for i in (0..40).step_by(2) {
        fs::remove_file(src.join(format!("f{i:02}"))).unwrap();
    }
    fs::write(src.join("new"), random_bytes(3 << 20, 99)).unwrap();
    let kept = env.json(&["backup", s])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = repo_bytes(&env);
    let packs_before = pack_count(&env);

    // A dry run changes nothing.
    let dry = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--dry-run",
        "--grace",
        "0",
    ]);
    assert_eq!(dry["removed"], 1);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    assert_eq!(repo_bytes(&env), before);

    let out = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--grace",
        "0",
        "--max-unused",
        "0%",
    ]);
    let p = &out["prune"];
    assert_eq!(out["removed"], 1);
    assert!(p["packs_repacked"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["packs_deleted"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(p["unused_bytes_kept"], 0, "{p}");
    let after = repo_bytes(&env);
    // Half of the first backup's 16 MiB is gone.
    assert!(
        after + (7 << 20) < before,
        "repository {before} -> {after} bytes"
    );
    assert!(pack_count(&env) < packs_before);
    check_clean(&env);
    restore_check(&env, &kept, &src, "r1");

    // Nothing left to do: a second prune keeps everything.
    let packs = pack_count(&env);
    let again = env.json(&["prune", "--grace", "0", "--max-unused", "0%"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert_eq!(again["packs_repacked"], 0, "{again}");
    assert_eq!(pack_count(&env), packs);
}

#[test]
fn prune_marks_first_and_deletes_only_after_the_grace_period() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(5 << 20, 1)).unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", s]);
    fs::write(src.join("a"), random_bytes(5 << 20, 2)).unwrap();
    let kept = env.json(&["backup", s])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["forget", "--keep-last", "1"]);
    let packs = pack_count(&env);

    let first = env.json(&["prune"]); // default grace: 24h
    assert!(first["packs_marked"].as_u64().unwrap() >= 2, "{first}");
    assert_eq!(first["packs_deleted"], 0);
    assert_eq!(pack_count(&env), packs, "nothing is deleted when marking");
    // Marked packs are not an error for check.
    let c = check_clean(&env);
    assert!(c["marked_packs"].as_u64().unwrap() >= 2, "{c}");
    // Backups never deduplicate against marked packs: backing up the
    // forgotten content again stores it again.
    let again = env.path("again");
    fs::create_dir_all(&again).unwrap();
    fs::write(again.join("old-a"), random_bytes(5 << 20, 1)).unwrap();
    let b = env.json(&["backup", again.to_str().unwrap()]);
    assert!(
        b["summary"]["data_blobs_added"].as_u64().unwrap() >= 2,
        "{b}"
    );

    let waiting = env.json(&["prune", "--grace", "1h"]);
    assert_eq!(waiting["packs_deleted"], 0, "{waiting}");
    assert_eq!(waiting["packs_waiting"], first["packs_marked"], "{waiting}");

    std::thread::sleep(Duration::from_millis(1100));
    let packs = pack_count(&env);
    let done = env.json(&["prune", "--grace", "1s"]);
    assert_eq!(done["packs_deleted"], first["packs_marked"], "{done}");
    let deleted = done["packs_deleted"].as_u64().unwrap() as usize;
    assert_eq!(pack_count(&env), packs - deleted);
    check_clean(&env);
    restore_check(&env, &kept, &src, "r");
}

/// A host whose clock runs two days ahead used to see every mark as two
/// days old and delete marked packs at once, whatever the grace period (and
/// one running behind made marks that a later prune aged too fast). Marks
/// are now made and aged by the storage's clock (here the kernel's file
/// times, which libfaketime does not shift), and a host whose clock is more
/// than ten minutes off refuses to prune.
#[test]
fn prune_ages_marks_by_the_storage_clock_and_refuses_a_host_whose_clock_is_off() {
    if std::process::Command::new("faketime")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_FAKETIME").is_none(),
            "faketime is not installed (scripts/test installs it)"
        );
        eprintln!("skipped: faketime is not installed");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(3 << 20, 51)).unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", s]);
    fs::write(src.join("a"), random_bytes(3 << 20, 52)).unwrap();
    env.ok(&["backup", s]);
    env.ok(&["forget", "--keep-last", "1"]);
    let first = env.json(&["prune"]);
    assert!(first["packs_marked"].as_u64().unwrap() >= 1, "{first}");
    let offset = first["storage_clock_offset_seconds"].as_i64().unwrap();
    assert!(
        offset.abs() <= 1,
        "a local disk keeps this host's time: {first}"
    );
    let packs = pack_count(&env);

    // cairn with this host's clock shifted (libfaketime; file times stay real).
    let shifted = |shift: &str, args: &[&str]| {
        std::process::Command::new("faketime")
            .env("CAIRN_REPOSITORY", &env.location)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("NO_FAKE_STAT", "1")
            .args(["-f", shift, env!("CARGO_BIN_EXE_cairn"), "--json"])
            .args(args)
            .output()
            .unwrap()
    };
    for shift in ["+2d", "-3h"] {
        let out = shifted(shift, &["prune"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shift}: {stderr}");
        assert!(
            stderr.contains("fix the clock that is wrong"),
            "{shift}: {stderr}"
        );
        assert_eq!(pack_count(&env), packs, "{shift}: a pack was deleted");
    }
    // A small offset is tolerated, and marks stay young by the storage's clock.
    let out = shifted("+5m", &["prune", "--grace", "1h"]);
    assert_success(&out, &["prune", "with the clock 5 min ahead"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert_eq!(r["packs_waiting"], first["packs_marked"], "{r}");
    assert_eq!(pack_count(&env), packs);
}

#[test]
fn prune_removes_temporary_files_of_killed_writers_after_the_grace_period() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(300_000, 3)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    // A pack staged by a backup killed two days ago, and one being written now.
    let old = env.repo().join("data/.tmp-00000000000000aa");
    fs::write(&old, vec![7u8; 1000]).unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    filetime::set_file_mtime(&old, filetime::FileTime::from_system_time(two_days_ago)).unwrap();
    let fresh = env.repo().join("index/.tmp-00000000000000bb");
    fs::write(&fresh, b"in progress").unwrap();

    let dry = env.json(&["prune", "--dry-run"]);
    assert_eq!(dry["temporaries_removed"], 0, "{dry}");
    assert!(old.exists());
    let r = env.json(&["prune"]); // default grace: 24h
    assert_eq!(r["temporaries_removed"], 1, "{r}");
    assert_eq!(r["temporary_bytes_removed"], 1000, "{r}");
    assert!(!old.exists(), "stale temporary file left");
    assert!(
        fresh.exists(),
        "a file younger than the grace period was removed"
    );
    check_clean(&env);
}

#[test]
fn prune_recovers_marked_packs_that_a_racing_backup_used() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data"), random_bytes(6 << 20, 7)).unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", s]);
    env.ok(&["forget", "--keep-last", "1"]); // keeps it
    let only = env.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A backup process opens the repository and loads the index...
    let racing =
        Repository::open(backend::open(&env.location).unwrap(), PASSWORD.as_bytes()).unwrap();
    let racing = racing.load_index().unwrap();
    // ...then the only snapshot is forgotten and prune marks every pack.
    env.ok(&["forget", "--keep-tag", "none-such"]);
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        0,
        "{only}"
    );
    let marked = env.json(&["prune"]);
    assert!(marked["packs_marked"].as_u64().unwrap() >= 2, "{marked}");

    // The racing backup deduplicates against what it loaded before the mark
    // and writes a snapshot that needs the marked packs.
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    let r = backup::backup(&racing, &opts).unwrap();
    assert_eq!(r.snapshot.summary.data_blobs_added, 0, "deduplicated");

    // Even with grace 0, prune sees the racing snapshot and recovers its packs.
    let repo =
        Repository::open(backend::open(&env.location).unwrap(), PASSWORD.as_bytes()).unwrap();
    let rep = prune(
        &repo,
        &PruneOptions {
            grace: Duration::ZERO,
            max_unused_percent: 100.0,
            dry_run: false,
        },
    )
    .unwrap();
    assert!(rep.packs_recovered >= 2, "{rep:?}");
    check_clean(&env);
    let id = r.snapshot_id.to_hex();
    restore_check(&env, &id, &src, "r");
}

#[test]
fn prune_refuses_when_a_snapshot_needs_unindexed_data() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(1 << 20, 3)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    for f in walk_files(&env.repo().join("index")) {
        fs::remove_file(f).unwrap();
    }
    let packs = pack_count(&env);
    let out = env.run(&["prune", "--grace", "0"]);
    assert_fails(&out, 1, "in no index");
    assert_fails(&out, 1, "before deleting anything");
    assert_eq!(pack_count(&env), packs);
}

/// Start `cairn backup` and SIGKILL it once it has uploaded a pack, while a
/// prune loop runs; then back up again with the loop still running, verify,
/// and clean up the debris.
#[test]
fn killed_backup_and_racing_prune() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("big{i}")), random_bytes(12 << 20, 100 + i)).unwrap();
    }
    let s = src.to_str().unwrap().to_string();
    env.ok(&["init"]);

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let pruner = scope.spawn(|| {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let out = env.run(&["--json", "prune", "--grace", "1h"]);
                assert_success(&out, &["prune"]);
                runs += 1;
            }
            runs
        });

        let mut child = env
            .cmd()
            .args(["backup", &s, "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while pack_count(&env) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no pack uploaded");
            if let Some(st) = child.try_wait().unwrap() {
                panic!("backup ended before it could be killed: {st:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);

        let second = env.json(&["backup", &s]);
        assert!(second["summary"]["bytes_stored"].as_u64().unwrap() > 0);
        stop.store(true, Ordering::Relaxed);
        assert!(pruner.join().unwrap() >= 1);
    });

    check_clean(&env);
    restore_check(&env, "latest", &src, "r1");
    // With no backup running, grace 0 removes the killed backup's debris.
    let p = env.json(&["prune", "--grace", "0"]);
    assert!(p["packs_deleted"].as_u64().unwrap() >= 2, "{p}");
    let c = check_clean(&env);
    assert_eq!(c["unreferenced_packs"], 0, "{c}");
    assert_eq!(c["marked_packs"], 0, "{c}");
    restore_check(&env, "latest", &src, "r2");
}

// ---- many writers against Garage ----

const WRITERS: usize = 8;
/// Each writer backs up at least this many rounds, and keeps going until the
/// prune loop has deleted packs while backups run (or a time limit).
const MIN_ROUNDS: usize = 4;
const GRACE_SECS: u64 = 20;

/// Write round `r` of writer `w` into `dir`: four shared 1.5 MiB files (one of
/// them new each round, the same for every writer) and one file of its own.
fn write_round(dir: &Path, w: usize, r: usize) {
    fs::create_dir_all(dir).unwrap();
    let stamp = |p: &Path, round: usize| {
        let t = filetime::FileTime::from_unix_time(1_700_000_000 + round as i64, 0);
        filetime::set_file_times(p, t, t).unwrap();
    };
    for b in 0..4 {
        let p = dir.join(format!("shared{b}"));
        // shared{b} last changed in the latest round ≡ b (mod 4), or round 0.
        let last = (0..=r).rev().find(|x| x % 4 == b).unwrap_or(0);
        if r == 0 || last == r {
            fs::write(&p, random_bytes(3 << 19, 1000 + last as u64)).unwrap();
            stamp(&p, last);
        }
    }
    let own = dir.join("own");
    fs::write(&own, random_bytes(1 << 20, (w * 100 + r) as u64)).unwrap();
    stamp(&own, r);
}

#[test]
fn many_writers_and_a_prune_loop_on_garage() {
    let Some(env) = Env::garage("stress") else {
        return;
    };
    env.ok(&["init"]);
    let grace = format!("{GRACE_SECS}s");
    let stop = AtomicBool::new(false);
    let loop_deleted = std::sync::atomic::AtomicU64::new(0);
    let (mut marked, mut deleted) = (0u64, 0u64);
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let pruner = scope.spawn(|| {
            let (mut marked, mut deleted, mut runs) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = env.json(&[
                    "forget",
                    "--keep-last",
                    "2",
                    "--group-by",
                    "host",
                    "--prune",
                    "--grace",
                    &grace,
                ]);
                marked += out["prune"]["packs_marked"].as_u64().unwrap();
                deleted += out["prune"]["packs_deleted"].as_u64().unwrap();
                loop_deleted.store(deleted, Ordering::Relaxed);
                eprintln!(
                    "stress: forget+prune took {:.1?}: {}",
                    t.elapsed(),
                    out["prune"]
                );
                runs += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            (marked, deleted, runs)
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (env, loop_deleted) = (&env, &loop_deleted);
                scope.spawn(move || {
                    let dir = env.path(&format!("w{w}"));
                    let mut longest = Duration::ZERO;
                    let more = |r: usize| {
                        r < MIN_ROUNDS
                            || (loop_deleted.load(Ordering::Relaxed) == 0
                                && started.elapsed() < Duration::from_secs(180))
                    };
                    let mut r = 0;
                    while more(r) {
                        write_round(&dir, w, r);
                        let t = Instant::now();
                        env.ok(&[
                            "backup",
                            dir.to_str().unwrap(),
                            "--host",
                            &format!("writer{w}"),
                            "--tag",
                            &format!("round{r}"),
                        ]);
                        longest = longest.max(t.elapsed());
                        r += 1;
                    }
                    longest
                })
            })
            .collect();
        for h in writers {
            longest = longest.max(h.join().unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let (m, d, runs) = pruner.join().unwrap();
        eprintln!("stress: the forget+prune loop ran {runs} times and deleted {d} packs while the writers ran");
        assert!(
            d > 0,
            "the prune loop deleted nothing while backups ran ({runs} runs)"
        );
        (marked, deleted) = (m, d);
    });
    // The safety assumption of prune: no backup runs longer than the grace period.
    assert!(
        longest < Duration::from_secs(GRACE_SECS),
        "a backup took {longest:?}, longer than the grace period: the test's premise fails"
    );

    // Apply the policy to the last round, let the marks age, then prune once
    // more: the debris goes.
    env.ok(&["forget", "--keep-last", "2", "--group-by", "host"]);
    env.ok(&["prune", "--grace", &grace, "--max-unused", "0%"]);
    std::thread::sleep(Duration::from_secs(GRACE_SECS + 1));
    let last = env.json(&["prune", "--grace", &grace, "--max-unused", "0%"]);
    deleted += last["packs_deleted"].as_u64().unwrap();
    assert!(
        marked > 0 && deleted > 0,
        "marked {marked}, deleted {deleted}"
    );

    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["problems"], serde_json::json!([]), "{c}");
    // Two snapshots per writer survive, and each restores byte for byte.
    let snaps = env.json(&["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), WRITERS * 2);
    let expected = env.path("expected");
    for s in snaps {
        let host = s["hostname"].as_str().unwrap();
        let w: usize = host.trim_start_matches("writer").parse().unwrap();
        let tag = s["tags"][0].as_str().unwrap();
        let r: usize = tag.trim_start_matches("round").parse().unwrap();
        assert!(r >= MIN_ROUNDS - 2, "{host} kept {tag}");
        let _ = fs::remove_dir_all(&expected);
        for round in 0..=r {
            write_round(&expected, w, round);
        }
        let target = env.path("restored");
        env.ok(&[
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ]);
        let src = env.path(&format!("w{w}"));
        let got = target.join(src.strip_prefix("/").unwrap());
        assert_same_tree(&expected, &got);
        fs::remove_dir_all(&target).unwrap();
    }
    // Writers deduplicated against each other, and prune removed the copies
    // that concurrent first uploads made: storage holds each needed blob once.
    let stats = env.json(&["stats"]);
    let (stored, unique) = (
        stats["stored_size"].as_u64().unwrap(),
        stats["unique_size"].as_u64().unwrap(),
    );
    assert!(stored < unique + unique / 50, "{stats}");
    eprintln!(
        "stress: marked {marked}, deleted {deleted}, longest backup {longest:?}, stats {stats}"
    );
}

// ---- copy ----

const TARGET_PASSWORD: &str = "another password";

fn init_target(target: &Env, extra: &[(&str, &str)], args: &[&str]) {
    let mut c = target.cmd();
    c.env("CAIRN_PASSWORD", TARGET_PASSWORD);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"]);
    c.args(args);
    assert_success(&c.output().unwrap(), &["init target"]);
}

fn copy_to(src: &Env, target: &Env, args: &[&str]) -> serde_json::Value {
    let mut c = src.cmd();
    c.env("CAIRN_TO_PASSWORD", TARGET_PASSWORD);
    for (k, v) in &target.vars {
        c.env(k, v);
    }
    c.args(["--json", "copy", "--to", &target.location]);
    c.args(args);
    let out = c.output().unwrap();
    assert_success(&out, &["copy"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Run cairn on the target with its password.
fn on_target(target: &Env, args: &[&str]) -> serde_json::Value {
    let mut c = target.cmd();
    c.env("CAIRN_PASSWORD", TARGET_PASSWORD)
        .arg("--json")
        .args(args);
    let out = c.output().unwrap();
    assert_success(&out, args);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn copy_suite(src: &Env, target: &Env, shared_ids: bool) {
    let data = src.path("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    for i in 0..6 {
        fs::write(data.join(format!("f{i}")), random_bytes(1 << 20, 500 + i)).unwrap();
    }
    fs::write(data.join("sub/text"), "line\n".repeat(10_000)).unwrap();
    let d = data.to_str().unwrap();
    src.ok(&["init"]);
    src.ok(&["backup", d, "--tag", "one"]);
    if shared_ids {
        let mut extra = vec![("CAIRN_FROM_PASSWORD", PASSWORD)];
        extra.extend(src.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        init_target(target, &extra, &["--from-repo", &src.location]);
    } else {
        init_target(target, &[], &[]);
    }

    let first = copy_to(src, target, &[]);
    assert_eq!(first["copied"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["same_blob_ids"], shared_ids);
    let stored_first = first["blobs_stored"].as_u64().unwrap();
    assert!(stored_first >= 7, "{first}");

    // Again: nothing to do.
    let again = copy_to(src, target, &[]);
    assert_eq!(again["copied"], serde_json::json!([]), "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 1);
    assert_eq!(again["blobs_read"], 0);

    // A new snapshot with one changed file: only its new blobs are stored, and
    // with shared IDs only they (and the snapshot's trees) are read.
    fs::write(data.join("f0"), random_bytes(1 << 20, 999)).unwrap();
    src.ok(&["backup", d, "--tag", "two"]);
    let third = copy_to(src, target, &["latest"]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1, "{third}");
    let stored = third["blobs_stored"].as_u64().unwrap();
    let read = third["blobs_read"].as_u64().unwrap();
    // About the 1 MiB of the changed file, of the 6 MiB the first copy stored.
    let (bytes_first, bytes_third) = (
        first["bytes_stored"].as_u64().unwrap(),
        third["bytes_stored"].as_u64().unwrap(),
    );
    assert!(bytes_third * 3 < bytes_first, "{first}\n{third}");
    if shared_ids {
        // Of the data, only the new chunks of f0 (every tree is read: a
        // copy, like a backup, never trusts a subtree the target has).
        let trees = third["trees_read"].as_u64().unwrap();
        assert!(trees >= 2 && read - trees <= stored, "{third}");
    } else {
        // Every blob of the snapshot (chunk counts vary with the random
        // chunker key, so compare loosely): far more than it stores.
        assert!(
            read >= stored + 6 && read * 2 > stored_first,
            "{first}\n{third}"
        );
    }

    // The target verifies and restores byte for byte.
    let c = on_target(target, &["check", "--read-data"]);
    assert_eq!(c["problems"], serde_json::json!([]), "{c}");
    let snaps = on_target(target, &["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    assert_eq!(snaps[1]["tags"], serde_json::json!(["two"]));
    let out = src.path("from-target");
    let mut c = target.cmd();
    c.env("CAIRN_PASSWORD", TARGET_PASSWORD).args([
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_success(&c.output().unwrap(), &["restore from target"]);
    assert_same_tree(&data, &out.join(data.strip_prefix("/").unwrap()));

    // A wrong target password is a clear error.
    let mut c = src.cmd();
    c.env("CAIRN_TO_PASSWORD", "wrong")
        .args(["copy", "--to", &target.location]);
    for (k, v) in &target.vars {
        c.env(k, v);
    }
    assert_fails(&c.output().unwrap(), 1, "wrong password");
}

#[test]
fn copy_to_a_repository_with_other_keys() {
    let (src, target) = (Env::new(), Env::new());
    copy_suite(&src, &target, false);
}

#[test]
fn copy_local_to_garage_with_shared_blob_ids() {
    let Some(target) = Env::garage("copy-target") else {
        return;
    };
    copy_suite(&Env::new(), &target, true);
}

/// Copies into a target while a forget + prune loop with a short grace
/// period (still longer than a copy) marks and deletes there (FORMAT.md §12:
/// a copy, like a backup, must never depend on data only in marked packs).
/// Every snapshot left on the target must verify and restore. The exact
/// interleaving that broke the old copy is `copy::tests::a_copy_never_depends_on_data_only_in_marked_packs`.
#[test]
fn copy_racing_a_prune_loop_on_the_target() {
    let (src, target) = (Env::new(), Env::new());
    src.ok(&["init"]);
    let mut extra = vec![("CAIRN_FROM_PASSWORD", PASSWORD)];
    extra.extend(src.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    init_target(&target, &extra, &["--from-repo", &src.location]);
    let data = src.path("data");
    let d = data.to_str().unwrap().to_string();

    let stop = AtomicBool::new(false);
    let deleted = AtomicU64::new(0);
    let prunes = std::thread::scope(|scope| {
        let pruner = scope.spawn(|| {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) {
                on_target(&target, &["forget", "--keep-last", "2"]);
                // Longer than any copy here takes (the safety assumption).
                let p = on_target(&target, &["prune", "--grace", "10s"]);
                let n = p["packs_deleted"].as_u64().unwrap_or(0);
                deleted.fetch_add(n, Ordering::Relaxed);
                runs += 1;
            }
            runs
        });
        let t0 = Instant::now();
        for r in 0.. {
            write_round(&data, 0, r);
            src.ok(&["backup", &d]);
            copy_to(&src, &target, &["latest"]);
            // Enough rounds for the prune loop to have deleted while copies ran.
            let pruned = deleted.load(Ordering::Relaxed) > 0;
            if r >= 8 && (pruned || t0.elapsed() > Duration::from_secs(90)) {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        pruner.join().unwrap()
    });
    let deleted = deleted.into_inner();
    assert!(
        prunes >= 2 && deleted > 0,
        "{prunes} prunes deleted {deleted} packs"
    );

    let c = on_target(&target, &["check", "--read-data"]);
    assert_eq!(c["problems"], serde_json::json!([]), "{c}");
    let snaps = on_target(&target, &["snapshots"]);
    for s in snaps.as_array().unwrap() {
        let out = target.path(&format!("r-{}", &s["id"].as_str().unwrap()[..8]));
        let mut c = target.cmd();
        c.env("CAIRN_PASSWORD", TARGET_PASSWORD).args([
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            out.to_str().unwrap(),
        ]);
        assert_success(&c.output().unwrap(), &["restore from target"]);
    }
    let latest = target.path("latest");
    let mut c = target.cmd();
    c.env("CAIRN_PASSWORD", TARGET_PASSWORD).args([
        "restore",
        "latest",
        "--target",
        latest.to_str().unwrap(),
    ]);
    assert_success(&c.output().unwrap(), &["restore latest from target"]);
    assert_same_tree(&data, &latest.join(data.strip_prefix("/").unwrap()));
}

/// SIGTERM (what Kubernetes sends a Job past its deadline) stops a backup
/// cleanly: no snapshot, a clear error, and every pack it uploaded indexed,
/// so the next backup uploads only the rest.
#[test]
fn an_interrupted_backup_indexes_its_uploads_and_the_next_reuses_them() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let total: u64 = 12 * (12 << 20);
    for i in 0..12 {
        fs::write(src.join(format!("big{i}")), random_bytes(12 << 20, 300 + i)).unwrap();
    }
    let s = src.to_str().unwrap().to_string();
    env.ok(&["init"]);
    let child = env
        .cmd()
        .args(["backup", &s, "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while pack_count(&env) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no pack uploaded");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0);

    let uploaded = pack_count(&env) as u64;
    // Packs closed at the signal (or by the index timer) hold less than a
    // full pack: count the bytes they hold, not a pack size.
    let uploaded_bytes: u64 = walk_files(&env.repo().join("data"))
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let c = env.json(&["check"]);
    assert_eq!(
        c["unreferenced_packs"], 0,
        "every uploaded pack is indexed: {c}"
    );
    let second = env.json(&["backup", &s]);
    let stored = second["summary"]["bytes_stored"].as_u64().unwrap();
    // The data is random (stored as is): what the interrupted run uploaded
    // is not stored again. The slack covers trees, headers and the chunk
    // that straddles an upload.
    assert!(uploaded_bytes > 3 * (15 << 20), "{uploaded_bytes}");
    assert!(
        stored + uploaded_bytes <= total + (2 << 20),
        "{uploaded} packs ({uploaded_bytes} bytes) were uploaded before the signal, yet the next backup stored {stored} of {total} bytes"
    );
    check_clean(&env);
    restore_check(&env, "latest", &src, "r");
}
