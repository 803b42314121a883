//! Where a spool keeps its bytes: a ring of `cap` bytes, either a file per cell under the
//! daemon's spool dir (the default: output costs disk, not daemon memory, as container log
//! drivers do) or memory (when no file can be made, and in unit tests).
//!
//! Byte `offset` of a cell's output lives at ring position `offset % cap`. The ring knows nothing
//! of which bytes are still valid; the spool does (see `spool.rs`).
//!
//! A spool file is held with an exclusive `flock` while its cell's spool lives, and removed when
//! the spool is dropped. At start-up [`sweep`] removes every file in the dir that no live daemon
//! holds (the leftovers of a daemon that died), so several daemons may share one dir.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool dir {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("spool file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("spool file {path}: lock: {errno}")]
    Lock { path: PathBuf, errno: nix::errno::Errno },
}

/// The bytes of one spool.
pub(super) enum Ring {
    Memory(Mutex<Vec<u8>>),
    File { file: Flock<File>, path: PathBuf },
}

impl Ring {
    pub(super) fn memory() -> Ring {
        Ring::Memory(Mutex::new(Vec::new()))
    }

    /// A new file `<dir>/<name>`, locked (an existing file of that name is replaced).
    pub(super) fn file(dir: &Path, name: &str) -> Result<Ring, StoreError> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| StoreError::File { path: path.clone(), source })?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| StoreError::Lock { path: path.clone(), errno })?;
        Ok(Ring::File { file, path })
    }

    /// Write `data` at ring position `pos` (`pos + data.len() <= cap`; the caller splits at
    /// the wrap).
    pub(super) fn write_at(&self, pos: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Ring::Memory(m) => {
                let mut v = m.lock().unwrap_or_else(|e| e.into_inner());
                let (start, end) = (pos as usize, pos as usize + data.len());
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[start..end].copy_from_slice(data);
                Ok(())
            }
            Ring::File { file, .. } => file.write_all_at(data, pos),
        }
    }

    /// Fill `buf` from ring position `pos` (no wrap inside).
    pub(super) fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Ring::Memory(m) => {
                let v = m.lock().unwrap_or_else(|e| e.into_inner());
                let src = v.get(pos as usize..pos as usize + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Ring::File { file, .. } => file.read_exact_at(buf, pos),
        }
    }

    pub(super) fn path(&self) -> Option<&Path> {
        match self {
            Ring::Memory(_) => None,
            Ring::File { path, .. } => Some(path),
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Ring::File { path, .. } = self {
            // Removed while still locked: a sweep never sees it unlocked and half-gone.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Make the spool dir (mode 0700) and remove the files no live daemon holds. Returns how many
/// were removed.
pub fn sweep(dir: &Path) -> Result<usize, StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
    let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        // Held by a live daemon's cell: not ours to remove.
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            if std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
            drop(lock);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_ring_is_removed_on_drop_and_a_sweep_spares_held_files() {
        let dir = tempfile::tempdir().unwrap();
        let held = Ring::file(dir.path(), "live").unwrap();
        held.write_at(3, b"abc").unwrap();
        let mut buf = [0u8; 3];
        held.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        std::fs::write(dir.path().join("orphan"), b"x").unwrap();
        assert_eq!(sweep(dir.path()).unwrap(), 1);
        assert!(dir.path().join("live").exists());
        drop(held);
        assert!(!dir.path().join("live").exists());
    }

    #[test]
    fn a_memory_ring_grows_to_what_was_written() {
        let r = Ring::memory();
        r.write_at(2, b"xy").unwrap();
        let mut buf = [0u8; 2];
        r.read_at(2, &mut buf).unwrap();
        assert_eq!(&buf, b"xy");
        assert!(r.read_at(3, &mut buf).is_err());
    }
}
