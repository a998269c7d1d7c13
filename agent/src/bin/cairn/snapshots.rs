//! The commands over snapshots and their contents: backup, snapshots, ls,
//! diff, restore, stats and cat.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use serde_json::json;

use cairn::backend::FileKind;
use cairn::blob::BlobType;
use cairn::commands::backup::{self, BackupOptions, ChangeDetection, ParentChoice};
use cairn::commands::diff::diff_trees;
use cairn::commands::restore::{self, RestoreOptions};
use cairn::pack;
use cairn::snapshot::Snapshot;
use cairn::{Error, Id};

use crate::access::open_repo;
use crate::args::{BackupArgs, LsArgs, RestoreArgs, SnapshotsArgs};
use crate::output::{human_bytes, mode_string, print_json, snapshot_json};
use crate::Cli;

/// `cairn backup`.
pub fn backup(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    cairn::interrupt::install()?;
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let parent = match (&args.parent, args.force) {
        (_, true) => ParentChoice::None,
        (Some(p), _) => ParentChoice::Snapshot(repo.find_snapshot(p)?.0),
        (None, false) => ParentChoice::Latest,
    };
    let change_detection = if args.ignore_inode {
        ChangeDetection::IgnoreInode
    } else if args.ignore_ctime {
        ChangeDetection::IgnoreCtime
    } else {
        ChangeDetection::Strict
    };
    let opts = BackupOptions {
        paths: args.paths.clone(),
        tags: args.tags.clone(),
        hostname: args.host.clone(),
        excludes: args.excludes.clone(),
        parent,
        change_detection,
        threads: args.threads,
    };
    let result = backup::backup(&repo, &opts)?;
    for e in &result.errors {
        eprintln!("cairn: warning: {}: {}", e.path.display(), e.message);
    }
    let s = &result.snapshot.summary;
    if cli.json {
        print_json(&json!({
            "snapshot_id": result.snapshot_id,
            "parent": result.snapshot.parent,
            "summary": s,
            "errors": result.errors,
        }))?;
    } else {
        if let Some(p) = result.snapshot.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!(
            "Files:       {:>8} new, {:>8} changed, {:>8} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Dirs:        {:>8} new, {:>8} changed, {:>8} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        );
        println!(
            "Read {} of {} in {} files; added {} to the repository ({} stored)",
            human_bytes(s.bytes_read),
            human_bytes(s.total_bytes),
            s.total_files,
            human_bytes(s.bytes_added),
            human_bytes(s.bytes_stored)
        );
        println!("Duration:    {:.2} s", s.duration_seconds);
        println!("snapshot {} saved", result.snapshot_id.short());
    }
    if result.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "cairn: {} source entries could not be read; the snapshot was saved without them",
            result.errors.len()
        );
        Ok(ExitCode::from(3))
    }
}

/// `cairn snapshots`.
pub fn list(cli: &Cli, args: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let snaps: Vec<(Id, Snapshot)> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| args.host.as_ref().is_none_or(|h| &s.hostname == h))
        .filter(|(_, s)| args.tags.iter().all(|t| s.tags.contains(t)))
        .filter(|(_, s)| args.path.as_ref().is_none_or(|p| s.paths.contains(p)))
        .collect();
    if cli.json {
        print_json(
            &snaps
                .iter()
                .map(|(id, s)| snapshot_json(id, s))
                .collect::<Vec<_>>(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    );
    for (id, s) in &snaps {
        println!(
            "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  {}",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            s.tags.join(","),
            human_bytes(s.summary.total_bytes),
            s.paths.join(" ")
        );
    }
    println!("{} snapshots", snaps.len());
    Ok(ExitCode::SUCCESS)
}

/// `cairn ls`.
pub fn ls(cli: &Cli, args: &LsArgs) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let (_, snap) = repo.find_snapshot(&args.snapshot)?;
    let dir = args.path.as_deref().unwrap_or("/");
    let mut entries = Vec::new();
    let mut out = std::io::stdout().lock();
    cairn::commands::ls::ls(&repo, &snap.tree, dir, &mut |path, node| {
        if cli.json {
            entries.push(json!({
                "path": path.to_string_lossy(),
                "type": node.node_type,
                "mode": node.mode,
                "uid": node.uid,
                "gid": node.gid,
                "size": node.size,
                "mtime_ns": node.mtime_ns,
            }));
        } else if args.long {
            let t =
                chrono::DateTime::from_timestamp_nanos(node.mtime_ns).with_timezone(&chrono::Local);
            let _ = writeln!(
                out,
                "{} {:>6} {:>6} {:>12} {} {}",
                mode_string(node),
                node.uid,
                node.gid,
                node.size,
                t.format("%Y-%m-%d %H:%M:%S"),
                path.display()
            );
        } else {
            let _ = writeln!(out, "{}", path.display());
        }
        Ok(())
    })?;
    if cli.json {
        print_json(&entries)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn diff FIRST SECOND`.
pub fn diff(cli: &Cli, first: &str, second: &str) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let (ia, a) = repo.find_snapshot(first)?;
    let (ib, b) = repo.find_snapshot(second)?;
    let mut out = Vec::new();
    diff_trees(&repo, &a.tree, &b.tree, std::path::Path::new("/"), &mut out)?;
    if cli.json {
        print_json(&json!({"first": ia, "second": ib, "changes": out}))?;
    } else {
        println!("comparing snapshot {} to {}:", ia.short(), ib.short());
        for d in &out {
            println!("{}    {}", d.change.code(), d.path.display());
        }
        let count = |c| out.iter().filter(|d| d.change == c).count();
        use cairn::commands::diff::Change;
        println!(
            "\n{} added, {} removed, {} modified, {} metadata only",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Modified),
            count(Change::Metadata)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn restore`.
pub fn restore(cli: &Cli, args: &RestoreArgs) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let (spec, subpath) = match args.snapshot.split_once(':') {
        Some((s, p)) => (s, Some(p.to_string())),
        None => (args.snapshot.as_str(), None),
    };
    let (id, snap) = repo.find_snapshot(spec)?;
    let opts = RestoreOptions {
        target: args.target.clone(),
        subpath,
        includes: args.includes.clone(),
        owner: if args.no_owner { Some(false) } else { None },
        threads: args.threads,
        strip_setid: args.no_setid,
        skip_devices: args.no_devices,
    };
    let started = std::time::Instant::now();
    let summary = restore::restore(&repo, &snap.tree, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    for e in &summary.errors {
        eprintln!("cairn: error: {}: {}", e.path.display(), e.message);
    }
    if cli.json {
        print_json(&json!({"snapshot_id": id, "summary": summary, "duration_seconds": secs}))?;
    } else {
        println!(
            "restored snapshot {} to {}: {} files, {} directories, {} other entries, {} in {:.2} s",
            id.short(),
            args.target.display(),
            summary.files,
            summary.dirs,
            summary.others,
            human_bytes(summary.bytes),
            secs
        );
    }
    if summary.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "cairn: restore incomplete: {} entries failed",
            summary.errors.len()
        );
        Ok(ExitCode::from(1))
    }
}

