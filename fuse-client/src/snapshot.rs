//! The attribute snapshot: this client's cached inode records (with their
//! versions) and single names (`lookup`), kept in the cache directory
//! across an unmount, with the change-feed position they are valid at.
//!
//! A snapshot at position `(seq, tag)` holds, for every key in it, the
//! store's value at commit `seq` or a newer one: it is written only once
//! the callback path has dropped every key changed up to `seq` (see
//! [`crate::mount`]). At mount the file is taken (read and deleted at
//! once, so a crash in the session it starts never reuses it) and
//! [`check`] asks the store's feed for the keys changed after that
//! position, from that very commit (its tag): the changed keys are
//! dropped, the others are trusted as if fetched. A feed that no longer
//! reaches back that far, a position that is not on the store's log (a
//! volume made again under the same name, a commit that lost to another
//! sequencer's), another volume, or any decode error discards it whole.
//!
//! This module does no other I/O than its own file and the feed; it must
//! not decide what is cached (the caller picks the records and their cap).
//!
//! # File format, version 1 (little-endian), `DIR/attrs.snap`
//!
//! ```text
//!  0  8  magic "STRTATTR"
//!  8  4  format version (1)
//! 12  4  volume id
//! 16  8  feed position: sequence number
//! 24  8  feed position: tag (never 0)
//! 32  4  inode count
//! 36  4  entry count
//! 40  1  volume name length n (1..=255)
//! 41  n  volume name
//!     then per inode:  vnode u32 | unique u32 | record version u64 |
//!                      record length u32 | the inode record (inode.rs)
//!     then per entry:  dir vnode u32 | dir unique u32 | child vnode u32 |
//!                      child unique u32 | kind u8 | name length u8 (1..)
//!                      | name
//!  .  4  crc32c of every byte before it
//! ```
//!
//! Fids carry the volume id of the header. Written to `attrs.snap.tmp`,
//! synced, renamed into place and the directory synced.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use volume::records::{Change, FeedPos, RecordError, RecordStore};
use volume::Fid;

use crate::inode::{parse_key, Dirent, FormatError, Inode, KeyRef, Kind};

/// The snapshot's file name in the cache directory.
pub const FILE: &str = "attrs.snap";
const TMP: &str = "attrs.snap.tmp";

pub const MAGIC: &[u8; 8] = b"STRTATTR";
pub const VERSION: u32 = 1;
const OFF_VERSION: usize = 8;
const OFF_VOLUME: usize = 12;
const OFF_SEQ: usize = 16;
const OFF_TAG: usize = 24;
const OFF_INODES: usize = 32;
const OFF_ENTRIES: usize = 36;
const OFF_NAME_LEN: usize = 40;
/// The fixed part before the volume name.
pub const HEADER: usize = 41;
const CRC: usize = 4;
/// Fixed bytes of one inode (before the record).
const INODE_FIXED: usize = 20;
/// Fixed bytes of one entry (before the name).
const ENTRY_FIXED: usize = 18;

/// Feed entries asked for per call while checking.
const PAGE: usize = 512;
/// Feed calls [`read_feed_to`] makes before it gives up.
const MAX_PAGES: usize = 4096;
/// Of these, answers short of the target it waits out (200 ms each).
const MAX_WAITS: usize = 25;

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub volume: u32,
    pub name: String,
    pub pos: FeedPos,
    pub inodes: Vec<(Fid, u64, Inode)>,
    pub entries: Vec<(Fid, Vec<u8>, Dirent)>,
}

