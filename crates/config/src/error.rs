//! Errors of the configuration store.

use std::path::PathBuf;

/// Everything that can go wrong in the configuration store. Messages name the file or path
/// involved and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file-system operation on the store's files failed.
    #[error("cannot {action} {}: {source}; check that the directory exists, is writable and the disk is not full", path.display())]
    Io {
        /// What was being done ("append to", "create", "rename", …).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration input file (config.yaml / JSON) could not be parsed.
    #[error("cannot parse configuration file {}: {reason}; fix the YAML/JSON syntax (a mapping at the top level is required)", path.display())]
    FileFormat {
        /// The input file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A JSON pointer (RFC 6901) is malformed.
    #[error(
        "invalid JSON pointer {pointer:?}: {reason}; a pointer is empty or starts with '/', with '~' written as '~0' and '/' as '~1'"
    )]
    InvalidPointer {
        /// The pointer as given.
        pointer: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A change addresses the tree in a way it cannot take (e.g. replacing the root with a scalar).
    #[error("invalid change at config path {path:?}: {reason}")]
    InvalidChange {
        /// The path of the change, as given.
        path: Vec<String>,
        /// Why it is rejected.
        reason: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ConfigError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
