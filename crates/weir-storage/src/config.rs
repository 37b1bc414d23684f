//! How a [`crate::Log`] is tuned: segment size, index density, size limits, retention and fsync.

use crate::error::OpenError;
use std::fmt;
use std::str::FromStr;

/// Largest segment a log may be configured with. Index entries store file positions as `u32`, and
/// a record starts below `segment_bytes_max`, so this keeps every position representable.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Largest payload a log may be configured to accept. The record length field is a `u32`; this
/// stays far below it and far above the protocol's own frame limit.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// When [`crate::Log::commit`] calls `fsync` (`File::sync_data`).
///
/// Text form (for config files and flags): `always`, `interval:<ms>`, `never`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit that has new records syncs before it returns: a committed record survives a
    /// power cut.
    #[default]
    Always,
    /// A commit syncs only if `interval_ms` passed since the last sync. Records committed since
    /// then are visible to readers but can be lost in a power cut or kernel crash (not in a
    /// process crash: they are already in the page cache).
    Interval { interval_ms: u64 },
    /// Commits never sync (segment rolls and [`crate::Log::sync`] still do): a power cut can
    /// lose everything written to the active segment since it was created.
    Never,
}

/// A string that is not `always`, `interval:<ms>` or `never`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy {given:?}: expected \"always\", \"interval:<ms>\" or \"never\"")]
pub struct ParseFsyncPolicyError {
    pub given: String,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseFsyncPolicyError {
            given: s.to_owned(),
        };
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(error)?;
                // `u64::from_str` accepts a leading '+'; the documented syntax is digits only.
                if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(error());
                }
                let interval_ms = ms.parse().map_err(|_| error())?;
                Ok(Self::Interval { interval_ms })
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval { interval_ms } => write!(f, "interval:{interval_ms}"),
            Self::Never => f.write_str("never"),
        }
    }
}

/// Tuning of one log. [`LogConfig::default`] is what a node uses unless told otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A new segment file is started when appending to the active one would make it larger than
    /// this (a segment always holds at least one record, so a single larger record still fits).
    /// `1..=SEGMENT_BYTES_MAX`.
    pub segment_bytes_max: u64,
    /// An index entry is written at least every this many bytes of records, so a read scans at
    /// most about this much (plus one record) before reaching the offset it wants. At least 1.
    pub index_interval_bytes: u64,
    /// Largest payload accepted by `append`, and the largest a reader or recovery will allocate
    /// for. Lowering it below records already stored makes them unreadable (reported as corrupt).
    /// At most [`RECORD_BYTES_MAX`].
    pub record_bytes_max: usize,
    /// Delete the oldest segments while the log's total size exceeds this.
    pub retention_bytes: Option<u64>,
    /// Delete the oldest segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
            record_bytes_max: weir_proto::limits::FRAME_BYTES_MAX,
            retention_bytes: None,
            retention_ms: None,
            fsync: FsyncPolicy::Always,
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let problem = if !(1..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes_max) {
            format!(
                "segment_bytes_max {} is outside 1..={SEGMENT_BYTES_MAX}",
                self.segment_bytes_max
            )
        } else if self.index_interval_bytes == 0 {
            "index_interval_bytes must be at least 1".to_owned()
        } else if self.record_bytes_max > RECORD_BYTES_MAX {
            format!(
                "record_bytes_max {} is above {RECORD_BYTES_MAX}",
                self.record_bytes_max
            )
        } else {
            return Ok(());
        };
        Err(OpenError::Config(problem))
    }
}
