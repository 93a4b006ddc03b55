//! Which exit code a failure gets (the codes are `kim_api::exit`): a configuration error makes
//! the operator fail a build at once, anything else is retried.

use kim_api::exit;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retrying cannot help: flags, settings, a malformed or unreadable input.
    Config,
    /// An input file does not exist (yet).
    NoInput,
    /// Storage or network.
    Transient,
}

impl Class {
    pub fn code(self) -> u8 {
        match self {
            Class::Config => exit::CONFIG,
            Class::NoInput => exit::NO_INPUT,
            Class::Transient => exit::TRANSIENT,
        }
    }

    /// Reading an input file: missing → NoInput; not permitted, a directory, invalid → Config;
    /// other I/O errors (EIO, a stale network mount) → Transient.
    pub fn of_read(e: &std::io::Error) -> Class {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound => Class::NoInput,
            PermissionDenied | IsADirectory | InvalidInput | InvalidData | NotADirectory => Class::Config,
            _ => Class::Transient,
        }
    }
}

/// An error with its class; `main` turns it into the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct Failure {
    pub class: Class,
    pub error: anyhow::Error,
}

/// `result.class(Class::Config)?`: tags the error of a step with its class.
pub trait Classify<T> {
    fn class(self, class: Class) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> Classify<T> for Result<T, E> {
    fn class(self, class: Class) -> Result<T, Failure> {
        self.map_err(|e| Failure { class, error: e.into() })
    }
}

/// The exit code of a failed command: its class's code, or `FAILURE` when unclassified.
pub fn code_of(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<Failure>()).map_or(exit::FAILURE, |f| f.class.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_are_classified_by_kind() {
        let missing = std::fs::read("/nonexistent/kim/file").unwrap_err();
        assert_eq!(Class::of_read(&missing), Class::NoInput);
        let dir = std::fs::read("/").unwrap_err();
        assert_eq!(Class::of_read(&dir), Class::Config);
        let other = std::io::Error::other("stale handle");
        assert_eq!(Class::of_read(&other), Class::Transient);
    }

    #[test]
    fn the_code_survives_added_context() {
        use anyhow::Context;
        let r: Result<(), Failure> = Err(anyhow::anyhow!("bad")).class(Class::Config);
        let e = r.context("indexing").unwrap_err();
        assert_eq!(code_of(&e), exit::CONFIG);
        assert_eq!(format!("{e:#}"), "indexing: bad");
        assert_eq!(code_of(&anyhow::anyhow!("plain")), exit::FAILURE);
    }
}
