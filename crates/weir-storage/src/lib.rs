//! weir-storage: one topic's durable log.
//!
//! A log is a directory of segment files (`<base offset>.log`, 20 digits) of CRC-framed records,
//! each with a sparse offset index (`<base offset>.idx`). One [`Log`] writes: it appends, then
//! makes a batch durable and visible with one [`Log::commit`] (group commit). Any number of
//! [`LogReader`]s read committed records concurrently. [`Log::truncate_from`] removes a suffix
//! (a Raft follower dropping entries that conflict with its leader's);
//! [`Log::remove_segments_below`] deletes whole segments below an offset (Raft compaction) and
//! [`Log::reset_to`] empties the log to restart it at an offset (installing a snapshot), both
//! without closing the log, so readers stay valid. See `docs/STORAGE.md`
//! for the byte-level format, the fsync policies, truncation, and the recovery rules.
//!
//! Nothing here is async: the node runs the writer on a thread of its own.

mod config;
mod error;
mod index;
mod log;
mod reader;
mod record;
mod recovery;
mod segment;
mod truncate;

#[cfg(test)]
mod tests;

pub use config::{
    FsyncPolicy, LogConfig, ParseFsyncPolicyError, RECORD_BYTES_MAX, SEGMENT_BYTES_MAX,
};
pub use error::{LogError, OpenError, ReadError};
pub use log::{Log, LogStats, RetentionReport};
pub use reader::{LogReader, Record};
pub use record::RECORD_HEADER_BYTES;
pub use recovery::{RecoveryReport, Truncation};
pub use weir_proto::{Offset, TimestampMs};
