//! The options of the CLI's own commands. The agent's commands and the
//! options shared with them (`--kdf-*`, `--keep-*`, `--max-unused`,
//! `--grace`) are cairn-protocol's types, flattened in here; this module turns
//! them into the engine's.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use cairn::commands::forget::RetentionPolicy;
use cairn::commands::prune::PruneOptions;
use cairn::repository::KdfCost;
use cairn_protocol::{KdfArgs, KeepArgs, PruneOpts};

// The protocol states the engine's defaults for the `--kdf-*` help and for
// what `to_args` leaves out: they must agree.
const _: () = assert!(cairn_protocol::DEFAULT_KDF_MEMORY_KIB == cairn::constants::KDF_MEMORY_KIB);
const _: () = assert!(cairn_protocol::DEFAULT_KDF_ITERATIONS == cairn::constants::KDF_ITERATIONS);

/// The engine's key cost from `--kdf-*`.
pub fn kdf_cost(k: &KdfArgs) -> KdfCost {
    KdfCost {
        memory_kib: k.kdf_memory_kib,
        iterations: k.kdf_iterations,
    }
}

/// The engine's retention policy from `--keep-*`.
pub fn retention_policy(k: &KeepArgs) -> Result<RetentionPolicy> {
    Ok(RetentionPolicy {
        last: k.keep_last,
        hourly: k.keep_hourly,
        daily: k.keep_daily,
        weekly: k.keep_weekly,
        monthly: k.keep_monthly,
        yearly: k.keep_yearly,
        within: k
            .keep_within
            .as_deref()
            .map(|w| w.parse().context("--keep-within"))
            .transpose()?,
        tags: k.keep_tags.clone(),
    })
}

/// Prune's options from `--max-unused` and `--grace`.
pub fn prune_options(o: &PruneOpts, dry_run: bool) -> Result<PruneOptions> {
    let m = o.max_unused.trim();
    let max_unused_percent = if m == "unlimited" {
        100.0
    } else {
        let v: f64 = m
            .strip_suffix('%')
            .unwrap_or(m)
            .trim()
            .parse()
            .map_err(|_| {
                anyhow!("--max-unused {m:?}: use a percentage such as 5% or `unlimited`")
            })?;
        if !(0.0..=100.0).contains(&v) {
            bail!("--max-unused {m:?}: must be between 0% and 100%");
        }
        v
    };
    Ok(PruneOptions {
        max_unused_percent,
        grace: cairn_protocol::duration::parse_fixed(&o.grace).context("--grace")?,
        dry_run,
    })
}

#[derive(Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers (after a pack or an index file
    /// was lost or damaged): the next backup then stores the missing data
    /// again instead of deduplicating against it. Do not run while a prune runs.
    Index,
    /// Write copies of the snapshots that lost data (those `cairn check`
    /// names), without what was lost: a file that lost data keeps what is
    /// left and is renamed NAME.repaired; a directory whose tree is lost
    /// becomes an empty NAME.repaired. Copies are tagged `repaired`. Run
    /// `repair index` first when index files were lost. If the lost files
    /// still exist, a new backup is the better repair.
    Snapshots {
        /// Snapshots to repair (default: every snapshot).
        snapshots: Vec<String>,
        /// Remove each damaged snapshot once its copy is written (and those
        /// whose root is lost); prune then frees what only they used.
        #[arg(long)]
        forget: bool,
        /// Show what would be repaired; write nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Also read every pack and treat blobs that do not decode as lost
        /// (what `check --read-data` reports inside packs that are present).
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Share blob-ID and chunker keys and chunk sizes with this repository (its
    /// own encryption key and password), so `cairn copy` between the two
    /// transfers only missing blobs without reading the rest.
    #[arg(long, value_name = "REPO")]
    pub from_repo: Option<String>,
    /// Password file of --from-repo (else CAIRN_FROM_PASSWORD, or a prompt).
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Share a local repository with the directory's group: directories
    /// 0770 and files 0660 instead of 0700 and 0600.
    #[arg(long)]
    pub group_access: bool,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Target repository.
    #[arg(long, env = "CAIRN_TO_REPOSITORY")]
    pub to: String,
    /// Password file of the target (else CAIRN_TO_PASSWORD, or a prompt).
    #[arg(long, env = "CAIRN_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Snapshots to copy (ID prefixes or `latest`; default: all).
    pub snapshots: Vec<String>,
}

#[derive(Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Add a tag to the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Exclude paths matching a glob (repeatable). Without `/` it matches names anywhere.
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Use this snapshot as the parent instead of the latest one of the same host and paths.
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Treat files as unchanged when path, size and mtime match, whatever their
    /// inode and ctime (for volume snapshots and clones, where both always change).
    #[arg(long)]
    pub ignore_inode: bool,
    /// Ignore ctime changes when looking for changed files.
    #[arg(long)]
    pub ignore_ctime: bool,
    /// Worker threads per stage (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots containing this path.
    #[arg(long)]
    pub path: Option<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Snapshot (ID prefix or `latest`).
    pub snapshot: String,
    /// Directory inside the snapshot to list.
    pub path: Option<String>,
    /// Show mode, owner, size and time.
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Snapshot (ID prefix or `latest`), optionally `:PATH` to restore only that path's contents.
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Restore only paths matching this glob (repeatable), e.g. `/data/db/**`.
    #[arg(long = "include")]
    pub includes: Vec<String>,
    /// Do not restore file ownership (default: restore it when running as root).
    /// Set-user-ID and set-group-ID bits are then cleared too.
    #[arg(long)]
    pub no_owner: bool,
    /// Clear set-user-ID and set-group-ID bits of restored files.
    #[arg(long)]
    pub no_setid: bool,
    /// Do not create device nodes (each is reported, and the exit code is 3).
    #[arg(long)]
    pub no_devices: bool,
    /// Worker threads (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Group snapshots by these keys before applying the policy.
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Run prune after removing snapshots.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneOpts,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Only show what would be done.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub opts: PruneOpts,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob in it.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read only part of the data: a percentage of packs chosen at random (`10%`)
    /// or group n of m (`1/7`; running 1/7 … 7/7 reads every pack once).
    #[arg(long, value_name = "PERCENT|N/M")]
    pub read_data_subset: Option<String>,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List keys.
    List,
    /// Add a key (a new password) for the repository.
    Add {
        /// Read the new password from this file.
        #[arg(long, env = "CAIRN_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key (not the one in use, not the last one).
    Remove {
        /// Key ID (prefix allowed).
        id: String,
    },
    /// Change the password of the key in use.
    Passwd {
        /// Read the new password from this file.
        #[arg(long, env = "CAIRN_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}
