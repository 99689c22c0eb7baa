//! Standard output for the three binaries: a closed pipe ends the process
//! quietly, as it ends `grep`.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE and
//! `println!` panics. Restoring SIGPIPE's default disposition at start
//! would fix stdout but also kill `snp-vmm` when an API client or the
//! event monitor's reader goes away, and `snp-remote` when the VMM closes
//! its socket early: those must stay errors. So SIGPIPE stays ignored, and
//! only a failed write to stdout, through [`outln!`] and [`out!`], ends the
//! process the way the default disposition would have: SIGPIPE's default
//! is restored and the signal raised, so the shell sees exactly what it
//! sees from `grep` (status 128 + 13).

use std::io::{self, Write};

/// Writes `args` and a newline to stdout; see the module documentation for
/// what happens on a closed pipe.
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `args` to stdout, like [`outln!`] without the newline.
#[allow(unused_macros)]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// Writes `args` to stdout and flushes; ends the process on a failure.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        failed(&e);
    }
}

/// Ends the process after a failed write to stdout: by SIGPIPE on a closed
/// pipe, with status 2 and a message otherwise.
pub fn failed(error: &io::Error) -> ! {
    if error.kind() == io::ErrorKind::BrokenPipe {
        // SAFETY: signal() and raise() have no memory-safety
        // preconditions; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + libc::SIGPIPE);
    }
    eprintln!("cannot write to standard output: {error}");
    std::process::exit(2);
}

/// Prints an error chain (outermost first) on stderr: `PROGRAM: outer:
/// inner` on one line, or under `--json` one line `{"error": ["outer",
/// "inner"]}`, as in the API's error bodies.
pub fn print_chain(program: &str, chain: &[String], json: bool) {
    let chain: Vec<String> = chain
        .iter()
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if json {
        eprintln!("{}", serde_json::json!({ "error": chain }));
    } else {
        eprintln!("{program}: {}", chain.join(": "));
    }
}

/// [`print_chain`] for `error` and its sources.
pub fn print_error(program: &str, error: &anyhow::Error, json: bool) {
    let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
    print_chain(program, &chain, json);
}
