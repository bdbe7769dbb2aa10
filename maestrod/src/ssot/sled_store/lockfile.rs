//! The data directory's lock: one daemon per data directory.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::ssot::store::StoreError;

/// Takes an exclusive lock on `dir/maestrod.lock` for the life of the
/// returned file, and writes this process's id into it (for the error a
/// second daemon gets).
pub(crate) fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("maestrod.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            let _ = file.sync_all();
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(StoreError::Locked {
                path: dir.display().to_string(),
                pid: if pid.is_empty() { String::new() } else { format!(" (pid {pid})") },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Backend(format!("cannot lock {}: {e}", path.display())))
        }
    }
}
