//! Node identity: the ed25519 key in `<data-dir>/node_key`.
//!
//! The file holds the raw 32-byte ed25519 secret key and nothing else. It is created on first
//! start with mode 0600 (owner read/write only). A node refuses to start when the file is
//! readable or writable by group or others, when it has the wrong length, or when it is not a
//! regular file. The [`PeerId`] is derived from the public half and logged at start-up.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::{Keypair, ed25519};

/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = "node_key";

/// Length of the node key file: a raw ed25519 secret key.
pub const NODE_KEY_LEN: usize = 32;

/// Mode of a freshly created node key: owner read/write only.
const NODE_KEY_MODE: u32 = 0o600;

/// Permission bits that must be clear on the node key: any group or other access.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Errors while loading or creating the node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file grants access to group or others.
    #[error(
        "node key file {path} is accessible by group/others (mode {mode:04o}): run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold exactly 32 bytes.
    #[error(
        "node key file {path} holds {len} bytes, expected a {NODE_KEY_LEN}-byte ed25519 secret: restore it from backup or move it away to create a new identity"
    )]
    BadLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The path exists but is not a regular file.
    #[error("node key path {path} is not a regular file: remove it or pick another data directory")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Reading, creating or writing the key file failed.
    #[error("cannot access node key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Loads `<data_dir>/node_key`, creating the data directory and a fresh key (mode 0600) when the
/// file does not exist yet.
pub fn load_or_create_node_key(data_dir: &Path) -> Result<Keypair, KeyError> {
    let path = data_dir.join(NODE_KEY_FILE);
    let io_err = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::symlink_metadata(&path) {
        Ok(_) => load_node_key(&path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(io_err)?;
            let secret = ed25519::SecretKey::generate();
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(NODE_KEY_MODE)
                .open(&path)
                .map_err(io_err)?;
            file.write_all(secret.as_ref()).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            let keypair = Keypair::from(ed25519::Keypair::from(secret));
            tracing::info!(path = %path.display(), peer_id = %keypair.public().to_peer_id(), "created node key");
            Ok(keypair)
        }
        Err(err) => Err(io_err(err)),
    }
}

/// Loads an existing node key file, checking its type, permissions and length.
pub fn load_node_key(path: &Path) -> Result<Keypair, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() != NODE_KEY_LEN as u64 {
        return Err(KeyError::BadLength {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut bytes = fs::read(path).map_err(io_err)?;
    let len = bytes.len() as u64;
    // Zeroizes `bytes` in place.
    let secret =
        ed25519::SecretKey::try_from_bytes(&mut bytes).map_err(|_| KeyError::BadLength {
            path: path.to_owned(),
            len,
        })?;
    Ok(Keypair::from(ed25519::Keypair::from(secret)))
}

/// The [`PeerId`] of a keypair (a convenience for logging).
pub fn peer_id_of(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = load_or_create_node_key(dir.path()).expect("create");
        let path = dir.path().join(NODE_KEY_FILE);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create_node_key(dir.path()).expect("reload");
        assert_eq!(peer_id_of(&first), peer_id_of(&again));
    }

    #[test]
    fn group_readable_key_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        load_or_create_node_key(dir.path()).expect("create");
        let path = dir.path().join(NODE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_node_key(dir.path()).expect_err("must refuse");
        let msg = err.to_string();
        assert!(matches!(
            err,
            KeyError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains("0644"), "{msg}");
    }

    #[test]
    fn wrong_length_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(NODE_KEY_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create");
        file.write_all(b"short").expect("write");
        assert!(matches!(
            load_or_create_node_key(dir.path()),
            Err(KeyError::BadLength { len: 5, .. })
        ));
    }

    #[test]
    fn directory_in_place_of_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join(NODE_KEY_FILE)).expect("mkdir");
        assert!(matches!(
            load_or_create_node_key(dir.path()),
            Err(KeyError::NotAFile { .. })
        ));
    }
}
