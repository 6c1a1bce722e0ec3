//! The data-directory lock: one node per data directory.
//!
//! An advisory exclusive lock (`flock`) on `DATA_DIR/node.lock`, held for as long as the
//! [`DataDirLock`] lives. The kernel drops it when the process exits, however it exits, so a
//! crashed node never leaves a stale lock behind. The file holds the owner's pid for the message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// File name of the lock inside a data directory.
const LOCK_FILE: &str = "node.lock";

/// Holds the lock until dropped.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, failing at once (never waiting) when another process holds it.
    pub(crate) fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open {}: does the data directory exist? Create it with `playergold init`",
                    path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut owner = String::new();
                // The pid is only for the message: a read failure just leaves it out.
                let _ = file.read_to_string(&mut owner);
                let owner = owner.trim();
                let by = if owner.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {owner})")
                };
                bail!(
                    "data directory {} is in use by another playergold node{by}: stop that node \
                     or pass another --data-dir",
                    data_dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock");
        let msg = err.to_string();
        assert!(msg.contains("in use"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("lock after release");
    }
}
