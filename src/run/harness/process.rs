//! What the test binary does for its process as a whole: stop when its parent is gone, and keep
//! insta's mismatch panics quiet.

/// Stop the run when the process that started it is gone: SIGINT to `cargo test` ends cargo,
/// and this binary would run on, re-parented. Exiting ends the sandbox workers too (their
/// parent-death signal).
pub(crate) fn stop_when_parent_is_gone() {
    let parent = unsafe { libc::getppid() };
    let name = std::fs::read_to_string(format!("/proc/{parent}/comm"))
        .map(|comm| comm.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let watch = move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if unsafe { libc::getppid() } != parent {
                eprintln!("codegen: the parent process ({name}, pid {parent}) is gone; stopping");
                std::process::exit(101);
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("codegen-parent-watch".into())
        .spawn(watch)
    {
        eprintln!("warning: failed to watch the parent process: {e}");
    }
}

/// insta reports a snapshot mismatch by printing the diff and then panicking; the panic message
/// and backtrace add nothing to the diff, so they are not printed. Other panics are.
pub(crate) fn quiet_snapshot_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_insta = info.location().is_some_and(|l| l.file().contains("insta"));
        if !from_insta {
            default_hook(info);
        }
    }));
}
