//! The local data directory: PKI, keys and (for the embedded store) the objects.
//!
//! ```text
//! DIR/pki/ca.crt, ca.key             deployment CA (key 0600)
//! DIR/pki/server.crt, server.key     TLS server certificate for serve
//! DIR/pki/gateways/NAME.crt, .key    enrolled gateways' certificates and keys (0600)
//! DIR/token-keys                     HMAC keyring of the secrets tokens (0600)
//! DIR/s3-credentials                 access key of the embedded S3 endpoint (0600)
//! DIR/s3/ipxe-edge/...               the embedded bucket (same layout as on S3)
//! DIR/ledger/                        used tokens (embedded ledger)
//! ```
//! Every file is written whole or not at all: temporary file, fsync, rename, fsync directory.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Name of the bucket inside the embedded store.
pub const EMBEDDED_BUCKET: &str = "ipxe-edge";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} has mode {mode:o}: a private key must not be readable by group or others (chmod 600 {path})")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// How long [`DataDir::lock`] waits for another process to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// An exclusive lock of [`DataDir::lock`], released when dropped.
pub struct DirLock {
    _file: File,
}

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) a data directory and checks it is usable.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DataDirError> {
        let root = root.into();
        crate::files::create_private_dirs(&root).map_err(io_error(&root))?;
        // A name of this process alone: operator commands may run side by side.
        let probe = root.join(format!(".write-probe-{}-{:x}", std::process::id(), rand::random::<u32>()));
        File::create(&probe).and_then(|_| fs::remove_file(&probe)).map_err(io_error(&root))?;
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.pki().join("ca.key")
    }
    /// The ECDSA CA that issues ECDSA gateway certificates (iPXE 2.0 needs them ECDSA-signed).
    pub fn ca_ecdsa_cert(&self) -> PathBuf {
        self.pki().join("ca-ecdsa.crt")
    }
    pub fn ca_ecdsa_key(&self) -> PathBuf {
        self.pki().join("ca-ecdsa.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.pki().join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.pki().join("server.key")
    }
    /// The self-made ECDSA server certificate, for clients that speak ECDSA (iPXE 2.0).
    pub fn server_ecdsa_cert(&self) -> PathBuf {
        self.pki().join("server-ecdsa.crt")
    }
    pub fn server_ecdsa_key(&self) -> PathBuf {
        self.pki().join("server-ecdsa.key")
    }
    pub fn gateway_cert(&self, name: &str) -> PathBuf {
        self.pki().join("gateways").join(format!("{name}.crt"))
    }
    pub fn gateway_key(&self, name: &str) -> PathBuf {
        self.pki().join("gateways").join(format!("{name}.key"))
    }
    pub fn token_keys(&self) -> PathBuf {
        self.root.join("token-keys")
    }
    pub fn s3_credentials(&self) -> PathBuf {
        self.root.join("s3-credentials")
    }
    pub fn s3_root(&self) -> PathBuf {
        self.root.join("s3")
    }
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger")
    }
    /// Waits for the exclusive lock `DIR/NAME.lock`, shared with every process that opens this
    /// data directory; held until the guard drops. Serializes changes that read several
    /// records and files before they write (a renewal).
    pub async fn lock(&self, name: &str) -> Result<DirLock, DataDirError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let path = self.root.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: flock on a descriptor this guard owns; the lock ends when it closes.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(DirLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(DataDirError::Io { path, source: error });
            }
            if std::time::Instant::now() > deadline {
                let source = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("held by another process for more than {}s", LOCK_WAIT.as_secs()),
                );
                return Err(DataDirError::Io { path, source });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Boots and their outcomes, per gateway (when no DynamoDB table is used).
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }
}

/// Makes everything under `root` private: folders 0700, files 0600 (symbolic links are left
/// alone and not followed). Returns how many entries it changed.
pub fn make_private(root: &Path) -> std::io::Result<usize> {
    let mut fixed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path)?;
        let want = if meta.is_dir() {
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        if meta.permissions().mode() & 0o7777 != want {
            fs::set_permissions(&path, fs::Permissions::from_mode(want))?;
            fixed += 1;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(fixed)
}

/// Writes a file atomically with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    crate::files::write_replacing(path, bytes, mode, true).map(drop).map_err(io_error(path))
}

pub fn read(path: &Path) -> Result<Vec<u8>, DataDirError> {
    fs::read(path).map_err(io_error(path))
}

/// Reads a private key file, refusing one that others can read.
pub fn read_private(path: &Path) -> Result<Vec<u8>, DataDirError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::KeyPermissions { path: path.to_path_buf(), mode });
    }
    read(path)
}

pub fn read_private_string(path: &Path) -> Result<String, DataDirError> {
    String::from_utf8(read_private(path)?)
        .map_err(|_| DataDirError::Corrupt { path: path.to_path_buf(), reason: "not UTF-8 text".into() })
}

pub fn read_string(path: &Path) -> Result<String, DataDirError> {
    String::from_utf8(read(path)?)
        .map_err(|_| DataDirError::Corrupt { path: path.to_path_buf(), reason: "not UTF-8 text".into() })
}
