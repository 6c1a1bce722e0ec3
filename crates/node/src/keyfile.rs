//! Secret key files: 32 raw bytes, mode 0600, refused when group or others can read them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use playergold_primitives::Keypair;

/// Writes a new key file; fails if the file exists (never overwrite an identity).
pub(crate) fn create(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create key file {} (does it exist already?)",
                path.display()
            )
        })?;
    f.write_all(&key.secret_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Loads a key file, refusing one that group or others can access.
pub(crate) fn load(path: &Path) -> anyhow::Result<Keypair> {
    let meta = fs::metadata(path).with_context(|| {
        format!(
            "cannot read key file {}: run `playergold init` first or pass the right --data-dir",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is accessible by group/others (mode {mode:04o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let bytes = fs::read(path)?;
    Keypair::from_secret_slice(&bytes).with_context(|| format!("key file {}", path.display()))
}
