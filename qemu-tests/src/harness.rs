//! A test harness for end-to-end test files whose tests depend on what the
//! machine can do (a kernel module, a device): such a test is listed as
//! ignored, with the reason in its name's bracket, so the test runner reports
//! it as skipped and `make test` lists it at the end; it is never counted as
//! passed. Files use it with `harness = false` and a `main` that lists their
//! tests.

use libtest_mimic::{Arguments, Failed, Trial};

/// A test that runs here; a panic fails it, as in the standard harness.
pub fn test(name: &str, run: fn()) -> Trial {
    Trial::test(name, move || {
        run();
        Ok(())
    })
}

/// A test this machine cannot run, with why. Asked to run anyway
/// (`--include-ignored`), it fails rather than pass without running.
pub fn skipped(name: &str, reason: &str) -> Trial {
    let why = reason.to_string();
    Trial::test(name, move || Err(Failed::from(format!("cannot run on this machine: {why}")))).with_kind(format!("skipped: {reason}")).with_ignored_flag(true)
}

/// Runs the listed tests with the command line's filters and options, and exits.
pub fn main(trials: Vec<Trial>) -> ! {
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}
