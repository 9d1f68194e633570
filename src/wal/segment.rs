//! WAL segment files: naming, header, reading back with torn-tail repair.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::frame::{RECORD_HEADER_LEN, RecordReader};

use super::{Lsn, WalError};

const MAGIC: &[u8; 8] = b"ARCDBWAL";
const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 12;

/// A segment is named after the first LSN it may contain, so name order is log order.
pub fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

/// The files of a WAL directory.
pub struct Listing {
    /// (first LSN, path), in log order.
    pub segments: Vec<(Lsn, PathBuf)>,
    /// Released segment files kept for reuse.
    pub spares: Vec<PathBuf>,
}

pub fn list_segments(dir: &Path) -> Result<Listing, WalError> {
    let mut segments = Vec::new();
    let mut spares = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(SPARE_SUFFIX) {
            spares.push(entry.path());
        } else if let Some(Ok(first)) = name.strip_suffix(".wal").map(str::parse::<Lsn>) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(Listing { segments, spares })
}

const SPARE_SUFFIX: &str = ".spare";

/// Turns a released segment into a spare for reuse. Its stale entries are harmless: a segment
/// only accepts entries from its own first LSN upwards, and stale ones are all older.
pub fn make_spare(path: &Path) -> Result<PathBuf, WalError> {
    let spare = path.with_extension(&SPARE_SUFFIX[1..]);
    fs::rename(path, &spare).map_err(|e| WalError::io(path, e))?;
    Ok(spare)
}

/// Reuses a spare as the segment starting at `first_lsn`. Overwriting blocks the file already
/// has avoids the allocation work (and the freeing work of deleting it) that stalls syncs.
pub fn reuse_spare(dir: &Path, spare: &Path, first_lsn: Lsn) -> Result<(File, PathBuf), WalError> {
    let path = segment_path(dir, first_lsn);
    // A link fails rather than replace an existing segment.
    fs::hard_link(spare, &path).map_err(|e| WalError::io(&path, e))?;
    fs::remove_file(spare).map_err(|e| WalError::io(spare, e))?;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    file.write_all(&header())
        .and_then(|_| file.sync_data())
        .map_err(|e| WalError::io(&path, e))?;
    // The new name must be durable before entries written under it are acknowledged.
    sync_dir(dir)?;
    Ok((file, path))
}

fn header() -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header
}

/// Creates a new segment with its header written and the directory entry made durable.
pub fn create_segment(dir: &Path, first_lsn: Lsn) -> Result<(File, PathBuf), WalError> {
    let path = segment_path(dir, first_lsn);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    file.write_all(&header())
        .and_then(|_| file.sync_all())
        .map_err(|e| WalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok((file, path))
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// What reading a segment back found.
pub struct SegmentContents {
    pub data: Vec<u8>,
    /// Byte length of the intact prefix (header included).
    pub valid_len: usize,
    /// Whether anything follows the intact prefix (a torn or damaged record, or stale ones).
    pub torn: bool,
    /// Whether the intact prefix ends at a record that fails its checksum or is cut short
    /// (rather than at the stale records of a reused file).
    pub damaged: bool,
}

impl SegmentContents {
    pub fn records(&self) -> RecordReader<'_> {
        RecordReader::new(&self.data[HEADER_LEN.min(self.data.len())..self.valid_len])
    }
}

/// Reads a whole segment and finds its intact prefix: the records that pass their checksum and
/// carry LSNs rising from `first_lsn` (a reused file holds older, stale records after the
/// current ones). A file too short for its header, or with a foreign header, counts as torn at
/// offset zero (a crash during creation leaves such files).
pub fn read_segment(path: &Path, first_lsn: Lsn) -> Result<SegmentContents, WalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| WalError::io(path, e))?;
    if data.len() < HEADER_LEN
        || &data[..8] != MAGIC
        || u32::from_le_bytes(data[8..12].try_into().unwrap()) != VERSION
    {
        let torn = !data.is_empty();
        return Ok(SegmentContents {
            data,
            valid_len: 0,
            torn,
            damaged: false,
        });
    }
    let mut reader = RecordReader::new(&data[HEADER_LEN..]);
    let mut valid_len = HEADER_LEN;
    let mut next_min = first_lsn;
    let mut torn = false;
    while let Some((lsn, _)) = reader.next() {
        if lsn < next_min {
            torn = true;
            break;
        }
        next_min = lsn + 1;
        valid_len = HEADER_LEN + reader.valid_len();
    }
    if reader.is_torn()
        && let Some(next) = intact_record_after(&data[valid_len..], next_min)
    {
        return Err(WalError::Damaged {
            path: path.to_path_buf(),
            offset: valid_len,
            later: format!("intact entries follow at byte {}", valid_len + next),
        });
    }
    let damaged = reader.is_torn();
    Ok(SegmentContents {
        data,
        valid_len,
        torn: torn || damaged,
        damaged,
    })
}

/// Where, after a damaged record at the start of `data`, an intact record with an LSN of at least
/// `min_lsn` begins, if anywhere. A crash mid-write leaves only the torn record's own bytes and,
/// in a reused file, stale older records; a current entry after the damage means the damage is
/// not a torn tail.
///
/// Only offsets whose header names an LSN just past `min_lsn` are checksummed: a reused file's
/// stale bytes after the damage are otherwise checksummed at every offset, quadratic in the
/// segment's size.
fn intact_record_after(data: &[u8], min_lsn: Lsn) -> Option<usize> {
    const LOOKAHEAD: Lsn = 1 << 20;
    let plausible = |start: usize| {
        data.get(start + 8..start + RECORD_HEADER_LEN)
            .map(|seq| Lsn::from_le_bytes(seq.try_into().expect("8 bytes")))
            .is_some_and(|lsn| lsn >= min_lsn && lsn - min_lsn < LOOKAHEAD)
    };
    (1..data.len()).filter(|&start| plausible(start)).find(|&start| {
        matches!(RecordReader::new(&data[start..]).next(), Some((lsn, _)) if lsn >= min_lsn)
    })
}

/// Cuts a segment back to its intact prefix and makes that durable.
pub fn truncate_segment(path: &Path, len: usize) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.set_len(len as u64)
        .and_then(|_| file.sync_all())
        .map_err(|e| WalError::io(path, e))
}

pub fn remove_segment(path: &Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io(path, e)),
    }
}
