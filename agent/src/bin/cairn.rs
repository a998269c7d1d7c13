//! `cairn`: the command-line interface. Parses arguments, asks for passwords,
//! calls the engine and prints results (text, or JSON with `--json`).
//!
//! Exit codes: 0 success, 1 fatal error, 3 snapshot written but some source
//! files could not be read.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use cairn::archiver::{self, BackupOptions, ChangeDetection, ParentChoice};
use cairn::backend::{self, FileKind};
use cairn::blob::BlobType;
use cairn::diff::diff_trees;
use cairn::pack;
use cairn::repository::{KdfCost, Repository};
use cairn::restore::{self, RestoreOptions};
use cairn::snapshot::Snapshot;
use cairn::tree::{Node, NodeType};
use cairn::{Error, Id};

#[path = "cairn/agent.rs"]
mod agent;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, encrypted, compressed backups",
    max_term_width = 100
)]
struct Cli {
    /// Repository location: a local path (S3 support: see the README).
    #[arg(
        short = 'r',
        long,
        env = "CAIRN_REPOSITORY",
        global = true,
        default_value = ""
    )]
    repo: String,

    /// Read the repository password from this file (first line).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// More log output on stderr (repeat for debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the contents of a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff {
        /// First snapshot (ID prefix or `latest`).
        first: String,
        /// Second snapshot.
        second: String,
    },
    /// Restore a snapshot (or `SNAPSHOT:PATH`, a part of it) into a directory.
    Restore(RestoreArgs),
    /// Remove snapshots according to a retention policy (the data they alone
    /// reference stays until prune, or use --prune).
    Forget(ForgetArgs),
    /// Remove data no snapshot references and repack partly used packs.
    /// Lock-free: safe while backups run (see --grace).
    Prune(PruneArgs),
    /// Copy snapshots to another repository, transferring only the blobs it lacks.
    Copy(CopyArgs),
    /// Verify the repository: structure, and with --read-data the data itself.
    Check(CheckArgs),
    /// Show repository statistics (sizes, deduplication).
    Stats {
        /// Snapshots to count (default: all).
        snapshots: Vec<String>,
    },
    /// Print a raw repository object (for debugging).
    Cat {
        /// config, key, snapshot, index, pack (header), tree or blob.
        kind: String,
        /// Object ID (prefix allowed for snapshots and keys).
        id: Option<String>,
    },
    /// Entrypoint of the Kubernetes operator's Jobs: JSON result on stdout and
    /// as the termination message.
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
    /// Manage the repository's keys (passwords).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Rebuild what a lost or damaged object broke.
    Repair {
        #[command(subcommand)]
        command: RepairCommand,
    },
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the pack headers (after a pack or an index file
    /// was lost or damaged): the next backup then stores the missing data
    /// again instead of deduplicating against it. Do not run while a prune runs.
    Index,
}

#[derive(Args)]
struct KdfArgs {
    /// Argon2id memory cost in KiB for the new key (default 65536).
    #[arg(long, default_value_t = cairn::constants::KDF_MEMORY_KIB)]
    kdf_memory_kib: u32,
    /// Argon2id iterations for the new key (default 3).
    #[arg(long, default_value_t = cairn::constants::KDF_ITERATIONS)]
    kdf_iterations: u32,
}

impl KdfArgs {
    fn cost(&self) -> KdfCost {
        KdfCost {
            memory_kib: self.kdf_memory_kib,
            iterations: self.kdf_iterations,
        }
    }
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    kdf: KdfArgs,
    /// Share blob-ID and chunker keys and chunk sizes with this repository (its
    /// own encryption key and password), so `cairn copy` between the two
    /// transfers only missing blobs without reading the rest.
    #[arg(long, value_name = "REPO")]
    from_repo: Option<String>,
    /// Password file of --from-repo (else CAIRN_FROM_PASSWORD, or a prompt).
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE")]
    from_password_file: Option<PathBuf>,
    /// Share a local repository with the directory's group: directories
    /// 0770 and files 0660 instead of 0700 and 0600.
    #[arg(long)]
    group_access: bool,
}

#[derive(Args)]
struct CopyArgs {
    /// Target repository.
    #[arg(long, env = "CAIRN_TO_REPOSITORY")]
    to: String,
    /// Password file of the target (else CAIRN_TO_PASSWORD, or a prompt).
    #[arg(long, env = "CAIRN_TO_PASSWORD_FILE")]
    to_password_file: Option<PathBuf>,
    /// Snapshots to copy (ID prefixes or `latest`; default: all).
    snapshots: Vec<String>,
}

