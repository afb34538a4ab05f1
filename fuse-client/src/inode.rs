//! The namespace's record formats: inode records and directory entries,
//! and the keys they live under in the volume's [`RecordStore`].
//!
//! Keys (all integers big-endian, so a directory's entries sort together):
//!
//! ```text
//! inode:  b'i' | volume u32 | vnode u32 | unique u32                  (13 bytes)
//! entry:  b'd' | dir volume u32 | dir vnode u32 | dir unique u32 | name (13 + len)
//! ```
//!
//! Entry value (13 bytes): `volume u32 | vnode u32 | unique u32 | kind u8`
//! (little-endian), the child's fid and its [`Kind`].
//!
//! Inode value, version 1 (little-endian):
//!
//! ```text
//!  0  u8   format version (1)
//!  1  u8   kind
//!  2  u16  permission bits (mode & 0o7777)
//!  4  u32  uid
//!  8  u32  gid
//! 12  u32  nlink
//! 16  u32  rdev
//! 20  u64  size
//! 28  i64  atime seconds     36 u32 atime nanoseconds
//! 40  i64  mtime seconds     48 u32 mtime nanoseconds
//! 52  i64  ctime seconds     60 u32 ctime nanoseconds
//! 64  u32  symlink target length, then the target bytes
//!  .. u32  xattr count, then per xattr: u16 name length, name,
//!          u32 value length, value (names in byte order)
//! ```
//!
//! Decode checks syntax only (lengths, version, kind); what the values mean
//! is checked by the operation that uses them.
//!
//! [`RecordStore`]: volume::records::RecordStore

use std::collections::BTreeMap;

use volume::Fid;

/// Format version of inode records written by this code.
pub const INODE_VERSION: u8 = 1;
/// Offset of the symlink target length in an inode record.
pub const OFF_TARGET: usize = 64;
/// Longest name of a directory entry (bytes), as Linux's NAME_MAX.
pub const NAME_MAX: usize = 255;
/// Longest symlink target (bytes), as Linux's PATH_MAX.
pub const TARGET_MAX: usize = 4095;
/// Largest value of one extended attribute (as Linux's XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Longest extended attribute name (as Linux's XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            7 => Kind::Socket,
            _ => return None,
        })
    }

    /// The kind a `mode` (with its `S_IFMT` bits) names.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }
}

/// A time with nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Timespec {
        Timespec::from_system(std::time::SystemTime::now())
    }

    pub fn from_system(t: std::time::SystemTime) -> Timespec {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timespec { sec, nsec }
            }
        }
    }

    pub fn to_system(self) -> std::time::SystemTime {
        let base = std::time::UNIX_EPOCH;
        if self.sec >= 0 {
            base + std::time::Duration::new(self.sec as u64, self.nsec)
        } else {
            base - std::time::Duration::from_secs(self.sec.unsigned_abs())
                + std::time::Duration::from_nanos(self.nsec as u64)
        }
    }
}

/// An inode as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Symlink target (empty for other kinds).
    pub target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("record too short ({0} bytes)")]
    Short(usize),
    #[error("unknown inode format version {0}")]
    Version(u8),
    #[error("unknown inode kind {0}")]
    Kind(u8),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

