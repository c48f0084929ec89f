//! Writing a file atomically, and reading one with a bound.
//!
//! The bytes go to a temporary file of a unique name in the target's folder (the `tempfile`
//! crate: one rename away, on the same file system), are flushed to disk, and the file is
//! renamed over the target; then the folder entry is flushed. A crash leaves the old file or
//! the new one, never a mixture. Two saves to one path at once each write their own
//! temporary file, so neither can rename the other's half-written bytes into place.
//!
//! On every error the temporary file is removed (dropping a `NamedTempFile` deletes it). A
//! process killed between the write and the rename cannot remove its own: its name,
//! `.{target}.{pid}.{random}.tapegrad-tmp`, says which process wrote it, and the next save to
//! the same target removes those whose process is gone, and any older than [`STALE`] (which
//! no save still running can own, whatever reused its process id).
//!
//! The file gets the permissions any file the user creates gets (`0666` less the umask, as
//! `File::create` gives), not the `0600` of a temporary file.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The prefix and suffix of temporary files, around the target's file name.
const PREFIX: &str = ".";
const SUFFIX: &str = ".tapegrad-tmp";

/// How old a temporary file must be before a later save removes it as a crash's leftover.
pub(crate) const STALE: Duration = Duration::from_secs(3600);

/// Writes `bytes` to `target` atomically (see the module documentation).
pub(crate) fn write_atomically(bytes: &[u8], target: &Path) -> std::io::Result<()> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let folder = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!("{PREFIX}{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode `open` is given, which the umask then trims, as for any new file.
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut temporary = builder
        .prefix(&format!("{prefix}{}.", std::process::id()))
        .suffix(SUFFIX)
        .tempfile_in(folder)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(target).map_err(|e| e.error)?; // on failure, dropped: removed
    // Best effort: some platforms cannot open a folder for syncing.
    if let Ok(dir) = fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    remove_stale_temporaries(folder, &prefix);
    Ok(())
}

/// Removes temporary files of this target whose writing process is gone, or older than
/// [`STALE`]: what killed saves left.
fn remove_stale_temporaries(folder: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(prefix).filter(|_| name.ends_with(SUFFIX)) else {
            continue;
        };
        let writer = rest
            .split('.')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        if writer.is_some_and(|pid| !process_exists(pid)) {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > STALE);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether a process of this id is running (it may be another user's): `kill(pid, 0)`
/// delivers nothing and says whether it could. Elsewhere than Unix: assumed running, so that
/// only age removes a leftover.
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 is no signal: only the existence and permission checks run.
        let found = unsafe { libc::kill(pid, 0) } == 0;
        found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The bytes of a regular file, read only up to the length the file system gives it (a
/// device such as `/dev/zero` is refused, not read forever).
pub(crate) fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(metadata.len()).read_to_end(&mut bytes)?;
    Ok(bytes)
}