#[derive(Args)]
struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Add a tag to the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// Exclude paths matching a glob (repeatable). Without `/` it matches names anywhere.
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// Use this snapshot as the parent instead of the latest one of the same host and paths.
    #[arg(long, conflicts_with = "force")]
    parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    force: bool,
    /// Treat files as unchanged when path, size and mtime match, whatever their
    /// inode and ctime (for volume snapshots and clones, where both always change).
    #[arg(long)]
    ignore_inode: bool,
    /// Ignore ctime changes when looking for changed files.
    #[arg(long)]
    ignore_ctime: bool,
    /// Worker threads per stage (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct SnapshotsArgs {
    /// Only snapshots of this host.
    #[arg(long)]
    host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only snapshots containing this path.
    #[arg(long)]
    path: Option<String>,
}

#[derive(Args)]
struct LsArgs {
    /// Snapshot (ID prefix or `latest`).
    snapshot: String,
    /// Directory inside the snapshot to list.
    path: Option<String>,
    /// Show mode, owner, size and time.
    #[arg(short, long)]
    long: bool,
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot (ID prefix or `latest`), optionally `:PATH` to restore only that path's contents.
    snapshot: String,
    /// Directory to restore into.
    #[arg(long, short = 't')]
    target: PathBuf,
    /// Restore only paths matching this glob (repeatable), e.g. `/data/db/**`.
    #[arg(long = "include")]
    includes: Vec<String>,
    /// Do not restore file ownership (default: restore it when running as root).
    /// Set-user-ID and set-group-ID bits are then cleared too.
    #[arg(long)]
    no_owner: bool,
    /// Clear set-user-ID and set-group-ID bits of restored files.
    #[arg(long)]
    no_setid: bool,
    /// Do not create device nodes (each is reported, and the exit code is 3).
    #[arg(long)]
    no_devices: bool,
    /// Worker threads (default: number of CPUs).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct KeepArgs {
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
    /// Keep snapshots within this duration of the group's newest one (e.g. 7d, 1y6m, 12h).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
}

impl KeepArgs {
    fn policy(&self) -> Result<cairn::forget::RetentionPolicy> {
        Ok(cairn::forget::RetentionPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.as_deref().map(str::parse).transpose()?,
            tags: self.keep_tags.clone(),
        })
    }
}

#[derive(Args)]
struct ForgetArgs {
    #[command(flatten)]
    keep: KeepArgs,
    /// Group snapshots by these keys before applying the policy.
    #[arg(long, default_value = "host,paths")]
    group_by: String,
    /// Only show what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Run prune after removing snapshots.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_opts: PruneOpts,
}

#[derive(Args)]
struct PruneOpts {
    /// Unused space to tolerate in kept packs, as a percentage of the used
    /// space; partly used packs are repacked until this holds (`unlimited`:
    /// never repack).
    #[arg(long, value_name = "PERCENT", default_value = "5%")]
    max_unused: String,
    /// Delete a pack only this long after it was marked unused (e.g. 24h, 90m,
    /// 2d). Must exceed the longest backup; 0 deletes at once and is safe only
    /// while no backup runs.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    grace: String,
}

impl PruneOpts {
    fn options(&self, dry_run: bool) -> Result<cairn::prune::PruneOptions> {
        let m = self.max_unused.trim();
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
        Ok(cairn::prune::PruneOptions {
            max_unused_percent,
            grace: cairn::prune::parse_duration(&self.grace)?,
            dry_run,
        })
    }
}

#[derive(Args)]
struct PruneArgs {
    /// Only show what would be done.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    opts: PruneOpts,
}

#[derive(Args)]
struct CheckArgs {
    /// Also download every pack and verify every blob in it.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read only part of the data: a percentage of packs chosen at random (`10%`)
    /// or group n of m (`1/7`; running 1/7 … 7/7 reads every pack once).
    #[arg(long, value_name = "PERCENT|N/M")]
    read_data_subset: Option<String>,
}

