//! The engine's one error type. Every variant names the object, path or key it
//! is about, so a message on its own tells the user what went wrong and where.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key file could be opened with the given password.
    #[error("wrong password: no key in the repository matches it")]
    WrongPassword,

    /// The repository location exists but holds no Cairn repository.
    #[error("no repository at {0} (run `cairn init` to create one)")]
    RepositoryNotFound(String),

    /// `init` found an existing repository.
    #[error("a repository already exists at {0}")]
    RepositoryExists(String),

    /// No password was supplied and none could be asked for.
    #[error("no password given: set CAIRN_PASSWORD, CAIRN_PASSWORD_FILE or --password-file")]
    NoPassword,

    /// An object failed authentication, hashing or parsing.
    #[error("corrupt {object}: {reason}")]
    Corrupt { object: String, reason: String },

    /// A referenced object or blob does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// An identifier (snapshot, key, blob) matched more than one object.
    #[error("prefix {0:?} is ambiguous: it matches several objects")]
    AmbiguousId(String),

    /// The repository was written by a newer, incompatible format version.
    #[error(
        "repository format version {found} is not supported (this cairn reads version {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    /// Local filesystem error with the path involved. The message already
    /// says what the OS error was, so the error is not also returned as the
    /// `source()` (an error report that prints the chain would say it twice).
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    /// Storage backend failure with the object key involved (`message`
    /// includes the OS error in `cause`, when there is one).
    #[error("storage: {op} {key}: {message}")]
    Backend {
        op: &'static str,
        key: String,
        message: String,
        cause: Option<std::io::Error>,
    },

    /// Invalid user input (a bad pattern, an option out of range, ...).
    #[error("{0}")]
    InvalidInput(String),

    /// Refused operation (removing the last key, ...).
    #[error("{0}")]
    Refused(String),

    /// SIGINT or SIGTERM stopped a write before it finished.
    #[error("interrupted by a signal before the snapshot was written; the packs uploaded so far are indexed, and the next run reuses them")]
    Interrupted,

    /// A worker thread of the pipeline ended unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Build an [`Error::Io`] from an operation name, a path and the source error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }

    /// Build an [`Error::Corrupt`].
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }
}
