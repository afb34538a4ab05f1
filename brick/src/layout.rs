//! A brick's directory on its local file system, and `stretto brick init`.
//!
//! ```text
//! DIR/
//!   brick.info   text, written once at init:
//!                  "stretto-brick 1\n"      magic word and format version
//!                  "id <32 hex digits>\n"   the brick's random 128-bit id
//!   secret       the pool secret, mode 0600 (a copy of --secret-file)
//!   rvm/         the recoverable metadata segment and its log (storage::rvm)
//!   objects/     chunk files (storage::objects)
//! ```
//!
//! `init` builds the directory in a temporary sibling and renames it into
//! place, so a failed init leaves nothing half-made.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use storage::rvm::{Rvm, RvmOptions};
use transport::auth::Secret;

use crate::BrickError;

/// Version of the brick directory layout written by this build.
pub const LAYOUT_VERSION: u32 = 1;
const INFO_MAGIC: &str = "stretto-brick";

/// Paths inside a brick directory.
#[derive(Debug, Clone)]
pub struct BrickDir {
    root: PathBuf,
}

impl BrickDir {
    /// The layout rooted at `root` (nothing is checked).
    pub fn new(root: &Path) -> BrickDir {
        BrickDir {
            root: root.to_path_buf(),
        }
    }

    /// The brick directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `DIR/brick.info`.
    pub fn info(&self) -> PathBuf {
        self.root.join("brick.info")
    }
    /// `DIR/secret`.
    pub fn secret(&self) -> PathBuf {
        self.root.join("secret")
    }
    /// `DIR/rvm`.
    pub fn rvm(&self) -> PathBuf {
        self.root.join("rvm")
    }
    /// `DIR/objects` is made and owned by the object store; the store takes
    /// the brick root.
    pub fn objects_parent(&self) -> &Path {
        &self.root
    }
}

/// A brick's identity, read from `brick.info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrickInfo {
    /// Random 128-bit id, fixed at init.
    pub id: BrickId,
}

/// A brick's random id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BrickId(pub u128);

impl fmt::Display for BrickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Reads and checks `brick.info`.
pub fn read_info(dir: &BrickDir) -> Result<BrickInfo, BrickError> {
    let path = dir.info();
    let text = fs::read_to_string(&path).map_err(|source| BrickError::Io {
        what: "read brick.info (is this a brick directory made by `stretto brick init`?)",
        path: path.clone(),
        source,
    })?;
    let mut lines = text.lines();
    let bad = |why: &str| BrickError::BadLayout {
        path: path.clone(),
        why: why.to_string(),
    };
    let head = lines.next().ok_or_else(|| bad("empty file"))?;
    let version = head
        .strip_prefix(INFO_MAGIC)
        .map(str::trim)
        .ok_or_else(|| bad("not a Stretto brick"))?;
    let version: u32 = version.parse().map_err(|_| bad("unreadable version"))?;
    if version != LAYOUT_VERSION {
        return Err(bad(&format!(
            "layout version {version}, this build reads {LAYOUT_VERSION}"
        )));
    }
    let id_line = lines.next().ok_or_else(|| bad("no id line"))?;
    let id_hex = id_line
        .strip_prefix("id ")
        .ok_or_else(|| bad("no id line"))?;
    let id = u128::from_str_radix(id_hex.trim(), 16).map_err(|_| bad("unreadable id"))?;
    Ok(BrickInfo { id: BrickId(id) })
}

/// RVM sizes used for every brick made by this build.
pub fn rvm_options() -> RvmOptions {
    RvmOptions::default()
}

fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> BrickError + 'p {
    move |source| BrickError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `stretto brick init DIR --secret-file F`: makes a new brick in `dir`.
///
/// The pool secret at `secret_file` is read, or created (mode 0600) if it
/// does not exist. `dir` must be absent or empty. On any error nothing is
/// left in `dir`.
pub fn init(dir: &Path, secret_file: &Path) -> Result<BrickInfo, BrickError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
        if entries.next().is_some() {
            return Err(BrickError::NotEmpty {
                path: dir.to_path_buf(),
            });
        }
    }
    let secret = if secret_file.exists() {
        Secret::load(secret_file).map_err(|source| BrickError::Secret {
            path: secret_file.to_path_buf(),
            source,
        })?
    } else {
        Secret::save_new(secret_file).map_err(|source| BrickError::Secret {
            path: secret_file.to_path_buf(),
            source,
        })?
    };

    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("create parent directory", &parent))?;
    let name = dir
        .file_name()
        .ok_or_else(|| BrickError::BadLayout {
            path: dir.to_path_buf(),
            why: "not a directory name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
    let result = build(&staging, &secret);
    match result {
        Ok(info) => {
            // An empty `dir` may exist; rename cannot replace a directory, so
            // remove the empty one first.
            if dir.exists() {
                fs::remove_dir(dir).map_err(io_err("replace empty directory", dir))?;
            }
            fs::rename(&staging, dir).map_err(io_err("move brick into place", dir))?;
            sync_dir(&parent)?;
            Ok(info)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn build(root: &Path, secret: &Secret) -> Result<BrickInfo, BrickError> {
    let dir = BrickDir::new(root);
    fs::create_dir_all(root).map_err(io_err("create brick directory", root))?;
    let mut id_bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id_bytes);
    let id = BrickId(u128::from_le_bytes(id_bytes));

    let secret_path = dir.secret();
    secret
        .write_new(&secret_path)
        .map_err(|source| BrickError::Secret {
            path: secret_path.clone(),
            source,
        })?;

    let rvm_dir = dir.rvm();
    fs::create_dir_all(&rvm_dir).map_err(io_err("create rvm directory", &rvm_dir))?;
    let rvm = Rvm::create(&rvm_dir, &rvm_options()).map_err(|source| BrickError::Rvm {
        path: rvm_dir.clone(),
        source,
    })?;
    drop(rvm);
    let objects = root.join("objects");
    fs::create_dir_all(&objects).map_err(io_err("create objects directory", &objects))?;

    let info_path = dir.info();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&info_path)
        .map_err(io_err("create brick.info", &info_path))?;
    write!(f, "{INFO_MAGIC} {LAYOUT_VERSION}\nid {id}\n")
        .and_then(|_| f.sync_all())
        .map_err(io_err("write brick.info", &info_path))?;
    sync_dir(root)?;
    Ok(BrickInfo { id })
}

fn sync_dir(dir: &Path) -> Result<(), BrickError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync directory", dir))
}
