//! Running under systemd: readiness notifications (`Type=notify`, through the
//! sd-notify crate; nothing happens without `NOTIFY_SOCKET`), and the binary
//! upgrade that SIGUSR2 starts: the process runs its successor, which takes the
//! listeners over `--handover` and tells systemd it is the main process now.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};

use sd_notify::NotifyState;

use crate::log::Level;

/// Tell the service manager (if any) what happens; a failure is logged once
/// per call, and changes nothing else.
fn notify(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        crate::log!(Level::Warn, "corelb: systemd notification {what}: {e}");
    }
}

/// The proxy serves: `READY=1`. A successor that took over the listeners of a
/// running corelb also says it is the main process now (`MAINPID`), which a
/// unit with `NotifyAccess=all` accepts from it.
pub fn ready(took_over: bool) {
    if took_over {
        notify(
            "MAINPID",
            &[NotifyState::MainPid(std::process::id()), NotifyState::Ready],
        );
    } else {
        notify("READY", &[NotifyState::Ready]);
    }
}

/// A reload begins (`RELOADING=1` with the clock systemd wants); `ready` ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => notify("RELOADING", &[NotifyState::Reloading]),
    }
}

/// The proxy stops: `STOPPING=1`.
pub fn stopping() {
    notify("STOPPING", &[NotifyState::Stopping]);
}

/// The binary this process was started from, as its path reads now: after a
/// package upgrade replaced it, the new one (Linux shows the old, unlinked
/// file as "PATH (deleted)").
fn own_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Start the successor for a binary upgrade: the binary at this process's path
/// with this process's arguments (which include `--handover`), its output
/// where this process's goes. It takes the listeners over the handover socket;
/// this process then drains and exits as after any handover.
pub fn start_successor() -> io::Result<Child> {
    let binary = own_binary()?;
    Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))
}
