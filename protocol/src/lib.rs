//! What the Cairn controller and the agent say to each other, in one place:
//!
//! - [`AgentCommand`] and its argument structs: the `cairn agent ...`
//!   commands a Job runs. The `cairn` binary parses exactly these clap types;
//!   the controller builds them and passes [`AgentCommand::to_args`] as the
//!   container's arguments.
//! - [`AgentResult`]: the JSON the agent writes as its termination message
//!   and the controller reads back (docs/CRDS.md, "Agent result").
//! - [`duration`]: the one duration grammar of the CLI, the agent and the
//!   custom resources.
//!
//! Neither side's internals: no engine, no Kubernetes types.

#![warn(missing_docs)]

mod command;
pub mod duration;
mod result;

pub use command::{
    AgentCommand, BackupArgs, InitArgs, KdfArgs, KeepArgs, PruneOpts, RestoreArgs, DEFAULT_GRACE,
    DEFAULT_KDF_ITERATIONS, DEFAULT_KDF_MEMORY_KIB, DEFAULT_MAX_UNUSED,
};
pub use result::AgentResult;
