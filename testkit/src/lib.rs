//! Real servers for Cairn's tests, shared by the agent's integration tests
//! and the e2e tests: Garage (S3), and the spawning of server processes that
//! die with the test process.

use std::process::Command;

pub mod garage;

/// Spawn a test server that the kernel kills when this test process exits
/// (PR_SET_PDEATHSIG). That signal fires when the spawning *thread* exits, so
/// the spawn happens on a thread that lives as long as the process, not on the
/// thread of whichever test asked first.
pub fn spawn_server(mut cmd: Command) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("spawner thread ended")))
}
