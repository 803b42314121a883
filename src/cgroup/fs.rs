//! Kernel-file I/O shared by both backends: read, write, mkdir, rmdir and list cgroupfs entries,
//! turning every failure into a [`CgroupError`] that names the path (and the value written).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{parse, CgroupError};

/// How long `rmdir` keeps retrying on `EBUSY` (a just-killed task may still be leaving).
const RMDIR_RETRY: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(5);

/// Reads a whole cgroupfs file (`path` is the kernel file).
pub fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

/// Reads an optional file: `Ok(None)` when the kernel does not provide it (e.g. `memory.peak`
/// before 5.19, `memory.memsw.*` without swap accounting).
pub fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_path_buf(), source }),
    }
}

/// Writes `value` to the kernel file `path` (one `write(2)`, as cgroupfs expects).
pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Reads a file holding one number (`memory.current`, `pids.current`, `cpuacct.usage`).
pub fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    parse::number(&text).ok_or_else(|| parse_error(path, &text, "expected an unsigned number"))
}

/// Reads an optional one-number file; `Ok(None)` if the file does not exist.
pub fn read_u64_optional(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => {
            parse::number(&text).map(Some).ok_or_else(|| parse_error(path, &text, "expected an unsigned number"))
        }
    }
}

/// Reads a flat-keyed file and returns `key`'s value, 0 when the key is absent (old kernels).
pub fn read_key_or_zero(path: &Path, key: &str) -> Result<u64, CgroupError> {
    Ok(parse::flat_keyed(&read(path)?, key).unwrap_or(0))
}

/// Reads the pids listed in a `cgroup.procs` file.
pub fn read_pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = read(path)?;
    parse::pids(&text).map_err(|line| parse_error(path, &line, "expected a pid per line"))
}

pub fn parse_error(path: &Path, content: &str, reason: &'static str) -> CgroupError {
    CgroupError::Parse { path: path.to_path_buf(), content: content.trim().to_string(), reason }
}

/// `mkdir` of a cgroup directory; `Ok(false)` if it already existed.
pub fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create { path: path.to_path_buf(), source }),
    }
}

/// `mkdir` that must create a new directory (a cell id already in use is an error).
pub fn mkdir_new(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(path).map_err(|source| CgroupError::Create { path: path.to_path_buf(), source })
}

/// `rmdir` of a cgroup directory, retrying briefly on `EBUSY`; a missing directory is `Ok`.
pub fn rmdir(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_RETRY;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    return Err(CgroupError::Busy { path: path.to_path_buf() });
                }
                sleep(POLL);
            }
            Err(source) => return Err(CgroupError::Remove { path: path.to_path_buf(), source }),
        }
    }
}

/// `rmdir` without retries, used on the root (which is busy while cells exist).
pub fn rmdir_if_empty(path: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(CgroupError::Busy { path: path.to_path_buf() }),
        Err(source) => Err(CgroupError::Remove { path: path.to_path_buf(), source }),
    }
}

/// Names of the sub-directories of `path` (child cgroups); a missing `path` lists nothing.
pub fn list_dirs(path: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CgroupError::Read { path: path.to_path_buf(), source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Polls `check` every few ms until it returns true or `timeout` passes; returns the last result.
pub fn poll_until(
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(POLL);
    }
}

/// `dir/file` as a path (readability helper for "this function writes `memory.max`").
pub fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A read failed because the cgroup is gone: ENOENT, or ENODEV for a file of a directory the
/// kernel removed meanwhile.
pub fn gone(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}
