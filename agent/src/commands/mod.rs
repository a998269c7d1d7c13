//! One module per operation over a [`Repository`](crate::Repository): what
//! the `cairn` binary and the agent run. Each is built from the format and
//! storage modules at the crate root (trees, blobs, packs, the index, the
//! repository writer) and owns no part of the format itself; no module at
//! the root depends on a command.

pub mod backup;
pub mod check;
pub mod copy;
pub mod damage;
pub mod diff;
pub mod forget;
pub mod ls;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod stats;
