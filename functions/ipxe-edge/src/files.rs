//! File primitives every part of the data directory writes with: private folders, and files
//! replaced whole or not at all. The data directory, the embedded stand-ins and `serve` all use
//! these, so there is one way to write a file here.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;

/// Creates a folder and its missing parents, readable by the owner only (0700).
pub fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` with `options`, creating its missing folders (0700) only when the open finds
/// none: a write to an existing folder costs no `mkdir`.
pub fn open_creating_dirs(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    match options.open(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            create_private_dirs(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
            options.open(path)
        }
        opened => opened,
    }
}

/// Writes a file whole or not at all: a temporary file beside it (created with `mode`), rename,
/// and when `durable` an fsync of the file before and of the folder after the rename. Readers see
/// the old or the new content, never a mix; without `durable` a crash may lose the latest writes.
/// Missing folders are created 0700. Returns the metadata of the file written, as it is after
/// the rename.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<fs::Metadata> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_private_dirs(dir)?;
    let tmp = dir.join(format!(".ipxe-edge-tmp-{}-{}", std::process::id(), rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        file.metadata()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
