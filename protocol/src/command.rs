//! The agent's commands and their arguments: `cairn agent init|backup|restore|prune`.
//!
//! The `cairn` binary parses exactly these types (they are clap argument
//! structs, also flattened into the CLI's own `init`, `key`, `forget` and
//! `prune`), and the controller builds them and passes [`AgentCommand::to_args`]
//! as its Jobs' container arguments. Values stay text here: the agent checks
//! them (durations with [`crate::duration`]), so that a bad value becomes a
//! failed [`crate::AgentResult`] instead of a usage error without one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Argon2id memory cost of a new key in KiB (the engine's
/// `cairn::constants::KDF_MEMORY_KIB`; the `cairn` binary checks they agree).
pub const DEFAULT_KDF_MEMORY_KIB: u32 = 65_536;
/// Argon2id iterations of a new key (the engine's `KDF_ITERATIONS`).
pub const DEFAULT_KDF_ITERATIONS: u32 = 3;
/// Prune's default grace period.
pub const DEFAULT_GRACE: &str = "24h";
/// Prune's default unused space tolerated in kept packs.
pub const DEFAULT_MAX_UNUSED: &str = "5%";

/// `cairn agent ...`: what an operator Job runs.
#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum AgentCommand {
    /// Create the repository unless it exists; report what it holds.
    Init(InitArgs),
    /// Back up one volume, then apply the retention policy to its snapshots.
    Backup(BackupArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Prune the repository (lock-free; see `cairn prune`).
    Prune(PruneOpts),
}

impl AgentCommand {
    /// The command's name, as in its result's `command`.
    pub fn name(&self) -> &'static str {
        match self {
            AgentCommand::Init(_) => "init",
            AgentCommand::Backup(_) => "backup",
            AgentCommand::Restore(_) => "restore",
            AgentCommand::Prune(_) => "prune",
        }
    }

    /// The container arguments of a Job running this command (the image's
    /// entrypoint is `cairn`): `agent NAME OPTIONS...`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["agent".to_string(), self.name().to_string()];
        a.extend(match self {
            AgentCommand::Init(x) => x.to_args(),
            AgentCommand::Backup(x) => x.to_args(),
            AgentCommand::Restore(x) => x.to_args(),
            AgentCommand::Prune(x) => x.to_args(),
        });
        a
    }

    /// Parse container arguments (`agent NAME OPTIONS...`) as the `cairn`
    /// binary does, without its global options (the controller passes none).
    ///
    /// # Errors
    /// What clap reports for arguments the agent would refuse.
    pub fn parse_args<I, T>(args: I) -> Result<AgentCommand, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Argv::try_parse_from(args).map(|a| match a.command {
            Top::Agent { command } => command,
        })
    }
}

#[derive(Parser)]
#[command(name = "cairn", no_binary_name = true)]
struct Argv {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

/// `flag value`, or `flag=value` when the value starts with `-` (a tag or a
/// glob from a custom resource), which clap would take for an option.
fn push_opt(a: &mut Vec<String>, flag: &str, value: Option<&str>) {
    match value {
        Some(v) if v.starts_with('-') => a.push(format!("{flag}={v}")),
        Some(v) => {
            a.push(flag.into());
            a.push(v.into());
        }
        None => {}
    }
}

/// A repeatable option, once for each value.
fn push_all(a: &mut Vec<String>, flag: &str, values: &[String]) {
    for v in values {
        push_opt(a, flag, Some(v));
    }
}

/// The key derivation cost of a new key (`cairn init`, `cairn key add|passwd`,
/// `cairn agent init`).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
pub struct KdfArgs {
    /// Argon2id memory cost in KiB for the new key (default 65536).
    #[arg(long, default_value_t = DEFAULT_KDF_MEMORY_KIB)]
    pub kdf_memory_kib: u32,
    /// Argon2id iterations for the new key (default 3).
    #[arg(long, default_value_t = DEFAULT_KDF_ITERATIONS)]
    pub kdf_iterations: u32,
}

impl Default for KdfArgs {
    fn default() -> Self {
        KdfArgs {
            kdf_memory_kib: DEFAULT_KDF_MEMORY_KIB,
            kdf_iterations: DEFAULT_KDF_ITERATIONS,
        }
    }
}

impl KdfArgs {
    /// The options, defaults left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.kdf_memory_kib != DEFAULT_KDF_MEMORY_KIB {
            push_opt(
                &mut a,
                "--kdf-memory-kib",
                Some(&self.kdf_memory_kib.to_string()),
            );
        }
        if self.kdf_iterations != DEFAULT_KDF_ITERATIONS {
            push_opt(
                &mut a,
                "--kdf-iterations",
                Some(&self.kdf_iterations.to_string()),
            );
        }
        a
    }
}

