//! Durable program snapshots: one file per checkpoint, written to a temporary name, fsynced,
//! renamed into place and the directory fsynced, so a crash leaves either the old set or the
//! new one. Each file carries a CRC32 over everything before it; a file that fails it is
//! skipped (with a warning) in favour of an older one, and the log after that one is replayed.
//!
//! File `snapshot-<N>.bin`, N = 1 + the last input offset included (0 for a fresh state), 20
//! digits so names sort by offset:
//!
//! ```text
//! magic "WEIRSNP1" | u8 flags (1: has offset, 2: has state) | u64 after_offset
//! | [32] module hash | u64 state_len | state | u32 extra_len | extra
//! | u32 crc32 of all the above                                               (little-endian)
//! ```
//!
//! `extra` is the caller's bookkeeping, stored and returned as is (the node keeps its event
//! log position and program version there).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Checkpoint, ModuleHash};

const MAGIC: &[u8; 8] = b"WEIRSNP1";
const HEADER_BYTES: usize = 8 + 1 + 8 + 32 + 8;
const FLAG_OFFSET: u8 = 1;
const FLAG_STATE: u8 = 2;
/// Snapshots kept: the newest and one before it, in case the newest turns out corrupt.
pub const SNAPSHOTS_KEPT: usize = 2;
/// A program state larger than this is refused (it would not fit the program's memory anyway).
pub const STATE_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// The caller's bookkeeping bytes.
pub const EXTRA_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A directory of snapshots for one topic's program.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SnapshotStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SnapshotError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir })
    }

    fn file_name(checkpoint: &Checkpoint) -> String {
        let n = checkpoint.after_offset.map_or(0, |offset| offset + 1);
        format!("snapshot-{n:020}.bin")
    }

    /// Writes `checkpoint` (with the caller's `extra` bytes, at most [`EXTRA_BYTES_MAX`])
    /// durably and drops all but the newest [`SNAPSHOTS_KEPT`].
    pub fn save(&self, checkpoint: &Checkpoint, extra: &[u8]) -> Result<PathBuf, SnapshotError> {
        assert!(
            extra.len() <= EXTRA_BYTES_MAX,
            "snapshot extra bytes over their limit"
        );
        let state = checkpoint.state.as_deref().map(Vec::as_slice);
        let mut bytes = Vec::with_capacity(HEADER_BYTES + state.map_or(0, <[u8]>::len) + 4);
        bytes.extend_from_slice(MAGIC);
        let mut flags = 0;
        if checkpoint.after_offset.is_some() {
            flags |= FLAG_OFFSET;
        }
        if state.is_some() {
            flags |= FLAG_STATE;
        }
        bytes.push(flags);
        bytes.extend_from_slice(&checkpoint.after_offset.unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&checkpoint.module.0);
        let state = state.unwrap_or(&[]);
        bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
        bytes.extend_from_slice(state);
        bytes.extend_from_slice(&(extra.len() as u32).to_le_bytes());
        bytes.extend_from_slice(extra);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());

        let path = self.dir.join(Self::file_name(checkpoint));
        let temporary = self
            .dir
            .join(format!("{}.tmp", Self::file_name(checkpoint)));
        {
            let mut file = File::create(&temporary).map_err(io(&temporary))?;
            file.write_all(&bytes).map_err(io(&temporary))?;
            file.sync_data().map_err(io(&temporary))?;
        }
        fs::rename(&temporary, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))?;
        let mut names = self.names()?;
        names.sort();
        let excess = names.len().saturating_sub(SNAPSHOTS_KEPT);
        for old in &names[..excess] {
            let old = self.dir.join(old);
            fs::remove_file(&old).map_err(io(&old))?;
        }
        Ok(path)
    }

    fn names(&self) -> Result<Vec<String>, SnapshotError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("snapshot-") && name.ends_with(".bin") {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The newest snapshot that reads back intact, if any. Corrupt ones are skipped with a
    /// warning naming the file; an older intact one (or none: replay from the start) is used.
    pub fn load_newest(&self) -> Result<Option<(Checkpoint, Vec<u8>)>, SnapshotError> {
        let mut names = self.names()?;
        names.sort();
        for name in names.iter().rev() {
            let path = self.dir.join(name);
            let bytes = fs::read(&path).map_err(io(&path))?;
            match decode(&bytes) {
                Ok(checkpoint) => return Ok(Some(checkpoint)),
                Err(reason) => {
                    tracing::warn!(path = %path.display(), reason, "skipping a corrupt program snapshot");
                }
            }
        }
        Ok(None)
    }
}

fn decode(bytes: &[u8]) -> Result<(Checkpoint, Vec<u8>), &'static str> {
    if bytes.len() < HEADER_BYTES + 4 {
        return Err("shorter than a header");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch");
    }
    if &body[..8] != MAGIC {
        return Err("not a weir program snapshot");
    }
    let flags = body[8];
    let word = |at: usize| {
        let mut array = [0u8; 8];
        array.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(array)
    };
    let after_offset = word(9);
    let mut module = [0u8; 32];
    module.copy_from_slice(&body[17..49]);
    let state_len = word(49);
    let rest = (body.len() - HEADER_BYTES) as u64;
    if state_len > STATE_BYTES_MAX || state_len + 4 > rest {
        return Err("state length does not match the file");
    }
    let state_end = HEADER_BYTES + state_len as usize;
    let state = &body[HEADER_BYTES..state_end];
    let extra_len = u32::from_le_bytes([
        body[state_end],
        body[state_end + 1],
        body[state_end + 2],
        body[state_end + 3],
    ]) as usize;
    if extra_len > EXTRA_BYTES_MAX || state_end + 4 + extra_len != body.len() {
        return Err("extra length does not match the file");
    }
    let checkpoint = Checkpoint {
        after_offset: (flags & FLAG_OFFSET != 0).then_some(after_offset),
        module: ModuleHash(module),
        state: (flags & FLAG_STATE != 0).then(|| Arc::new(state.to_vec())),
    };
    Ok((checkpoint, body[state_end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(offset: Option<u64>, state: Option<&[u8]>) -> Checkpoint {
        Checkpoint {
            after_offset: offset,
            module: ModuleHash::of(b"module"),
            state: state.map(|s| Arc::new(s.to_vec())),
        }
    }

    #[test]
    fn the_newest_snapshot_is_loaded_and_only_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.load_newest().unwrap(), None);
        for (offset, state) in [
            (None, None),
            (Some(9), Some(&b"a"[..])),
            (Some(99), Some(b"bb")),
        ] {
            store.save(&checkpoint(offset, state), b"extra").unwrap();
        }
        assert_eq!(
            store.load_newest().unwrap(),
            Some((checkpoint(Some(99), Some(b"bb")), b"extra".to_vec()))
        );
        assert_eq!(store.names().unwrap().len(), SNAPSHOTS_KEPT);
    }

    #[test]
    fn a_corrupt_newest_snapshot_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.save(&checkpoint(Some(9), Some(b"old")), b"").unwrap();
        let newest = store
            .save(&checkpoint(Some(19), Some(b"new")), b"")
            .unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        let last_state_byte = bytes.len() - 9;
        bytes[last_state_byte] ^= 0xff;
        fs::write(&newest, &bytes).unwrap();
        assert_eq!(
            store.load_newest().unwrap(),
            Some((checkpoint(Some(9), Some(b"old")), Vec::new()))
        );
        // A truncated file is skipped too.
        fs::write(&newest, &bytes[..10]).unwrap();
        assert_eq!(
            store.load_newest().unwrap(),
            Some((checkpoint(Some(9), Some(b"old")), Vec::new()))
        );
    }
}
