//! Stopping child processes the way an operator would: SIGTERM, then a bounded wait for the
//! exit itself.

use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

/// Sends `signal` (e.g. `TERM`) to `pid` with `kill(1)`.
fn signal(name: &str, pid: u32) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1) (Debian's procps)");
    assert!(sent.success(), "kill -{name} {pid}: {sent}");
}

/// SIGTERM, then waits up to `within` for the process to exit: its status if it did, `None`
/// (and SIGKILL) if not.
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    signal("TERM", pid);
    std::thread::scope(|scope| {
        let (exited, exit) = mpsc::channel();
        scope.spawn(move || {
            let _ = exited.send(child.wait());
        });
        match exit.recv_timeout(within) {
            Ok(Ok(status)) => Some(status),
            // The waiter still holds the process, unreaped, so the pid is still its own.
            _ => {
                signal("KILL", pid);
                None
            }
        }
    })
}
