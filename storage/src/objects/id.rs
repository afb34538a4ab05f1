//! Names of objects and chunks, and where a chunk lives on the brick's disk.
//!
//! A chunk file's place is fixed by its name alone (no lookup table), so the
//! layout below is a persistent format: changing it needs a new
//! [`LAYOUT_VERSION`].

use std::fmt;
use std::path::PathBuf;

/// Version of the on-disk layout of `DIR/objects/`, written to
/// `DIR/objects/LAYOUT` as the line `stretto-objects <version>`.
pub const LAYOUT_VERSION: u32 = 1;

/// Name of the directory under the brick directory that holds chunk files.
pub const OBJECTS_DIR: &str = "objects";

/// Name of the layout marker file inside [`OBJECTS_DIR`].
pub const LAYOUT_FILE: &str = "LAYOUT";

/// A file identifier, as in Coda: which volume, which vnode in it, and a
/// uniquifier that is never reused for that vnode slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fid {
    /// Volume id.
    pub volume: u32,
    /// Vnode number inside the volume.
    pub vnode: u32,
    /// Uniquifier: tells apart objects that reused a vnode number.
    pub unique: u32,
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.volume, self.vnode, self.unique)
    }
}

/// One chunk of an object: the unit a brick stores as one sparse file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// The object.
    pub fid: Fid,
    /// Chunk number inside the object (chunk `i` covers object bytes
    /// `[i * chunk_size, (i + 1) * chunk_size)`).
    pub index: u64,
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.fid, self.index)
    }
}

/// The 20-byte key of a chunk, hashed to place it. All fields little-endian:
///
/// ```text
///  0               4               8               12                              20
/// +---------------+---------------+---------------+-------------------------------+
/// | volume u32 LE | vnode u32 LE  | unique u32 LE | index u64 LE                  |
/// +---------------+---------------+---------------+-------------------------------+
/// ```
///
/// The fan-out directories are the top two bytes of `crc32c(key)`; crc32c
/// is used (not `std`'s hasher) because the result must never change
/// between builds: it decides where existing files are found.
pub const KEY_LEN: usize = 20;
/// Offset of `volume` in the chunk key.
pub const KEY_VOLUME: usize = 0;
/// Offset of `vnode` in the chunk key.
pub const KEY_VNODE: usize = 4;
/// Offset of `unique` in the chunk key.
pub const KEY_UNIQUE: usize = 8;
/// Offset of `index` in the chunk key.
pub const KEY_INDEX: usize = 12;

impl ChunkId {
    /// A chunk of `fid`.
    pub fn new(fid: Fid, index: u64) -> ChunkId {
        ChunkId { fid, index }
    }

    /// The placement key drawn at [`KEY_LEN`].
    pub fn key(&self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k[KEY_VOLUME..KEY_VNODE].copy_from_slice(&self.fid.volume.to_le_bytes());
        k[KEY_VNODE..KEY_UNIQUE].copy_from_slice(&self.fid.vnode.to_le_bytes());
        k[KEY_UNIQUE..KEY_INDEX].copy_from_slice(&self.fid.unique.to_le_bytes());
        k[KEY_INDEX..KEY_LEN].copy_from_slice(&self.index.to_le_bytes());
        k
    }

    /// Stable 32-bit hash of the key (crc32c).
    pub fn placement_hash(&self) -> u32 {
        crc32c::crc32c(&self.key())
    }

    /// The chunk file's name: the four fields in fixed-width lower-case hex,
    /// `vvvvvvvv.nnnnnnnn.uuuuuuuu.iiiiiiiiiiiiiiii`, so names sort by id and
    /// a listing can be parsed back without the hash.
    pub fn file_name(&self) -> String {
        format!(
            "{:08x}.{:08x}.{:08x}.{:016x}",
            self.fid.volume, self.fid.vnode, self.fid.unique, self.index
        )
    }

    /// The two fan-out directory names (`XX`, `YY`, two hex digits each).
    pub fn fan_out(&self) -> (String, String) {
        let h = self.placement_hash();
        (
            format!("{:02x}", h >> 24),
            format!("{:02x}", (h >> 16) & 0xff),
        )
    }

    /// Path of the chunk file relative to `DIR/objects/`: `XX/YY/name`.
    pub fn relative_path(&self) -> PathBuf {
        let (a, b) = self.fan_out();
        let mut p = PathBuf::from(a);
        p.push(b);
        p.push(self.file_name());
        p
    }

    /// Parses a name made by [`ChunkId::file_name`].
    pub fn parse_file_name(name: &str) -> Option<ChunkId> {
        let mut parts = name.split('.');
        let mut field = |width: usize| {
            let p = parts.next()?;
            (p.len() == width).then_some(())?;
            u64::from_str_radix(p, 16).ok()
        };
        let volume = u32::try_from(field(8)?).ok()?;
        let vnode = u32::try_from(field(8)?).ok()?;
        let unique = u32::try_from(field(8)?).ok()?;
        let index = field(16)?;
        if parts.next().is_some() {
            return None;
        }
        Some(ChunkId::new(
            Fid {
                volume,
                vnode,
                unique,
            },
            index,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_names() {
        let c = ChunkId::new(
            Fid {
                volume: 1,
                vnode: 2,
                unique: 3,
            },
            0,
        );
        assert_eq!(c.to_string(), "1.2.3:0");
        assert_eq!(c.file_name(), "00000001.00000002.00000003.0000000000000000");
        assert_eq!(ChunkId::parse_file_name(&c.file_name()), Some(c));
        assert_eq!(ChunkId::parse_file_name("1.2.3.0"), None);
        let rel = c.relative_path();
        assert_eq!(rel.components().count(), 3);
    }

    #[test]
    fn key_layout_is_fixed() {
        let c = ChunkId::new(
            Fid {
                volume: 0x0403_0201,
                vnode: 0x0807_0605,
                unique: 0x0c0b_0a09,
            },
            0x1413_1211_100f_0e0d,
        );
        let k = c.key();
        let want: Vec<u8> = (1u8..=20).collect();
        assert_eq!(&k[..], &want[..]);
        // The placement hash is part of the on-disk format: pin one value
        // (crc32c, Castagnoli, as computed independently).
        assert_eq!(c.placement_hash(), 0x327b_0397);
        assert_eq!(c.fan_out(), ("32".to_string(), "7b".to_string()));
    }
}