#[derive(Subcommand)]
enum KeyCommand {
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

/// Two malloc arenas instead of glibc's default of eight per core. The backup
/// and restore pipelines pass buffers between a dozen threads; with an arena
/// per thread each one keeps its own free memory, and a backup of a million
/// small files held ~30 MiB more than with two (measured: 116 → 86 MiB peak,
/// no change in backup or restore speed).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Raise the soft limit on open files to the hard limit: backup and restore
/// hold a directory descriptor per level of the tree they are in, plus one per
/// queued file, and 1024 (a common soft limit) is less than a deep tree needs.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    raise_open_file_limit();
    let cli = Cli::parse();
    let filter = std::env::var("CAIRN_LOG").unwrap_or_else(|_| {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
        .to_string()
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn read_password_file(path: &PathBuf) -> Result<Vec<u8>> {
    let text =
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// The password from --password-file / CAIRN_PASSWORD_FILE, CAIRN_PASSWORD, or a prompt.
fn password(cli: &Cli, confirm: bool) -> Result<Vec<u8>> {
    if let Some(p) = &cli.password_file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os("CAIRN_PASSWORD") {
        return Ok(p.into_encoded_bytes());
    }
    prompt("repository password", confirm)
}

/// The password of a second repository (copy target, init source).
fn other_password(file: &Option<PathBuf>, var: &str, location: &str) -> Result<Vec<u8>> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.into_encoded_bytes());
    }
    prompt(&format!("password of {location}"), false)
}

fn new_password(file: &Option<PathBuf>) -> Result<Vec<u8>> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os("CAIRN_NEW_PASSWORD") {
        return Ok(p.into_encoded_bytes());
    }
    prompt("new password", true)
}

fn prompt(what: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::NoPassword.into());
    }
    let p = rpassword::prompt_password(format!("enter {what}: "))?;
    if confirm && rpassword::prompt_password(format!("enter {what} again: "))? != p {
        bail!("passwords do not match");
    }
    if p.is_empty() {
        bail!("empty password");
    }
    Ok(p.into_bytes())
}

