//! How the examples end: an error printed as a sentence on standard error and a failing exit
//! code, rather than a panic's backtrace or a `Debug` dump. Shared by the numbered examples.

use std::error::Error;
use std::process::ExitCode;

/// The exit code of a run, printing its error if it failed.
pub fn report(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
