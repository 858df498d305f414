//! Signal handling for processes that run a [`Daemon`]: SIGTERM and SIGINT
//! shut it down, SIGUSR1 prints its counters (and writes the stats file),
//! SIGHUP reloads the configuration ([`Daemon::reload`]: peers, keys, the
//! allowlist, exports and imports).

use std::{io, thread};

use crate::{daemon::Daemon, log};

/// Blocks SIGTERM, SIGINT, SIGUSR1 and SIGHUP in the calling thread (and so in every
/// thread it starts afterwards) and starts a thread that takes them with
/// `sigwait` and acts on `daemon`. Call it before [`Daemon::run`].
///
/// # Errors
///
/// If the signal mask cannot be set or the thread cannot be started.
pub fn handle_signals(daemon: &Daemon) -> io::Result<()> {
    let set = block_signals()?;
    let daemon = daemon.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(&set, &daemon))?;
    Ok(())
}

fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

fn signal_loop(set: &libc::sigset_t, daemon: &Daemon) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t whose signals are blocked
        // in every thread; `sig` is a live c_int.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGUSR1 {
            eprint!("{}", daemon.stats_text());
            daemon.write_stats_file();
        } else if sig == libc::SIGHUP {
            // Errors are logged by the reload itself; the running
            // configuration stays.
            let _ = daemon.reload();
        } else {
            log::info!("signal {sig}: shutting down");
            daemon.shutdown();
            return;
        }
    }
}