/// `cairn cat KIND [ID]`.
pub fn cat(cli: &Cli, kind: &str, id: Option<&str>) -> Result<ExitCode> {
    let need_id = || id.ok_or_else(|| anyhow!("`cairn cat {kind}` needs an ID"));
    let repo = open_repo(cli)?;
    let bytes = match kind {
        "config" => repo.cat_file(FileKind::Config, "")?,
        "key" => repo.cat_file(FileKind::Key, &repo.resolve_key(need_id()?)?)?,
        "snapshot" => {
            let sid = repo.find_snapshot(need_id()?)?.0;
            repo.cat_file(FileKind::Snapshot, &sid.to_hex())?
        }
        "index" => {
            let iid = repo.resolve(FileKind::Index, need_id()?)?;
            repo.cat_file(FileKind::Index, &iid.to_hex())?
        }
        "pack" => {
            let pid = repo.resolve(FileKind::Pack, need_id()?)?;
            let data = repo.backend().read(FileKind::Pack, &pid.to_hex())?;
            let header = pack::read_header(repo.key(), &pid, &data)?;
            let entries: Vec<_> = header
                .iter()
                .map(|b| json!({"type": b.blob_type, "id": b.id, "offset": b.offset, "length": b.length, "raw_length": b.raw_length}))
                .collect();
            serde_json::to_vec_pretty(&entries)?
        }
        "tree" | "blob" => {
            let repo = repo.load_index()?;
            let bid: Id = need_id()?.parse()?;
            if kind == "tree" {
                let tree = repo.load_tree(&bid)?;
                serde_json::to_vec_pretty(&tree)?
            } else {
                repo.read_blob(BlobType::Data, &bid)?
            }
        }
        other => {
            bail!("unknown object kind {other:?} (config, key, snapshot, index, pack, tree, blob)")
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    if kind != "blob" {
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn stats [SNAPSHOT...]`.
pub fn stats(cli: &Cli, snapshots: &[String]) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let ids = snapshots
        .iter()
        .map(|s| repo.find_snapshot(s).map(|(id, _)| id))
        .collect::<Result<Vec<Id>, Error>>()?;
    let s = cairn::commands::stats::stats(&repo, &ids)?;
    if cli.json {
        print_json(&s)?;
    } else {
        println!("snapshots:              {}", s.snapshots);
        println!("files (all snapshots):  {}", s.total_files);
        println!("size (all snapshots):   {}", human_bytes(s.total_size));
        println!(
            "unique data:            {} in {} blobs",
            human_bytes(s.unique_size),
            s.unique_blobs
        );
        println!(
            "stored in packs:        {} in {} packs",
            human_bytes(s.stored_size),
            s.packs
        );
        println!("indexed blobs:          {}", s.indexed_blobs);
        println!("ratio (size / stored):  {:.2}x", s.ratio);
    }
    Ok(ExitCode::SUCCESS)
}
