//! The commands that maintain a repository: forget, prune, check, repair
//! and copy.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use cairn::backend;
use cairn::commands::forget::{Forgotten, GroupBy};
use cairn::Repository;
use cairn_protocol::duration::format_fixed;

use crate::access::{open_repo, open_repo_uncached, other_password};
use crate::args::{prune_options, retention_policy, CheckArgs, CopyArgs, ForgetArgs, PruneArgs};
use crate::output::{human_bytes, print_json};
use crate::Cli;

/// `cairn forget`.
pub fn forget(cli: &Cli, args: &ForgetArgs) -> Result<ExitCode> {
    let policy = retention_policy(&args.keep)?;
    let group_by: GroupBy = args.group_by.parse()?;
    let prune_opts = prune_options(&args.prune_opts, args.dry_run)?;
    let repo = open_repo(cli)?;
    let snapshots = repo.snapshots()?;
    let Forgotten { groups, removed } =
        cairn::commands::forget::forget(&repo, &snapshots, &policy, group_by, args.dry_run)?;
    if cli.json {
        let pruned = if args.prune {
            Some(cairn::commands::prune::prune(&repo, &prune_opts)?)
        } else {
            None
        };
        print_json(
            &json!({"dry_run": args.dry_run, "removed": removed, "groups": groups, "prune": pruned}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for g in &groups {
        let mut label = Vec::new();
        if let Some(h) = &g.host {
            label.push(format!("host {h}"));
        }
        if let Some(p) = &g.paths {
            label.push(format!("paths {}", p.join(" ")));
        }
        if let Some(t) = &g.tags {
            label.push(format!("tags [{}]", t.join(",")));
        }
        println!(
            "snapshots of {}:",
            if label.is_empty() {
                "all".to_string()
            } else {
                label.join(", ")
            }
        );
        for d in &g.decisions {
            println!(
                "  {}  {}  {:<6}  {}",
                d.id.short(),
                d.time.format("%Y-%m-%d %H:%M:%S"),
                if d.keep {
                    "keep"
                } else if args.dry_run {
                    "would remove"
                } else {
                    "remove"
                },
                d.reasons.join(", ")
            );
        }
    }
    println!(
        "{} {} snapshots",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        removed
    );
    if args.prune {
        return run_prune(cli, &repo, &prune_opts);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn prune`.
pub fn prune(cli: &Cli, args: &PruneArgs) -> Result<ExitCode> {
    let opts = prune_options(&args.opts, args.dry_run)?;
    let repo = open_repo(cli)?;
    run_prune(cli, &repo, &opts)
}

/// Prune and print what it did (`cairn prune`, `cairn forget --prune`).
fn run_prune(
    cli: &Cli,
    repo: &Repository,
    opts: &cairn::commands::prune::PruneOptions,
) -> Result<ExitCode> {
    let r = cairn::commands::prune::prune(repo, opts)?;
    if cli.json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let would = |done: &'static str, planned: &'static str| if r.dry_run { planned } else { done };
    println!(
        "{} snapshots need {} blobs ({}); storage holds {} packs ({})",
        r.snapshots,
        r.used_blobs,
        human_bytes(r.used_bytes),
        r.packs,
        human_bytes(r.pack_bytes)
    );
    println!(
        "{} {} packs; {} {} packs into {} new packs ({})",
        would("kept", "would keep"),
        r.packs_kept,
        would("repacked", "would repack"),
        r.packs_repacked,
        r.packs_written,
        human_bytes(r.bytes_written)
    );
    println!(
        "{} {} unused packs for deletion ({} of them in no index){}",
        would("marked", "would mark"),
        r.packs_marked,
        r.unindexed_packs_marked,
        if r.packs_recovered > 0 {
            format!(
                "; {} marked packs are needed again and stay",
                r.packs_recovered
            )
        } else {
            String::new()
        }
    );
    println!(
        "{} {} packs ({}) marked at least {} ago; {} packs ({}) wait for their grace period",
        would("deleted", "would delete"),
        r.packs_deleted,
        human_bytes(r.bytes_deleted),
        format_fixed(Duration::from_secs(r.grace_seconds)),
        r.packs_waiting,
        human_bytes(r.bytes_waiting)
    );
    println!(
        "unused space left in kept packs: {}",
        human_bytes(r.unused_bytes_kept)
    );
    if r.temporaries_removed > 0 {
        println!(
            "removed {} temporary files ({}) left by interrupted writers",
            r.temporaries_removed,
            human_bytes(r.temporary_bytes_removed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn check`.
pub fn check(cli: &Cli, args: &CheckArgs) -> Result<ExitCode> {
    use cairn::commands::check::{check, ReadData};
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => s.parse::<ReadData>()?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    // As every other host sees it: never a cached copy.
    let repo = open_repo_uncached(cli)?;
    let report = check(&repo, read_data)?;
    if cli.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("error: {}: {}", p.object, p.message);
        }
        println!(
            "checked {} index files, {} pack headers, {} snapshots, {} trees; read {} packs ({} blobs)",
            report.index_files, report.packs_checked, report.snapshots, report.trees, report.packs_read, report.blobs_read
        );
        if report.unreferenced_packs > 0 {
            println!(
                "{} packs are not referenced by any index (left by interrupted backups; not an error)",
                report.unreferenced_packs
            );
        }
        if report.marked_packs > 0 {
            println!(
                "{} packs are marked for deletion by prune (not an error)",
                report.marked_packs
            );
        }
        for d in &report.damaged_snapshots {
            let more = d.damaged_files + d.damaged_dirs > d.examples.len() as u64;
            println!(
                "snapshot {} ({}, {}) cannot be restored whole: {} files lost data, {} directories are lost: {}{}",
                &d.snapshot[..8],
                d.hostname,
                d.time,
                d.damaged_files,
                d.damaged_dirs,
                d.examples.join(", "),
                if more { ", ..." } else { "" }
            );
        }
        if !report.damaged_snapshots.is_empty() {
            println!("a backup of the same data stores what was lost again; `cairn repair snapshots` writes copies of these snapshots without what was lost");
        }
        if report.problems.is_empty() {
            println!("no errors were found");
        }
    }
    if report.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("cairn: check found {} problems", report.problems.len());
        Ok(ExitCode::from(1))
    }
}

/// `cairn repair index`.
pub fn repair_index(cli: &Cli) -> Result<ExitCode> {
    let repo = open_repo(cli)?;
    let report = cairn::commands::repair::repair_index(&repo)?;
    if cli.json {
        print_json(&report)?;
    } else {
        for (pack, why) in &report.packs_unreadable {
            println!("error: pack {pack}: {why} (its entries in the old index are kept)");
        }
        println!(
            "indexed {} blobs in {} packs into {} index files (removed {} old ones); {} blobs of the old index are in packs that are gone or unreadable",
            report.blobs_indexed,
            report.packs_indexed,
            report.index_files_written,
            report.index_files_removed,
            report.blobs_lost
        );
        if report.blobs_lost > 0 {
            println!("the next backup of the same data stores what was lost again; snapshots that refer to it stay incomplete (`cairn check` names them)");
        }
    }
    // 3: the index is rebuilt, but something was lost or damaged.
    if report.blobs_lost > 0 || !report.packs_unreadable.is_empty() {
        Ok(ExitCode::from(3))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// `cairn copy`.
pub fn copy(cli: &Cli, args: &CopyArgs) -> Result<ExitCode> {
    cairn::interrupt::install()?;
    let src = open_repo(cli)?;
    let ids = args
        .snapshots
        .iter()
        .map(|s| src.find_snapshot(s).map(|(id, _)| id))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let pw = other_password(&args.to_password_file, "CAIRN_TO_PASSWORD", &args.to)?;
    let dst = Repository::open(backend::open(&args.to)?, &pw)
        .with_context(|| format!("opening the target repository {}", args.to))?;
    let r = cairn::commands::copy::copy(&src.load_index()?, &dst.load_index()?, &ids)?;
    if cli.json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (from, to) in &r.copied {
        println!("copied snapshot {} as {}", from.short(), to.short());
    }
    for s in &r.skipped {
        println!("snapshot {} is already in the target", s.short());
    }
    println!(
        "{} snapshots copied, {} skipped; {} blobs read, {} stored ({}, {} written){}",
        r.copied.len(),
        r.skipped.len(),
        r.blobs_read,
        r.blobs_stored,
        human_bytes(r.bytes_stored),
        human_bytes(r.pack_bytes_written),
        if r.same_blob_ids {
            ""
        } else {
            "\nnote: the repositories do not share blob IDs, so every blob of a copied snapshot is read; create copy targets with `cairn init --from-repo SOURCE` for incremental copies"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `cairn repair snapshots`.
pub fn repair_snapshots(
    cli: &Cli,
    snapshots: &[String],
    forget: bool,
    dry_run: bool,
    read_data: bool,
) -> Result<ExitCode> {
    use cairn::commands::repair::{repair_snapshots, SnapshotRepairOptions};
    // What is lost is what every host sees lost, as for check.
    let repo = open_repo_uncached(cli)?;
    let ids = snapshots
        .iter()
        .map(|s| repo.find_snapshot(s).map(|(id, _)| id))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let report = repair_snapshots(
        &repo,
        &SnapshotRepairOptions {
            snapshots: ids,
            forget,
            dry_run,
            read_data,
        },
    )?;
    if cli.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let would = |done: &'static str, planned: &'static str| if dry_run { planned } else { done };
    for r in &report.repaired {
        let more = r.damaged_files + r.damaged_dirs > r.examples.len() as u64;
        println!(
            "snapshot {}: {} files lost data, {} directories are lost: {}{}",
            r.snapshot.short(),
            r.damaged_files,
            r.damaged_dirs,
            r.examples.join(", "),
            if more { ", ..." } else { "" }
        );
        match r.repaired {
            Some(new) => println!("  repaired copy: snapshot {}", new.short()),
            None => println!("  would write a repaired copy"),
        }
    }
    for id in &report.unrepairable {
        println!(
            "snapshot {}: its root tree is lost; nothing of it can be restored{}",
            id.short(),
            if forget {
                would(" (removed)", " (would be removed)")
            } else {
                ""
            }
        );
    }
    println!(
        "{} snapshots read; {} {} damaged; {} unrepairable{}",
        report.snapshots,
        would("repaired", "would repair"),
        report.repaired.len(),
        report.unrepairable.len(),
        if forget && !dry_run {
            format!("; {} removed", report.forgotten)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
