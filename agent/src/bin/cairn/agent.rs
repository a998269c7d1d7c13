//! `cairn agent ...`: the entrypoint of the operator's Jobs. Same engine and
//! exit codes as the CLI (0 ok, 1 failed, 3 snapshot written with unreadable
//! files), plus a compact JSON result written as the container's termination
//! message (`CAIRN_TERMINATION_LOG`, default `/dev/termination-log`) and to
//! stdout, which the controller reads from the Pod status. The format is
//! documented in docs/CRDS.md ("Agent result").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::Serialize;

use cairn::archiver::{self, BackupOptions, ChangeDetection, ParentChoice};
use cairn::backend::{self, FileKind};
use cairn::restore::{self, RestoreOptions};
use cairn::{Error, Repository};

use super::{password, Cli, KdfArgs, KeepArgs, PruneOpts};

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Create the repository unless it exists; report what it holds.
    Init {
        #[command(flatten)]
        kdf: KdfArgs,
        /// Create a local repository shared with the volume's group
        /// (0770/0660; the operator sets it for repositories on a PVC, so
        /// agent pods of any user with the volume's fsGroup can write it).
        #[arg(long)]
        group_access: bool,
    },
    /// Back up one volume, then apply the retention policy to its snapshots.
    Backup(AgentBackupArgs),
    /// Restore a snapshot into a directory.
    Restore(AgentRestoreArgs),
    /// Prune the repository (lock-free; see `cairn prune`).
    Prune {
        #[command(flatten)]
        opts: PruneOpts,
    },
}

#[derive(Args)]
pub struct AgentBackupArgs {
    /// Directory where the volume is mounted.
    #[arg(long)]
    source: PathBuf,
    /// Identity of the volume, recorded as the snapshot's host
    /// (the operator passes `NAMESPACE/PVC`).
    #[arg(long)]
    id: String,
    /// Snapshot tags.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Trust path, size and mtime only (volumes mounted from snapshots or clones).
    #[arg(long)]
    ignore_inode: bool,
    #[command(flatten)]
    keep: KeepArgs,
}

#[derive(Args)]
pub struct AgentRestoreArgs {
    /// Directory to restore into (the mounted target volume).
    #[arg(long)]
    target: PathBuf,
    /// Snapshot ID (prefix).
    #[arg(long, conflicts_with = "latest_of")]
    snapshot: Option<String>,
    /// The latest snapshot of this volume identity (`NAMESPACE/PVC`).
    #[arg(long)]
    latest_of: Option<String>,
    /// With --latest-of or alone: the latest snapshot carrying all these tags.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Restore only paths matching these globs (inside the snapshot).
    #[arg(long = "include")]
    includes: Vec<String>,
}

/// The result the controller reads (camelCase, like the CRD status).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentResult {
    command: &'static str,
    ok: bool,
    exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_processed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_added: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_stored: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unreadable_files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots_forgotten: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initialized: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packs_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packs_marked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Run an agent command; never returns an error: failures become a result.
pub fn run(cli: &Cli, cmd: &AgentCommand) -> ExitCode {
    let name = match cmd {
        AgentCommand::Init { .. } => "init",
        AgentCommand::Backup(_) => "backup",
        AgentCommand::Restore(_) => "restore",
        AgentCommand::Prune { .. } => "prune",
    };
    let outcome = match cmd {
        AgentCommand::Init { kdf, group_access } => init(cli, kdf, *group_access),
        AgentCommand::Backup(a) => backup(cli, a),
        AgentCommand::Restore(a) => restore(cli, a),
        AgentCommand::Prune { opts } => prune(cli, opts),
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
    result.command = name;
    result.ok = result.exit_code != 1;
    report(&mut result);
    ExitCode::from(result.exit_code)
}

/// Print the result and write it as the termination message, shortening the
/// error text if the whole would not fit.
fn report(result: &mut AgentResult) {
    let mut json = serde_json::to_string(&result).unwrap_or_default();
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
        json = serde_json::to_string(&result).unwrap_or_default();
    }
    println!("{json}");
    let path = std::env::var_os("CAIRN_TERMINATION_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/termination-log"));
    if let Err(e) = std::fs::write(&path, &json) {
        tracing::debug!("termination message not written to {}: {e}", path.display());
    }
}

fn init(cli: &Cli, kdf: &KdfArgs, group_access: bool) -> Result<AgentResult> {
    let pw = password(cli, false)?;
    let (repo, initialized) = match Repository::open(backend::open(&cli.repo)?, &pw) {
        Ok(r) => (r, false),
        Err(Error::RepositoryNotFound(_)) => (
            Repository::init(
                if group_access {
                    backend::open_group_shared(&cli.repo)?
                } else {
                    backend::open(&cli.repo)?
                },
                &pw,
                kdf.cost(),
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

fn backup(cli: &Cli, args: &AgentBackupArgs) -> Result<AgentResult> {
    let policy = args.keep.policy()?;
    let mut repo = super::open_repo(cli)?;
    repo.load_index()?;
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
    let r = archiver::backup(&repo, &opts)?;
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
        let groups = cairn::forget::plan(&mine, &policy, cairn::forget::GroupBy::default())?;
        for d in groups.iter().flat_map(|g| &g.decisions).filter(|d| !d.keep) {
            match repo.backend().remove(FileKind::Snapshot, &d.id.to_hex()) {
                Ok(()) | Err(Error::NotFound(_)) => forgotten += 1,
                Err(e) => return Err(e.into()),
            }
        }
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

fn restore(cli: &Cli, args: &AgentRestoreArgs) -> Result<AgentResult> {
    let mut repo = super::open_repo(cli)?;
    repo.load_index()?;
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
    let options = opts.options(false)?;
    let mut repo = super::open_repo(cli)?;
    let started = std::time::Instant::now();
    let r = cairn::prune::prune(&mut repo, &options)?;
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
