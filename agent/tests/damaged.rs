//! Damaged, stray and planted objects: each costs what it holds and is
//! named, never the whole repository; and what `init` leaves or writes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

/// Two snapshots of different data with their own index files.
fn two_backups(env: &Env) -> (String, String, Vec<PathBuf>, Vec<PathBuf>) {
    env.ok(&["init"]);
    let mut ids = Vec::new();
    let mut index_sets = Vec::new();
    for (i, name) in ["one", "two"].iter().enumerate() {
        let src = env.path(name);
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("data"), random_bytes(300_000, i as u64 + 1)).unwrap();
        let before = files_in(&env.repo().join("index"));
        let v = env.json(&["backup", src.to_str().unwrap()]);
        ids.push(v["snapshot_id"].as_str().unwrap().to_string());
        let after = files_in(&env.repo().join("index"));
        index_sets.push(after.into_iter().filter(|p| !before.contains(p)).collect());
    }
    let two = index_sets.pop().unwrap();
    let one = index_sets.pop().unwrap();
    (ids.remove(0), ids.remove(0), one, two)
}

#[test]
fn a_damaged_snapshot_costs_that_snapshot_only() {
    let env = Env::new();
    let (one, two, _, _) = two_backups(&env);
    let snap = env.repo().join("snapshots").join(&one);
    flip_byte(&snap, 3);

    let out = env.run(&["--json", "snapshots"]);
    assert_success(&out, &["snapshots"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("corrupt snapshot {one}")));
    // "latest" cannot be told while a snapshot is damaged: refused, naming it.
    let out = env.run(&[
        "restore",
        "latest",
        "--target",
        env.path("l").to_str().unwrap(),
    ]);
    assert_fails(&out, 1, &format!("snapshot {one} is damaged"));
    // Backups (which look for a parent among the snapshots) and restores of
    // the others go on.
    env.ok(&["backup", env.path("two").to_str().unwrap()]);
    env.ok(&[
        "restore",
        &two,
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    assert_same_tree(
        &env.path("two"),
        &env.path("out")
            .join(env.path("two").strip_prefix("/").unwrap()),
    );
    // Prune cannot know what the damaged snapshot refers to: it refuses,
    // naming it, and deletes nothing.
    let packs = files_in(&env.repo().join("data"));
    let out = env.run(&["prune"]);
    assert_fails(&out, 1, &format!("snapshot {one}"));
    assert_eq!(files_in(&env.repo().join("data")), packs);
    // check names it.
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        output(&out).contains(&format!("snapshot {one}")),
        "{}",
        output(&out)
    );
}

#[test]
fn a_damaged_index_file_costs_the_blobs_it_lists_only() {
    let env = Env::new();
    let (one, two, index_one, _) = two_backups(&env);
    for f in &index_one {
        flip_byte(f, 3);
    }
    let name = index_one[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The other snapshot restores; the damaged file is named.
    let out = env.run(&[
        "restore",
        &two,
        "--target",
        env.path("out2").to_str().unwrap(),
    ]);
    assert_success(&out, &["restore two"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("corrupt index {name}")));
    // The one whose blobs it listed cannot, and says why.
    let out = env.run(&[
        "restore",
        &one,
        "--target",
        env.path("out1").to_str().unwrap(),
    ]);
    assert_fails(&out, 1, "not in the index");
    // A new backup of that data stores it again and restores.
    let v = env.json(&["backup", env.path("one").to_str().unwrap()]);
    let again = v["snapshot_id"].as_str().unwrap();
    env.ok(&[
        "restore",
        again,
        "--target",
        env.path("out3").to_str().unwrap(),
    ]);
    let restored = env
        .path("out3")
        .join(env.path("one").strip_prefix("/").unwrap());
    assert_same_tree(&env.path("one"), &restored);
}

#[test]
fn stray_names_in_snapshots_and_index_are_skipped_and_checked() {
    let env = Env::new();
    let (_, two, _, index_two) = two_backups(&env);
    let snaps = env.repo().join("snapshots");
    // An S3 console's folder marker, a README, an uppercase copy.
    fs::write(snaps.join("README"), b"hello").unwrap();
    fs::copy(snaps.join(&two), snaps.join(two.to_uppercase())).unwrap();
    let upper_index = index_two[0].with_file_name(
        index_two[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_uppercase(),
    );
    fs::copy(&index_two[0], &upper_index).unwrap();

    let listed = env.json(&["snapshots"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    env.ok(&["backup", env.path("one").to_str().unwrap()]);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    env.ok(&["forget", "--keep-last", "2"]);
    env.ok(&["prune"]);
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = output(&out);
    let upper_name = upper_index
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for name in ["README".to_string(), two.to_uppercase(), upper_name] {
        assert!(
            text.contains(&format!("{name:?}: name is not an ID")),
            "{name}: {text}"
        );
    }
}

#[test]
fn an_init_killed_before_its_config_can_be_run_again() {
    let env = Env::new();
    env.ok(&["init"]);
    // What a kill between the key and the config leaves.
    fs::remove_file(env.repo().join("config")).unwrap();
    let out = env.run(&["snapshots"]);
    assert_fails(&out, 1, "cairn init");
    env.ok(&["init"]);
    // The first init's key stays (it opens no config and is skipped).
    assert_eq!(files_in(&env.repo().join("keys")).len(), 2);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"after a second init").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["check", "--read-data"]);
    // The same on a fresh ext4 volume, whose root holds lost+found.
    let volume = env.path("volume");
    fs::create_dir_all(volume.join("lost+found")).unwrap();
    let at = |c: &mut std::process::Command| {
        c.args(["-r", volume.to_str().unwrap(), "init"]);
    };
    let mut c = env.cmd();
    at(&mut c);
    assert_success(&c.output().unwrap(), &["init on a fresh volume"]);
    fs::remove_file(volume.join("config")).unwrap();
    let mut c = env.cmd();
    at(&mut c);
    assert_success(&c.output().unwrap(), &["init again after a killed one"]);
    // A directory with anything else in it is still refused.
    let other = env.path("other");
    fs::create_dir_all(other.join("keys")).unwrap();
    fs::write(other.join("notes.txt"), b"mine").unwrap();
    let out = env
        .cmd()
        .args(["-r", other.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "not empty");
}

#[test]
fn repository_files_are_readable_by_their_owner_only() {
    let env = Env::new();
    two_backups(&env);
    for p in walk(&env.repo()) {
        let mode = fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777;
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
    }
}

#[test]
fn a_key_needs_a_password() {
    let env = Env::new();
    let out = env
        .cmd()
        .env("CAIRN_PASSWORD", "")
        .args(["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
    assert!(!env.repo().join("config").exists());
}

#[test]
fn a_planted_key_that_cannot_be_derived_is_skipped() {
    let env = Env::new();
    env.ok(&["init"]);
    let key = only_file(&env.repo().join("keys"));
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&key).unwrap()).unwrap();
    // Argon2 refuses less than 8 KiB per lane: the derivation itself fails.
    json["kdf"]["memory_kib"] = 1.into();
    json["kdf"]["parallelism"] = 4.into();
    let bytes = serde_json::to_vec(&json).unwrap();
    let name = cairn::id::Id::of_stored(&bytes).to_hex();
    fs::write(key.with_file_name(&name), &bytes).unwrap();
    let out = env.run(&["snapshots"]);
    assert_success(&out, &["snapshots with a planted key"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("skipping key {name}")));
}

/// A repository with one backup of random files (size, seed) under `src`,
/// and its largest pack (the one holding their data).
fn backed_up(files: &[(usize, u64)]) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for (i, (size, seed)) in files.iter().enumerate() {
        fs::write(src.join(format!("f{i}")), random_bytes(*size, *seed)).unwrap();
    }
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let biggest = files_in(&env.repo().join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    (env, src, biggest)
}

/// A lost pack used to poison every later backup: the index still listed its
/// blobs, so backups deduplicated against them and reported success with a
/// snapshot that could not be restored. `repair index` rebuilds the index
/// from the packs, and the next backup stores the data again (which heals the
/// earlier snapshots of the same data as well).
#[test]
fn a_lost_pack_is_healed_by_repair_index_and_the_next_backup() {
    let (env, src, biggest) = backed_up(&[(400_000, 11), (300_000, 12)]);
    fs::remove_file(&biggest).unwrap();

    // Without repair, a new backup deduplicates against the lost pack.
    let v = env.json(&["backup", "--force", src.to_str().unwrap()]);
    let poisoned = v["snapshot_id"].as_str().unwrap().to_string();
    let out = env.run(&[
        "restore",
        &poisoned,
        "--target",
        env.path("p").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "restored although a pack is gone");

    // Exit 3: rebuilt, but data was lost.
    let out = env.run(&["--json", "repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["blobs_lost"].as_u64().unwrap() > 0, "{r}");
    let v = env.json(&["backup", src.to_str().unwrap()]);
    let healed = v["snapshot_id"].as_str().unwrap().to_string();
    assert!(v["summary"]["bytes_added"].as_u64().unwrap() > 0, "{v}");
    env.ok(&[
        "restore",
        &healed,
        "--target",
        env.path("h").to_str().unwrap(),
    ]);
    assert_same_tree(&src, &env.path("h").join(src.strip_prefix("/").unwrap()));
    // The data has the same blob IDs as before: the earlier snapshots are
    // whole again too.
    env.ok(&["check", "--read-data"]);
    env.ok(&[
        "restore",
        &poisoned,
        "--target",
        env.path("p2").to_str().unwrap(),
    ]);
    assert_same_tree(&src, &env.path("p2").join(src.strip_prefix("/").unwrap()));
}

/// A pack whose header is damaged still has intact blobs: `repair index`
/// keeps what the old index knew of them, so restores keep working.
#[test]
fn repair_index_keeps_the_entries_of_a_pack_whose_header_is_damaged() {
    let (env, src, biggest) = backed_up(&[(400_000, 21)]);
    // Inside the sealed header at the end of the pack.
    flip_byte(&biggest, 6);
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));
    assert!(output(&out).contains("entries in the old index are kept"));
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("r").to_str().unwrap(),
    ]);
    assert_same_tree(&src, &env.path("r").join(src.strip_prefix("/").unwrap()));
}

/// A lost pack used to be reported as "data blob X referenced by f in tree
/// T", once, whichever snapshot met it first; now check names every
/// snapshot that lost data and the paths in it, and `repair snapshots`
/// writes copies without what was lost: a damaged file keeps what is left
/// under a new name, a lost directory becomes an empty one, and nothing
/// that survived changes name (not even an entry already called
/// `NAME.repaired`).
#[test]
fn check_names_the_damaged_snapshots_and_repair_snapshots_rewrites_them() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("new")).unwrap();
    fs::write(src.join("keep/a"), random_bytes(50_000, 31)).unwrap();
    fs::write(src.join("keep/b"), b"bee").unwrap();
    fs::write(src.join("new/x.repaired"), b"I was here first").unwrap();
    env.ok(&["init"]);
    let s1 = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let first: Vec<_> = packs_by_type(&env);
    fs::write(src.join("new/x"), random_bytes(300_000, 32)).unwrap();
    let s2 = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let second: Vec<_> = packs_by_type(&env)
        .into_iter()
        .filter(|p| !first.contains(p))
        .collect();
    let (x_pack, _) = second.iter().find(|(_, t)| t == "data").unwrap();
    fs::remove_file(x_pack).unwrap();

    // check: exit 1, and S2 is named with the file it lost; S1 is whole.
    let out = env.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", output(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged_snapshots"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["snapshot"], s2.as_str());
    assert_eq!(damaged[0]["damaged_files"], 1);
    assert_eq!(damaged[0]["damaged_dirs"], 0);
    let example = damaged[0]["examples"][0].as_str().unwrap();
    assert!(example.ends_with("/src/new/x"), "{example}");
    let text = env.run(&["check"]);
    assert!(
        output(&text).contains(&format!("snapshot {} (", &s2[..8])),
        "{}",
        output(&text)
    );

    // The index still lists the lost pack: repair refuses until it is rebuilt.
    let out = env.run(&["repair", "snapshots"]);
    assert_fails(&out, 1, "run `cairn repair index` first");
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));

    // A dry run writes nothing.
    let dry = env.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(dry["repaired"].as_array().unwrap().len(), 1, "{dry}");
    assert!(dry["repaired"][0]["repaired"].is_null(), "{dry}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);

    let r = env.json(&["repair", "snapshots"]);
    assert_eq!(r["repaired"][0]["snapshot"], s2.as_str(), "{r}");
    let copy = r["repaired"][0]["repaired"].as_str().unwrap().to_string();
    let snaps = env.json(&["snapshots"]);
    let listed = snaps.as_array().unwrap();
    assert_eq!(listed.len(), 3, "the damaged snapshot stays: {snaps}");
    let c = listed.iter().find(|s| s["id"] == copy.as_str()).unwrap();
    assert!(
        c["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "repaired"),
        "{c}"
    );
    assert_eq!(c["original"], s2.as_str(), "{c}");

    let restored = env.path("r");
    env.ok(&["restore", &copy, "--target", restored.to_str().unwrap()]);
    let root = restored.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src.join("keep"), &root.join("keep"));
    assert_eq!(
        fs::read(root.join("new/x.repaired")).unwrap(),
        b"I was here first"
    );
    let x = fs::metadata(root.join("new/x.repaired-2")).unwrap();
    assert_eq!(x.len(), 0, "x lost its only blob");
    assert!(!root.join("new/x").exists());

    // Now the trees of S1 are lost too: S1 has no root left; S2 and the
    // copy lose `keep` (its tree is S1's, unchanged since).
    let (tree_pack, _) = first.iter().find(|(_, t)| t == "tree").unwrap();
    fs::remove_file(tree_pack).unwrap();
    let out = env.run(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", output(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged_snapshots"].as_array().unwrap();
    assert_eq!(damaged.len(), 3, "{report}");
    let of = |id: &str| damaged.iter().find(|d| d["snapshot"] == id).unwrap();
    assert_eq!(of(&s1)["damaged_dirs"], 1);
    assert_eq!(of(&s1)["examples"][0], "/");
    assert_eq!(of(&copy)["damaged_dirs"], 1);
    assert_eq!(of(&copy)["damaged_files"], 0);
    assert!(of(&copy)["examples"][0]
        .as_str()
        .unwrap()
        .ends_with("/src/keep"));

    // The index first (it still lists the lost packs), then the snapshots.
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3), "{}", output(&out));
    let r = env.json(&["repair", "snapshots", "--forget"]);
    assert_eq!(
        r["unrepairable"].as_array().unwrap(),
        &[serde_json::json!(s1)],
        "{r}"
    );
    assert_eq!(r["repaired"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["forgotten"], 3, "{r}");
    let out = env.run(&["check", "--read-data"]);
    assert_success(&out, &["check", "--read-data"]);
    assert!(
        output(&out).contains("no errors were found"),
        "{}",
        output(&out)
    );
    for s in env.json(&["snapshots"]).as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let t = env.path(&format!("t-{id}"));
        env.ok(&["restore", id, "--target", t.to_str().unwrap()]);
        let root = t.join(src.strip_prefix("/").unwrap());
        let keep = fs::read_dir(root.join("keep.repaired")).unwrap().count();
        assert_eq!(keep, 0, "a lost directory comes back empty");
        assert!(!root.join("keep").exists());
    }
}