/// Why bytes are not a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot too short ({0} bytes)")]
    Short(usize),
    #[error("not an attribute snapshot (bad magic)")]
    Magic,
    #[error("unknown snapshot format version {0}")]
    Version(u32),
    #[error("snapshot checksum mismatch")]
    Checksum,
    #[error("bad snapshot field: {0}")]
    Field(&'static str),
    #[error("{0} bytes left after the snapshot's last entry")]
    Trailing(usize),
    #[error("bad record in the snapshot: {0}")]
    Record(#[from] FormatError),
}

/// Builds a snapshot's bytes record by record, within a byte cap.
pub struct Encoder {
    buf: Vec<u8>,
    volume: u32,
    cap: usize,
    inodes: u32,
    entries: u32,
    full: bool,
}

impl Encoder {
    /// A snapshot of `volume` (named `name`) at `pos`, at most `cap` bytes.
    pub fn new(volume: u32, name: &str, pos: FeedPos, cap: usize) -> Encoder {
        let mut buf = Vec::with_capacity(HEADER + name.len() + 4096);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&volume.to_le_bytes());
        buf.extend_from_slice(&pos.seq.to_le_bytes());
        buf.extend_from_slice(&pos.tag.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let name = &name.as_bytes()[..name.len().min(255)];
        buf.push(name.len() as u8);
        buf.extend_from_slice(name);
        Encoder {
            buf,
            volume,
            cap,
            inodes: 0,
            entries: 0,
            full: false,
        }
    }

    fn fits(&mut self, n: usize) -> bool {
        if self.full || self.buf.len() + n + CRC > self.cap {
            self.full = true;
            return false;
        }
        true
    }

    /// Adds an inode record; false (and nothing added from now on) once
    /// the cap is reached. Inodes go before any entry.
    pub fn push_inode(&mut self, fid: Fid, version: u64, i: &Inode) -> bool {
        if fid.volume != self.volume || self.entries > 0 {
            return !self.full;
        }
        let rec = i.encode();
        if !self.fits(INODE_FIXED + rec.len()) {
            return false;
        }
        self.buf.extend_from_slice(&fid.vnode.to_le_bytes());
        self.buf.extend_from_slice(&fid.unique.to_le_bytes());
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf
            .extend_from_slice(&(rec.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.inodes += 1;
        true
    }

    /// Adds a name; false (and nothing added from now on) once the cap
    /// is reached.
    pub fn push_entry(&mut self, dir: Fid, name: &[u8], d: &Dirent) -> bool {
        if dir.volume != self.volume
            || d.fid.volume != self.volume
            || name.is_empty()
            || name.len() > 255
        {
            return !self.full;
        }
        if !self.fits(ENTRY_FIXED + name.len()) {
            return false;
        }
        self.buf.extend_from_slice(&dir.vnode.to_le_bytes());
        self.buf.extend_from_slice(&dir.unique.to_le_bytes());
        self.buf.extend_from_slice(&d.fid.vnode.to_le_bytes());
        self.buf.extend_from_slice(&d.fid.unique.to_le_bytes());
        self.buf.push(d.kind as u8);
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name);
        self.entries += 1;
        true
    }

    /// Inodes and entries added so far.
    pub fn counts(&self) -> (u32, u32) {
        (self.inodes, self.entries)
    }

    /// The snapshot's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[OFF_INODES..OFF_INODES + 4].copy_from_slice(&self.inodes.to_le_bytes());
        self.buf[OFF_ENTRIES..OFF_ENTRIES + 4].copy_from_slice(&self.entries.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// The whole of `s` as bytes (no cap).
pub fn encode(s: &Snapshot) -> Vec<u8> {
    let mut e = Encoder::new(s.volume, &s.name, s.pos, usize::MAX);
    for (fid, v, i) in &s.inodes {
        e.push_inode(*fid, *v, i);
    }
    for (dir, name, d) in &s.entries {
        e.push_entry(*dir, name, d);
    }
    e.finish()
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(SnapshotError::Short(self.b.len()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// Decodes a snapshot (syntax only: magic, version, checksum, lengths,
/// records; whether it fits this mount is the caller's question).
pub fn decode(b: &[u8]) -> Result<Snapshot, SnapshotError> {
    if b.len() < HEADER + CRC {
        return Err(SnapshotError::Short(b.len()));
    }
    if &b[..OFF_VERSION] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let version = u32_at(OFF_VERSION);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let (body, crc) = b.split_at(b.len() - CRC);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
        return Err(SnapshotError::Checksum);
    }
    let volume = u32_at(OFF_VOLUME);
    let pos = FeedPos {
        seq: u64_at(OFF_SEQ),
        tag: u64_at(OFF_TAG),
    };
    if pos.tag == 0 {
        return Err(SnapshotError::Field("feed tag 0"));
    }
    let n_inodes = u32_at(OFF_INODES);
    let n_entries = u32_at(OFF_ENTRIES);
    let mut r = Reader { b: body, at: 0 };
    r.take(OFF_NAME_LEN)?;
    let nl = r.u8()? as usize;
    if nl == 0 {
        return Err(SnapshotError::Field("empty volume name"));
    }
    let name = std::str::from_utf8(r.take(nl)?)
        .map_err(|_| SnapshotError::Field("volume name"))?
        .to_owned();
    let fid = |vnode, unique| Fid {
        volume,
        vnode,
        unique,
    };
    // Counts are checked against the bytes, not trusted for allocation.
    let mut inodes = Vec::new();
    for _ in 0..n_inodes {
        let f = fid(r.u32()?, r.u32()?);
        let version = r.u64()?;
        let len = r.u32()? as usize;
        inodes.push((f, version, Inode::decode(r.take(len)?)?));
    }
    let mut entries = Vec::new();
    for _ in 0..n_entries {
        let dir = fid(r.u32()?, r.u32()?);
        let child = fid(r.u32()?, r.u32()?);
        let k = r.u8()?;
        let kind = Kind::from_u8(k).ok_or(FormatError::Kind(k))?;
        let len = r.u8()? as usize;
        if len == 0 {
            return Err(SnapshotError::Field("empty name"));
        }
        let name = r.take(len)?.to_vec();
        entries.push((dir, name, Dirent { fid: child, kind }));
    }
    if r.at != body.len() {
        return Err(SnapshotError::Trailing(body.len() - r.at));
    }
    Ok(Snapshot {
        volume,
        name,
        pos,
        inodes,
        entries,
    })
}

/// Writes `bytes` as the snapshot under `dir`: a temporary file, synced,
/// renamed into place, the directory synced.
pub fn store(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Takes the snapshot under `dir`, if any: reads it and deletes it (and
/// a temporary file a crash left), durably, before returning.
pub fn take(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let _ = std::fs::remove_file(dir.join(TMP));
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::fs::remove_file(&path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Some(bytes))
}

/// Reads `store`'s feed after `from.seq` until it has passed `target`
/// (a head asked for before), handing every change to `f`; the first
/// call checks that the log holds the very commit `from` names when
/// `checked`. Returns the position reached: every keyed commit up to it
/// went through `f`.
pub async fn read_feed_to(
    store: &dyn RecordStore,
    from: FeedPos,
    checked: bool,
    target: u64,
    mut f: impl FnMut(&Change),
) -> Result<u64, RecordError> {
    let mut reached = from.seq;
    let (mut changes, mut newest) = if checked {
        store.changes_from(from, PAGE, 0).await?
    } else {
        store.changes(from.seq, PAGE, 0).await?
    };
    let mut waits = 0;
    for _ in 0..MAX_PAGES {
        let wait = if changes.is_empty() {
            // No keyed commit after `reached` up to `newest` (one answer
            // said both).
            reached = reached.max(newest);
            if reached >= target {
                return Ok(reached);
            }
            // A brick behind the head answered: ask again, waiting a little.
            waits += 1;
            if waits > MAX_WAITS {
                break;
            }
            200
        } else {
            for c in &changes {
                reached = reached.max(c.seq);
                f(c);
            }
            0
        };
        (changes, newest) = store.changes(reached, PAGE, wait).await?;
    }
    Err(RecordError::Other(format!(
        "the change feed did not reach commit {target} (at {reached})"
    )))
}

/// What [`check`] left of a snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The feed position the remaining records are valid at (the
    /// callback path goes on from here).
    pub reached: u64,
    /// Inodes changed since the snapshot (dropped from it).
    pub changed_inodes: Vec<Fid>,
    /// Keys dropped from the snapshot.
    pub dropped: usize,
}

/// Asks `store`'s feed for every key changed after `snap.pos` (from that
/// very commit) up to the store's head as of now, and drops those keys
/// from `snap`. An error (a gap, a position not on the store's log, a
/// store that cannot name its head, a feed that does not answer) means
/// none of it may be trusted.
pub async fn check(store: &dyn RecordStore, snap: &mut Snapshot) -> Result<Checked, RecordError> {
    let Some(head) = store.feed_head().await? else {
        return Err(RecordError::Other("the store cannot name its head".into()));
    };
    let mut inodes = HashSet::new();
    let mut entries = HashSet::new();
    let reached = read_feed_to(store, snap.pos, true, head.seq, |c| {
        match parse_key(&c.key) {
            Some(KeyRef::Inode(f)) => {
                inodes.insert(f);
            }
            Some(KeyRef::Entry(d, n)) => {
                entries.insert((d, n));
            }
            None => {}
        }
    })
    .await?;
    let before = snap.inodes.len() + snap.entries.len();
    snap.inodes.retain(|(f, _, _)| !inodes.contains(f));
    snap.entries
        .retain(|(d, n, _)| !entries.contains(&(*d, n.clone())));
    Ok(Checked {
        reached,
        changed_inodes: inodes.into_iter().collect(),
        dropped: before - snap.inodes.len() - snap.entries.len(),
    })
}

#[cfg(test)]
mod tests;