/// `cairn agent init`.
#[derive(Parser, Clone, Debug, Default, PartialEq, Eq)]
pub struct InitArgs {
    // The --kdf-* options (a plain comment: flattened fields take no help text).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Create a local repository shared with the volume's group
    /// (0770/0660; the operator sets it for repositories on a PVC, so
    /// agent pods of any user with the volume's fsGroup can write it).
    #[arg(long)]
    pub group_access: bool,
}

impl InitArgs {
    /// The options, defaults left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = self.kdf.to_args();
        if self.group_access {
            a.push("--group-access".into());
        }
        a
    }
}

/// A retention policy (`cairn forget`, `cairn agent backup`). Zero keeps
/// nothing by that rule; `keep_within` is a calendar duration.
#[derive(Parser, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepArgs {
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots within this duration of the group's newest one (units
    /// y, mo, w, d, h: e.g. 7d, 1y6mo, 12h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
}

impl KeepArgs {
    /// The options, zeros left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if n != 0 {
                push_opt(&mut a, flag, Some(&n.to_string()));
            }
        }
        push_opt(&mut a, "--keep-within", self.keep_within.as_deref());
        push_all(&mut a, "--keep-tag", &self.keep_tags);
        a
    }
}

/// `cairn agent backup`.
#[derive(Parser, Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupArgs {
    /// Directory where the volume is mounted.
    #[arg(long)]
    pub source: PathBuf,
    /// Identity of the volume, recorded as the snapshot's host
    /// (the operator passes `NAMESPACE/PVC`).
    #[arg(long)]
    pub id: String,
    /// Snapshot tags.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Trust path, size and mtime only (volumes mounted from snapshots or clones).
    #[arg(long)]
    pub ignore_inode: bool,
    // The --keep-* options.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub keep: KeepArgs,
}

impl BackupArgs {
    /// The options, defaults left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        push_opt(&mut a, "--source", Some(&self.source.to_string_lossy()));
        push_opt(&mut a, "--id", Some(&self.id));
        push_all(&mut a, "--tag", &self.tags);
        if self.ignore_inode {
            a.push("--ignore-inode".into());
        }
        a.extend(self.keep.to_args());
        a
    }
}

/// `cairn agent restore`.
#[derive(Parser, Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreArgs {
    /// Directory to restore into (the mounted target volume).
    #[arg(long)]
    pub target: PathBuf,
    /// Snapshot ID (prefix).
    #[arg(long, conflicts_with = "latest_of")]
    pub snapshot: Option<String>,
    /// The latest snapshot of this volume identity (`NAMESPACE/PVC`).
    #[arg(long)]
    pub latest_of: Option<String>,
    /// With --latest-of or alone: the latest snapshot carrying all these tags.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Restore only paths matching these globs (inside the snapshot).
    #[arg(long = "include")]
    pub includes: Vec<String>,
}

impl RestoreArgs {
    /// The options, defaults left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        push_opt(&mut a, "--target", Some(&self.target.to_string_lossy()));
        push_opt(&mut a, "--snapshot", self.snapshot.as_deref());
        push_opt(&mut a, "--latest-of", self.latest_of.as_deref());
        push_all(&mut a, "--tag", &self.tags);
        push_all(&mut a, "--include", &self.includes);
        a
    }
}

/// Prune's options (`cairn prune`, `cairn forget --prune`, `cairn agent prune`).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
pub struct PruneOpts {
    /// Unused space to tolerate in kept packs, as a percentage of the used
    /// space; partly used packs are repacked until this holds (`unlimited`:
    /// never repack).
    #[arg(long, value_name = "PERCENT", default_value = DEFAULT_MAX_UNUSED)]
    pub max_unused: String,
    /// Delete a pack only this long after it was marked unused (units w, d,
    /// h, min, s: e.g. 24h, 90min, 2d). Must exceed the longest backup; 0
    /// deletes at once and is safe only while no backup runs.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_GRACE)]
    pub grace: String,
}

impl Default for PruneOpts {
    fn default() -> Self {
        PruneOpts {
            max_unused: DEFAULT_MAX_UNUSED.into(),
            grace: DEFAULT_GRACE.into(),
        }
    }
}

impl PruneOpts {
    /// The options, defaults left out.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.grace != DEFAULT_GRACE {
            push_opt(&mut a, "--grace", Some(&self.grace));
        }
        if self.max_unused != DEFAULT_MAX_UNUSED {
            push_opt(&mut a, "--max-unused", Some(&self.max_unused));
        }
        a
    }
}

