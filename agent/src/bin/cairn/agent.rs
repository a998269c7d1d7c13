//! `cairn agent ...`: the entrypoint of the operator's Jobs. Same engine and
//! exit codes as the CLI (0 ok, 1 failed, 3 snapshot written with unreadable
//! files), plus a compact JSON result written as the container's termination
//! message (`CAIRN_TERMINATION_LOG`, default `/dev/termination-log`) and to
//! stdout, which the controller reads from the Pod status. The format is
//! documented in docs/CRDS.md ("Agent result").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use cairn::backend::{self, FileKind};
use cairn::commands::backup::{self, BackupOptions, ChangeDetection, ParentChoice};
use cairn::commands::forget::GroupBy;
use cairn::commands::restore::{self, RestoreOptions};
use cairn::{Error, Repository};
use cairn_protocol::{AgentCommand, AgentResult, BackupArgs, InitArgs, PruneOpts, RestoreArgs};

use crate::access::{open_repo, password};
use crate::args::{kdf_cost, prune_options, retention_policy};
use crate::Cli;

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Run an agent command; never returns an error: failures become a result.
pub fn run(cli: &Cli, cmd: &AgentCommand) -> ExitCode {
    let outcome = match cmd {
        AgentCommand::Init(a) => init(cli, a),
        AgentCommand::Backup(a) => backup(cli, a),
        AgentCommand::Restore(a) => restore(cli, a),
        AgentCommand::Prune(a) => prune(cli, a),
    };
    let mut result = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: error: {e:#}");
            AgentResult {
                exit_code: 1,
                error: Some(format!("{e:#}")),
                ..AgentResult::default()
            }
        }
    };
    result.command = cmd.name().into();
    result.ok = result.exit_code != 1;
    report(&mut result);
    ExitCode::from(result.exit_code)
}

/// Print the result and write it as the termination message, shortening the
/// error text if the whole would not fit.
fn report(result: &mut AgentResult) {
    let mut json = result.to_json();
    if json.len() > TERMINATION_MESSAGE_MAX {
        if let Some(e) = &mut result.error {
            let keep = e
                .len()
                .saturating_sub(json.len() - TERMINATION_MESSAGE_MAX + 16);
            let mut cut = keep;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
            e.push_str(" […]");
        }
        json = result.to_json();
    }
    println!("{json}");
    let path = std::env::var_os("CAIRN_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/termination-log"));
    if let Err(e) = std::fs::write(&path, &json) {
        tracing::debug!("termination message not written to {}: {e}", path.display());
    }
}

fn init(cli: &Cli, args: &InitArgs) -> Result<AgentResult> {
    let pw = password(cli, false)?;
    let (repo, initialized) = match Repository::open(backend::open(&cli.repo)?, &pw) {
        Ok(r) => (r, false),
        Err(Error::RepositoryNotFound(_)) => (
            Repository::init(
                if args.group_access {
                    backend::open_group_shared(&cli.repo)?
                } else {
                    backend::open(&cli.repo)?
                },
                &pw,
                kdf_cost(&args.kdf),
            )?,
            true,
        ),
        Err(e) => return Err(e.into()),
    };
    let snapshots = repo.backend().list(FileKind::Snapshot)?.len() as u64;
    let stored: u64 = repo
        .backend()
        .list(FileKind::Pack)?
        .iter()
        .map(|f| f.size)
        .sum();
    Ok(AgentResult {
        initialized: Some(initialized),
        snapshots: Some(snapshots),
        stored_bytes: Some(stored),
        ..AgentResult::default()
    })
}