fn open_repo(cli: &Cli) -> Result<Repository> {
    let backend = backend::open(&cli.repo)?;
    let pw = password(cli, false)?;
    Ok(Repository::open(backend, &pw)?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(args) => {
            let from = match &args.from_repo {
                Some(loc) => {
                    let pw = other_password(&args.from_password_file, "CAIRN_FROM_PASSWORD", loc)?;
                    Some(Repository::open(backend::open(loc)?, &pw)?)
                }
                None => None,
            };
            let backend = if args.group_access {
                backend::open_group_shared(&cli.repo)?
            } else {
                backend::open(&cli.repo)?
            };
            let pw = password(&cli, true)?;
            let repo = Repository::init_from(backend, &pw, args.kdf.cost(), from.as_ref())?;
            if cli.json {
                print_json(
                    &json!({"id": repo.config().id, "location": repo.backend().location()}),
                )?;
            } else {
                println!(
                    "created repository {} at {}",
                    repo.config().id.short(),
                    repo.backend().location()
                );
                println!("keep the password safe: without it the data cannot be recovered");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(args) => cmd_backup(&cli, args),
        Command::Snapshots(args) => cmd_snapshots(&cli, args),
        Command::Ls(args) => cmd_ls(&cli, args),
        Command::Diff { first, second } => {
            let repo = loaded(&cli)?;
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
                use cairn::diff::Change;
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
        Command::Restore(args) => cmd_restore(&cli, args),
        Command::Check(args) => cmd_check(&cli, args),
        Command::Repair {
            command: RepairCommand::Index,
        } => cmd_repair_index(&cli),
        Command::Forget(args) => cmd_forget(&cli, args),
        Command::Copy(args) => cmd_copy(&cli, args),
        Command::Agent { command } => Ok(agent::run(&cli, command)),
        Command::Prune(args) => {
            let opts = args.opts.options(args.dry_run)?;
            let mut repo = open_repo(&cli)?;
            run_prune(&cli, &mut repo, &opts)
        }
        Command::Stats { snapshots } => {
            let repo = loaded(&cli)?;
            let ids = snapshots
                .iter()
                .map(|s| repo.find_snapshot(s).map(|(id, _)| id))
                .collect::<Result<Vec<Id>, Error>>()?;
            let s = cairn::stats::stats(&repo, &ids)?;
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
        Command::Cat { kind, id } => cmd_cat(&cli, kind, id.as_deref()),
        Command::Key { command } => cmd_key(&cli, command),
    }
}

fn loaded(cli: &Cli) -> Result<Repository> {
    let mut repo = open_repo(cli)?;
    repo.load_index()?;
    Ok(repo)
}

fn cmd_backup(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let repo = loaded(cli)?;
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
    let result = archiver::backup(&repo, &opts)?;
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

fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(id));
        o.insert("short_id".into(), json!(id.short()));
    }
    v
}

fn cmd_snapshots(cli: &Cli, args: &SnapshotsArgs) -> Result<ExitCode> {
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

fn mode_string(node: &Node) -> String {
    let t = match node.node_type {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Chardev => 'c',
        NodeType::Blockdev => 'b',
        NodeType::Socket => 's',
        NodeType::File => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (node.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn cmd_ls(cli: &Cli, args: &LsArgs) -> Result<ExitCode> {
    let repo = loaded(cli)?;
    let (_, snap) = repo.find_snapshot(&args.snapshot)?;
    let (tree, base) = cairn::ls::tree_at(&repo, &snap.tree, args.path.as_deref().unwrap_or("/"))?;
    let mut entries = Vec::new();
    let mut out = std::io::stdout().lock();
    cairn::ls::walk(&repo, &tree, &base, &mut |path, node| {
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

fn cmd_restore(cli: &Cli, args: &RestoreArgs) -> Result<ExitCode> {
    let repo = loaded(cli)?;
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

fn cmd_cat(cli: &Cli, kind: &str, id: Option<&str>) -> Result<ExitCode> {
    let need_id = || id.ok_or_else(|| anyhow!("`cairn cat {kind}` needs an ID"));
    let mut repo = open_repo(cli)?;
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
            repo.load_index()?;
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

fn cmd_key(cli: &Cli, command: &KeyCommand) -> Result<ExitCode> {
    let mut repo = open_repo(cli)?;
    match command {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                print_json(&keys)?;
            } else {
                println!(" {:<8}  {:<12}  {:<16}  Created", "ID", "User", "Host");
                for k in keys {
                    println!(
                        "{}{:<8}  {:<12}  {:<16}  {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8.min(k.id.len())],
                        k.username,
                        k.hostname,
                        k.created.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        KeyCommand::Add {
            new_password_file,
            kdf,
        } => {
            let pw = new_password(new_password_file)?;
            let name = repo.add_key(&pw, kdf.cost())?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else {
                println!("added key {}", &name[..8]);
            }
        }
        KeyCommand::Remove { id } => {
            let name = repo.resolve_key(id)?;
            repo.remove_key(&name)?;
            if !cli.json {
                println!("removed key {}", &name[..8.min(name.len())]);
            } else {
                print_json(&json!({"removed": name}))?;
            }
        }
        KeyCommand::Passwd {
            new_password_file,
            kdf,
        } => {
            let pw = new_password(new_password_file)?;
            let name = repo.change_password(&pw, kdf.cost())?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else {
                println!("password changed (new key {})", &name[..8]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_repair_index(cli: &Cli) -> Result<ExitCode> {
    let mut repo = open_repo(cli)?;
    let report = cairn::repair::repair_index(&mut repo)?;
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

fn cmd_check(cli: &Cli, args: &CheckArgs) -> Result<ExitCode> {
    use cairn::check::{check, ReadData};
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => s.parse::<ReadData>()?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let mut repo = open_repo(cli)?;
    let report = check(&mut repo, read_data)?;
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

fn cmd_forget(cli: &Cli, args: &ForgetArgs) -> Result<ExitCode> {
    use cairn::forget::{plan, GroupBy};
    let policy = args.keep.policy()?;
    let group_by: GroupBy = args.group_by.parse()?;
    let prune_opts = args.prune_opts.options(args.dry_run)?;
    let mut repo = open_repo(cli)?;
    let groups = plan(&repo.snapshots()?, &policy, group_by)?;
    let mut removed = 0;
    for g in &groups {
        for d in g.decisions.iter().filter(|d| !d.keep) {
            if !args.dry_run {
                repo.backend().remove(FileKind::Snapshot, &d.id.to_hex())?;
            }
            removed += 1;
        }
    }
    if cli.json {
        let pruned = if args.prune {
            Some(cairn::prune::prune(&mut repo, &prune_opts)?)
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
        return run_prune(cli, &mut repo, &prune_opts);
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_copy(cli: &Cli, args: &CopyArgs) -> Result<ExitCode> {
    let mut src = open_repo(cli)?;
    let ids = args
        .snapshots
        .iter()
        .map(|s| src.find_snapshot(s).map(|(id, _)| id))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let pw = other_password(&args.to_password_file, "CAIRN_TO_PASSWORD", &args.to)?;
    let mut dst = Repository::open(backend::open(&args.to)?, &pw)
        .with_context(|| format!("opening the target repository {}", args.to))?;
    src.load_index()?;
    dst.load_index()?;
    let r = cairn::copy::copy(&src, &dst, &ids)?;
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

fn run_prune(
    cli: &Cli,
    repo: &mut Repository,
    opts: &cairn::prune::PruneOptions,
) -> Result<ExitCode> {
    let r = cairn::prune::prune(repo, opts)?;
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
        humantime_secs(r.grace_seconds),
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

fn humantime_secs(s: u64) -> String {
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
