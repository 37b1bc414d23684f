//! One error type per operation, so a caller matches only what that operation can return.

use std::fmt;
use std::io;
use std::path::PathBuf;
use weir_proto::Offset;

/// Why [`crate::Log::open`] failed. Nothing on disk was changed when it returns `Corrupt`.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("log storage I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record that is not a torn tail failed its checks: the log refuses to open rather than
    /// silently dropping data in its middle.
    #[error(
        "corrupt log file {} at byte position {position}{}: {reason}",
        file.display(),
        AtOffset(*offset)
    )]
    Corrupt {
        file: PathBuf,
        position: u64,
        /// The offset the record at `position` should have had, when known.
        offset: Option<Offset>,
        reason: String,
    },
    /// Another `Log` (in this or another process) holds the directory.
    #[error("log directory {} is in use by another writer", dir.display())]
    Locked { dir: PathBuf },
    #[error("invalid log config: {0}")]
    Config(String),
}

/// Why an append, commit, sync, retention pass or truncation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The call that met this error also poisoned the log (unless it was a file deletion).
    #[error("log storage I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An earlier write or fsync failed; the log refuses all further writes. Holds that error's
    /// text. Reopen the log to recover from what is on disk.
    #[error("log is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// The payload is larger than `record_bytes_max`; nothing was written.
    #[error("record of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    /// [`crate::Log::truncate_from`] was asked to remove records that retention already
    /// deleted (`from` is below the oldest retained offset); nothing was changed.
    #[error("cannot truncate the log from offset {from}: below its start offset {start}")]
    TruncateBelowStart { from: Offset, start: Offset },
}

/// Why [`crate::LogReader::read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `requested` is below the oldest retained offset or above the committed end.
    #[error("offset {requested} is out of range [{start}, {committed}]")]
    OutOfRange {
        requested: Offset,
        start: Offset,
        committed: Offset,
    },
    #[error(
        "corrupt log file {} at byte position {position}{}: {reason}",
        file.display(),
        AtOffset(*offset)
    )]
    Corrupt {
        file: PathBuf,
        position: u64,
        offset: Option<Offset>,
        reason: String,
    },
    #[error("log storage I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Formats `" (offset N)"`, or nothing when the offset is unknown.
struct AtOffset(Option<Offset>);

impl fmt::Display for AtOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, " (offset {offset})"),
            None => Ok(()),
        }
    }
}

/// An I/O error and the file it happened on, converted into each operation's error type.
#[derive(Debug)]
pub(crate) struct IoAt {
    pub path: PathBuf,
    pub source: io::Error,
}

pub(crate) trait IoResultExt<T> {
    /// Attaches the path the failed operation was about.
    fn at(self, path: &std::path::Path) -> Result<T, IoAt>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T, IoAt> {
        self.map_err(|source| IoAt {
            path: path.to_owned(),
            source,
        })
    }
}

impl From<IoAt> for OpenError {
    fn from(e: IoAt) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl From<IoAt> for LogError {
    fn from(e: IoAt) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl From<IoAt> for ReadError {
    fn from(e: IoAt) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