// `Args` is implemented by the `Parser` derive; named here so that a change
// of derive that drops it fails to compile where it is explained.
const _: fn() = || {
    fn flattenable<T: Args>() {}
    flattenable::<KdfArgs>();
    flattenable::<KeepArgs>();
    flattenable::<PruneOpts>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn all_set() -> Vec<AgentCommand> {
        vec![
            AgentCommand::Init(InitArgs {
                kdf: KdfArgs {
                    kdf_memory_kib: 1024,
                    kdf_iterations: 1,
                },
                group_access: true,
            }),
            AgentCommand::Backup(BackupArgs {
                source: "/data".into(),
                id: "shop/postgres-data".into(),
                tags: vec!["manual".into(), "before upgrade".into()],
                ignore_inode: true,
                keep: KeepArgs {
                    keep_last: 1,
                    keep_hourly: 2,
                    keep_daily: 3,
                    keep_weekly: 4,
                    keep_monthly: 5,
                    keep_yearly: 6,
                    keep_within: Some("1y6mo".into()),
                    keep_tags: vec!["release".into(), "--not-a-flag".into()],
                },
            }),
            // --snapshot conflicts with --latest-of: one each.
            AgentCommand::Restore(RestoreArgs {
                target: "/data".into(),
                snapshot: Some("0123abcd".into()),
                latest_of: None,
                tags: vec!["a".into(), "".into(), "b".into()],
                includes: vec!["/data/db/**".into(), "-x".into()],
            }),
            AgentCommand::Restore(RestoreArgs {
                target: "/data".into(),
                snapshot: None,
                latest_of: Some("shop/postgres-data".into()),
                tags: vec!["a".into()],
                includes: vec!["/data/db/**".into()],
            }),
            AgentCommand::Prune(PruneOpts {
                max_unused: "10%".into(),
                grace: "2d".into(),
            }),
        ]
    }

    fn none_set() -> Vec<AgentCommand> {
        vec![
            AgentCommand::Init(InitArgs::default()),
            // --source and --id are required: the least a backup takes.
            AgentCommand::Backup(BackupArgs {
                source: "/data".into(),
                id: "ns/pvc".into(),
                ..BackupArgs::default()
            }),
            AgentCommand::Restore(RestoreArgs {
                target: "/data".into(),
                ..RestoreArgs::default()
            }),
            AgentCommand::Prune(PruneOpts::default()),
        ]
    }

    #[test]
    fn every_command_parses_back_from_its_arguments() {
        for cmd in all_set().into_iter().chain(none_set()) {
            let args = cmd.to_args();
            assert_eq!(args[..2], ["agent", cmd.name()]);
            let back = AgentCommand::parse_args(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(back, cmd, "{args:?}");
            // Each struct on its own too.
            let own = std::iter::once(cmd.name().to_string()).chain(args[2..].iter().cloned());
            match &cmd {
                AgentCommand::Init(x) => assert_eq!(&InitArgs::try_parse_from(own).unwrap(), x),
                AgentCommand::Backup(x) => {
                    assert_eq!(&BackupArgs::try_parse_from(own).unwrap(), x)
                }
                AgentCommand::Restore(x) => {
                    assert_eq!(&RestoreArgs::try_parse_from(own).unwrap(), x)
                }
                AgentCommand::Prune(x) => assert_eq!(&PruneOpts::try_parse_from(own).unwrap(), x),
            }
        }
    }

    #[test]
    fn every_option_is_emitted_when_set() {
        // A field whose option `to_args` forgot would parse back as its
        // default, which the round trip above catches only if it differs:
        // each set value here differs from its default.
        let backup = &all_set()[1];
        let args = backup.to_args().join(" ");
        for flag in [
            "--source",
            "--id",
            "--tag",
            "--ignore-inode",
            "--keep-last",
            "--keep-hourly",
            "--keep-daily",
            "--keep-weekly",
            "--keep-monthly",
            "--keep-yearly",
            "--keep-within",
            "--keep-tag",
        ] {
            assert!(args.contains(flag), "{flag} missing from {args}");
        }
    }

    #[test]
    fn defaults_are_left_out() {
        let args: Vec<Vec<String>> = none_set().iter().map(AgentCommand::to_args).collect();
        assert_eq!(
            args,
            [
                vec!["agent", "init"],
                vec!["agent", "backup", "--source", "/data", "--id", "ns/pvc"],
                vec!["agent", "restore", "--target", "/data"],
                vec!["agent", "prune"],
            ]
        );
        assert_eq!(
            PruneOpts::try_parse_from(["prune"]).unwrap(),
            PruneOpts::default()
        );
        assert_eq!(
            KdfArgs::try_parse_from(["kdf"]).unwrap(),
            KdfArgs::default()
        );
    }

    #[test]
    fn the_agent_refuses_what_it_always_refused() {
        for bad in [
            &["agent", "backup", "--source", "/data"][..],
            &[
                "agent",
                "restore",
                "--target",
                "/d",
                "--snapshot",
                "a",
                "--latest-of",
                "b",
            ],
            &["agent", "prune", "--bogus"],
            &["agent", "check"],
        ] {
            assert!(AgentCommand::parse_args(bad).is_err(), "{bad:?}");
        }
    }
}