impl Inode {
    /// A new inode of `kind` with all three times `now`.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32, now: Timespec) -> Inode {
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            target: Vec::new(),
            xattrs: BTreeMap::new(),
        }
    }

    /// `st_mode`: kind bits and permission bits.
    pub fn mode(&self) -> u32 {
        let t = match self.kind {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
            Kind::Socket => libc::S_IFSOCK,
        };
        t | self.perm as u32
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(72 + self.target.len());
        b.push(INODE_VERSION);
        b.push(self.kind as u8);
        b.extend_from_slice(&self.perm.to_le_bytes());
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.extend_from_slice(&self.gid.to_le_bytes());
        b.extend_from_slice(&self.nlink.to_le_bytes());
        b.extend_from_slice(&self.rdev.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime] {
            b.extend_from_slice(&t.sec.to_le_bytes());
            b.extend_from_slice(&t.nsec.to_le_bytes());
        }
        debug_assert_eq!(b.len(), OFF_TARGET);
        b.extend_from_slice(&(self.target.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.target);
        b.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        for (k, v) in &self.xattrs {
            b.extend_from_slice(&(k.len() as u16).to_le_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Inode, FormatError> {
        let mut r = Reader { b, at: 0 };
        let version = r.u8()?;
        if version != INODE_VERSION {
            return Err(FormatError::Version(version));
        }
        let k = r.u8()?;
        let kind = Kind::from_u8(k).ok_or(FormatError::Kind(k))?;
        let perm = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
        let uid = r.u32()?;
        let gid = r.u32()?;
        let nlink = r.u32()?;
        let rdev = r.u32()?;
        let size = r.u64()?;
        let mut times = [Timespec::default(); 3];
        for t in &mut times {
            t.sec = r.u64()? as i64;
            t.nsec = r.u32()?;
        }
        let tl = r.u32()? as usize;
        let target = r.take(tl)?.to_vec();
        let n = r.u32()?;
        let mut xattrs = BTreeMap::new();
        for _ in 0..n {
            let nl = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
            let name = r.take(nl)?.to_vec();
            let vl = r.u32()? as usize;
            xattrs.insert(name, r.take(vl)?.to_vec());
        }
        if r.at != b.len() {
            return Err(FormatError::Trailing(b.len() - r.at));
        }
        Ok(Inode {
            kind,
            perm,
            uid,
            gid,
            nlink,
            rdev,
            size,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            target,
            xattrs,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(FormatError::Short(self.b.len()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// A directory entry: the child's fid and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    pub fid: Fid,
    pub kind: Kind,
}

impl Dirent {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(13);
        b.extend_from_slice(&self.fid.volume.to_le_bytes());
        b.extend_from_slice(&self.fid.vnode.to_le_bytes());
        b.extend_from_slice(&self.fid.unique.to_le_bytes());
        b.push(self.kind as u8);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Dirent, FormatError> {
        if b.len() < 13 {
            return Err(FormatError::Short(b.len()));
        }
        if b.len() > 13 {
            return Err(FormatError::Trailing(b.len() - 13));
        }
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let kind = Kind::from_u8(b[12]).ok_or(FormatError::Kind(b[12]))?;
        Ok(Dirent {
            fid: Fid {
                volume: u(0),
                vnode: u(4),
                unique: u(8),
            },
            kind,
        })
    }
}

fn fid_bytes(tag: u8, fid: Fid) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(tag);
    k.extend_from_slice(&fid.volume.to_be_bytes());
    k.extend_from_slice(&fid.vnode.to_be_bytes());
    k.extend_from_slice(&fid.unique.to_be_bytes());
    k
}

fn fid_from(b: &[u8]) -> Fid {
    let u = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4"));
    Fid {
        volume: u(0),
        vnode: u(4),
        unique: u(8),
    }
}

/// The key of `fid`'s inode record.
pub fn inode_key(fid: Fid) -> Vec<u8> {
    fid_bytes(b'i', fid)
}

/// The prefix of every entry of directory `dir`.
pub fn dir_prefix(dir: Fid) -> Vec<u8> {
    fid_bytes(b'd', dir)
}

/// The key of entry `name` in directory `dir`.
pub fn entry_key(dir: Fid, name: &[u8]) -> Vec<u8> {
    let mut k = dir_prefix(dir);
    k.extend_from_slice(name);
    k
}

/// What a changed key names (for the callback path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Inode(Fid),
    Entry(Fid, Vec<u8>),
}

/// Parses a namespace key; `None` for keys of other users of the store.
pub fn parse_key(k: &[u8]) -> Option<KeyRef> {
    if k.len() < 13 {
        return None;
    }
    let fid = fid_from(&k[1..13]);
    match k[0] {
        b'i' if k.len() == 13 => Some(KeyRef::Inode(fid)),
        b'd' if k.len() > 13 => Some(KeyRef::Entry(fid, k[13..].to_vec())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trip_and_offsets() {
        let mut i = Inode::new(Kind::Symlink, 0o4755, 7, 8, Timespec { sec: -5, nsec: 999 });
        i.target = b"../x".to_vec();
        i.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        i.size = 1 << 40;
        let b = i.encode();
        assert_eq!(b[0], INODE_VERSION);
        assert_eq!(b[1], Kind::Symlink as u8);
        assert_eq!(&b[OFF_TARGET..OFF_TARGET + 4], &4u32.to_le_bytes());
        assert_eq!(&b[20..28], &(1u64 << 40).to_le_bytes());
        assert_eq!(Inode::decode(&b).unwrap(), i);
        assert!(matches!(
            Inode::decode(&b[..b.len() - 1]),
            Err(FormatError::Short(_))
        ));
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(Inode::decode(&bad), Err(FormatError::Version(9)));
        bad = b.clone();
        bad.push(0);
        assert_eq!(Inode::decode(&bad), Err(FormatError::Trailing(1)));
    }

    #[test]
    fn keys_parse_back() {
        let f = Fid {
            volume: 1,
            vnode: 2,
            unique: 3,
        };
        assert_eq!(parse_key(&inode_key(f)), Some(KeyRef::Inode(f)));
        assert_eq!(
            parse_key(&entry_key(f, b"name")),
            Some(KeyRef::Entry(f, b"name".to_vec()))
        );
        assert!(entry_key(f, b"a").starts_with(&dir_prefix(f)));
        let d = Dirent {
            fid: f,
            kind: Kind::Dir,
        };
        assert_eq!(Dirent::decode(&d.encode()).unwrap(), d);
        assert_eq!(parse_key(b"other"), None);
    }
}
