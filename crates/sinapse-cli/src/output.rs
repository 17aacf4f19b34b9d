//! Standard output that a closed pipe cannot crash: `sinapse train ... | head -1` must still
//! save the model. Writes go through `outln!` and `out!`; once the reader has gone, the
//! rest of the output is dropped, the command finishes its work, and [`finish`] then ends the
//! process the way `head`'s writers end, by SIGPIPE.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when standard output's reader has gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes formatted text to standard output; a closed pipe is remembered, not an error. Other
/// write errors (a full disk behind a redirection) are returned.
pub fn write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    if CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// `print!` to standard output through [`write`].
macro_rules! out {
    ($($arg:tt)*) => { crate::output::write(format_args!($($arg)*))? };
}

/// `println!` to standard output through [`write`].
macro_rules! outln {
    () => { crate::output::write(format_args!("\n"))? };
    ($($arg:tt)*) => { crate::output::write(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// Writes a line to standard error, where a closed pipe or a full disk cannot crash the
/// command (nothing else can be done about them there).
pub fn note(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{args}");
}

/// After the command's work: if standard output's reader went away, end as a writer killed
/// by SIGPIPE does (the shell sees status 141), with nothing printed.
pub fn finish() {
    if !CLOSED.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE and raising it ends the process, as it
    // would have ended had Rust not ignored the signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141);
}