fn backup(cli: &Cli, args: &BackupArgs) -> Result<AgentResult> {
    // A Job past its deadline gets SIGTERM: index the uploads and report.
    cairn::interrupt::install()?;
    let policy = retention_policy(&args.keep)?;
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let opts = BackupOptions {
        paths: vec![args.source.clone()],
        tags: args.tags.clone(),
        hostname: Some(args.id.clone()),
        // The volume root's lost+found belongs to the filesystem (ext4 makes
        // it root-only on every new volume), not to the application.
        excludes: vec![format!(
            "{}/lost+found",
            args.source.display().to_string().trim_end_matches('/')
        )],
        parent: ParentChoice::Latest,
        change_detection: if args.ignore_inode {
            ChangeDetection::IgnoreInode
        } else {
            ChangeDetection::Strict
        },
        threads: 0,
    };
    let r = backup::backup(&repo, &opts)?;
    for e in &r.errors {
        eprintln!("cairn: warning: {}: {}", e.path.display(), e.message);
    }
    // Retention, for this volume's snapshots only.
    let mut forgotten = 0;
    if !policy.is_empty() {
        let mine: Vec<_> = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.hostname == args.id)
            .collect();
        forgotten =
            cairn::commands::forget::forget(&repo, &mine, &policy, GroupBy::default(), false)?
                .removed;
    }
    let s = &r.snapshot.summary;
    Ok(AgentResult {
        exit_code: if r.errors.is_empty() { 0 } else { 3 },
        snapshot_id: Some(r.snapshot_id.to_hex()),
        files: Some(s.total_files),
        bytes_processed: Some(s.total_bytes),
        bytes_added: Some(s.bytes_added),
        bytes_stored: Some(s.bytes_stored),
        duration_seconds: Some(s.duration_seconds),
        unreadable_files: Some(r.errors.len() as u64),
        snapshots_forgotten: Some(forgotten),
        // The first few, so that status and the Event say what and why.
        error: (!r.errors.is_empty()).then(|| {
            let first: Vec<String> = r
                .errors
                .iter()
                .take(5)
                .map(|e| format!("{}: {}", e.path.display(), e.message))
                .collect();
            format!(
                "{} files could not be read (the snapshot lacks them): {}{}",
                r.errors.len(),
                first.join("; "),
                if r.errors.len() > first.len() {
                    "; ..."
                } else {
                    ""
                }
            )
        }),
        ..AgentResult::default()
    })
}

fn restore(cli: &Cli, args: &RestoreArgs) -> Result<AgentResult> {
    let repo = open_repo(cli)?;
    let repo = repo.load_index()?;
    let (id, snap) = match &args.snapshot {
        Some(spec) => repo.find_snapshot(spec)?,
        None => {
            let what = format!(
                "snapshot of {} with tags [{}]",
                args.latest_of.as_deref().unwrap_or("any volume"),
                args.tags.join(",")
            );
            repo.latest_snapshot(&what, |s| {
                args.latest_of.as_ref().is_none_or(|h| &s.hostname == h)
                    && args.tags.iter().all(|t| s.tags.contains(t))
            })?
        }
    };
    let started = std::time::Instant::now();
    // A snapshot holds the volume under its mount path: restore that path's
    // contents into the target.
    let subpath = snap
        .paths
        .first()
        .filter(|_| snap.paths.len() == 1)
        .cloned();
    let summary = restore::restore(
        &repo,
        &snap.tree,
        &RestoreOptions {
            target: args.target.clone(),
            subpath,
            includes: args.includes.clone(),
            owner: None,
            threads: 0,
            // Restore Jobs write into volumes that pods of the namespace
            // mount: no device nodes, no set-id programs (docs/OPERATIONS.md).
            strip_setid: true,
            skip_devices: true,
        },
    )?;
    for e in &summary.errors {
        eprintln!("cairn: error: {}: {}", e.path.display(), e.message);
    }
    Ok(AgentResult {
        exit_code: if summary.errors.is_empty() { 0 } else { 1 },
        snapshot_id: Some(id.to_hex()),
        files: Some(summary.files),
        bytes_processed: Some(summary.bytes),
        duration_seconds: Some(started.elapsed().as_secs_f64()),
        error: (!summary.errors.is_empty())
            .then(|| format!("{} entries could not be restored", summary.errors.len())),
        ..AgentResult::default()
    })
}

fn prune(cli: &Cli, opts: &PruneOpts) -> Result<AgentResult> {
    let options = prune_options(opts, false)?;
    let repo = open_repo(cli)?;
    let started = std::time::Instant::now();
    let r = cairn::commands::prune::prune(&repo, &options)?;
    Ok(AgentResult {
        packs_deleted: Some(r.packs_deleted),
        bytes_deleted: Some(r.bytes_deleted),
        packs_marked: Some(r.packs_marked),
        snapshots: Some(r.snapshots),
        stored_bytes: Some((r.pack_bytes + r.bytes_written).saturating_sub(r.bytes_deleted)),
        duration_seconds: Some(started.elapsed().as_secs_f64()),
        ..AgentResult::default()
    })
}
