//! Stopping a long write cleanly on SIGINT or SIGTERM (Ctrl-C, `kill`, or
//! Kubernetes ending a Job past its deadline, which sends SIGTERM and then,
//! after the pod's grace period, SIGKILL).
//!
//! Commands that write (backup, copy) call [`install`] first; the engine then
//! checks [`requested`] as it walks and reads, fails with
//! [`Error::Interrupted`], and the repository writer indexes the packs
//! already uploaded, so the next run reuses them instead of uploading them
//! again. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Catch SIGINT and SIGTERM from now on: the first sets the flag that
/// [`requested`] reads, a second one terminates the process.
///
/// # Errors
/// [`Error::Internal`] when a handler cannot be installed.
pub fn install() -> Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let installed = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .and_then(|_| {
                // SAFETY: the action only stores to an atomic (async-signal-safe).
                unsafe {
                    signal_hook::low_level::register(sig, || {
                        REQUESTED.store(true, Ordering::SeqCst)
                    })
                }
            });
        installed.map_err(|e| Error::Internal(format!("cannot handle signal {sig}: {e}")))?;
    }
    Ok(())
}

/// Ask the running command to stop (what the signal handlers do).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once a stop was asked for.
///
/// # Errors
/// [`Error::Interrupted`].
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
