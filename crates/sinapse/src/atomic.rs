//! Writing files and directories so that no crash and no mistake loses a user's data:
//!
//! - a write never replaces what it does not own: an existing directory is replaced only when
//!   it is empty or the caller recognises it as its own (a model directory), a directory is
//!   never replaced by a file, and a refusal changes nothing;
//! - the new content is written beside the target under a hidden temporary name
//!   (`.NAME.tmp-PID`), flushed to disk (`fsync` of every file and of the directory), then
//!   published in one step: a rename for a new target, and for a directory that exists, an
//!   atomic exchange (Linux's `renameat2(RENAME_EXCHANGE)`). At every moment the target is the
//!   old complete version or the new complete one;
//! - where the exchange is not available, the old directory steps aside as `.NAME.old-PID`
//!   for the moment between two renames, and the next write puts it back if the process died
//!   there;
//! - temporaries left by a dead process (its PID no longer runs) are removed by the next write
//!   to the same target, and every error path removes its own.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The refusal of a write that would destroy something it does not own.
fn refuse(path: &Path, why: impl Into<String>) -> Error {
    Error::WouldOverwrite { path: path.to_path_buf(), why: why.into() }
}

/// The target's name and the folder it is in; a path without a last name (`..`, `/`) is
/// refused.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let name = match path.file_name() {
        Some(n) if path.components().next_back().is_some_and(|c| matches!(c, std::path::Component::Normal(_))) => {
            n.to_string_lossy().into_owned()
        }
        _ => return Err(refuse(path, "names no file or directory of its own (give a name, not '.', '..' or '/')")),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// `.NAME.KIND-PID` in `parent`.
fn temp_path(parent: &Path, name: &str, kind: &str, pid: u32) -> PathBuf {
    parent.join(format!(".{name}.{kind}-{pid}"))
}

/// True while process `pid` runs (on systems where that cannot be asked, always true, so
/// nothing of a possibly live process is touched).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes a file or a directory tree, whichever `path` is.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Cleans up after dead writers of `parent/name`: when the target is missing and a dead
/// process left the old version aside (`.NAME.old-PID`), it is put back; every other
/// temporary of a dead process is removed.
fn recover(parent: &Path, name: &str) -> Result<()> {
    let Ok(entries) = fs::read_dir(parent) else { return Ok(()) };
    let target = parent.join(name);
    let prefix = format!(".{name}.");
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else { continue };
        let Some((kind, pid)) = rest.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if (kind == "tmp" || kind == "old") && pid != std::process::id() && !alive(pid) {
            stale.push((kind == "old", entry.path()));
        }
    }
    // The old version first: it is complete, and the target is missing only if a crash came
    // between the two renames of a fallback replace.
    stale.sort_by_key(|(old, _)| !*old);
    for (old, path) in stale {
        if old && fs::symlink_metadata(&target).is_err() {
            fs::rename(&path, &target).map_err(io_err(&target))?;
        } else {
            remove_any(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Flushes a file, or a directory tree and its entries, to disk.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
    } else if !meta.is_file() {
        return Ok(()); // links and the like hold no data of ours
    }
    fs::File::open(path)?.sync_all()
}

/// Flushes a directory's entries (a rename inside it) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Swaps two paths atomically (Linux's `renameat2` with `RENAME_EXCHANGE`). `Ok(false)` when
/// the system or the file system cannot; then nothing happened.
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| ErrorKind::InvalidInput);
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths relative to the working directory; the call
        // either swaps them or fails with errno and changes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Checks that a directory write to `dir` may go ahead: `dir` does not exist, is an empty
/// directory, or is a directory that `owned` recognises (a model directory). Anything else
/// (a file, a link, a directory of the user's) is refused with an error that names it; a
/// refusal changes nothing. `what` names the kind of directory `owned` accepts.
pub fn check_replaceable(dir: &Path, what: &str, owned: impl Fn(&Path) -> bool) -> Result<()> {
    split(dir)?;
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io { path: dir.to_path_buf(), source: e }),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(dir, "is a symbolic link; give the directory itself"));
    }
    if !meta.is_dir() {
        return Err(refuse(dir, format!("is a file, not a {what}; refusing to replace it")));
    }
    let empty = fs::read_dir(dir).map_err(io_err(dir))?.next().is_none();
    if !empty && !owned(dir) {
        return Err(refuse(dir, format!("exists and is not a {what}; refusing to replace it")));
    }
    Ok(())
}

/// Builds a directory with `fill` (called with a fresh temporary directory beside `dir`) and
/// puts it in place of `dir`, after [`check_replaceable`] allowed it. If `fill` fails, the
/// check refuses, or the process dies at any point, `dir` is the old complete directory or
/// the new complete one, and nothing else of the user's has changed.
pub fn write_dir_atomically(
    dir: &Path,
    what: &str,
    owned: impl Fn(&Path) -> bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let (parent, name) = split(dir)?;
    recover(&parent, &name)?;
    check_replaceable(dir, what, &owned)?;
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = temp_path(&parent, &name, "tmp", std::process::id());
    remove_any(&tmp).map_err(io_err(&tmp))?;
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let published = fill(&tmp)
        .and_then(|()| sync_tree(&tmp).map_err(io_err(&tmp)))
        .and_then(|()| publish_dir(&tmp, dir, &parent, &name));
    // Whatever happened, the temporary goes: it holds the new version that failed, or the
    // old one that was just replaced.
    let _ = remove_any(&tmp);
    published?;
    sync_dir(&parent).map_err(io_err(&parent))
}

/// Puts the complete directory `tmp` in place of `dir`.
fn publish_dir(tmp: &Path, dir: &Path, parent: &Path, name: &str) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return fs::rename(tmp, dir).map_err(io_err(dir));
    }
    if exchange(tmp, dir).map_err(io_err(dir))? {
        return Ok(()); // `tmp` now holds the old version, removed by the caller
    }
    let old = temp_path(parent, name, "old", std::process::id());
    fs::rename(dir, &old).map_err(io_err(dir))?;
    if let Err(e) = fs::rename(tmp, dir) {
        let _ = fs::rename(&old, dir); // put the old one back
        return Err(Error::Io { path: dir.to_path_buf(), source: e });
    }
    remove_any(&old).map_err(io_err(&old))
}

/// Writes `bytes` to the file `path` through a flushed temporary file beside it and a rename,
/// so readers see either the old file or the complete new one. A directory at `path` is
/// refused; on any error nothing is left behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let (parent, name) = split(path)?;
    recover(&parent, &name)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(refuse(path, "is a directory; give a file name")),
        _ => {}
    }
    let tmp = temp_path(&parent, &name, "tmp", std::process::id());
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(&parent).map_err(io_err(&parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sinapse-atomic-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A directory is ours when it holds a file named `mine`.
    fn ours(d: &Path) -> bool {
        d.join("mine").is_file()
    }

    fn write_v(dir: &Path, v: &str) -> Result<()> {
        write_dir_atomically(dir, "test directory", ours, |d| {
            fs::write(d.join("mine"), v).map_err(io_err(d))?;
            fs::write(d.join("a"), v).map_err(io_err(d))
        })
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// The PID of a process that has ended.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_failed_directory_write_keeps_the_old_directory() {
        let root = temp("atomic");
        let dir = root.join("model");
        write_v(&dir, "v1").unwrap();
        let failed = write_dir_atomically(&dir, "test directory", ours, |d| {
            fs::write(d.join("a"), b"v2-partial").map_err(io_err(d))?;
            Err(Error::invalid("test", "interrupted"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"v1");
        write_v(&dir, "v2").unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"v2");
        assert_eq!(names(&root), vec!["model"], "no temporaries left");
    }

    #[test]
    fn what_is_not_ours_is_refused_and_left_alone() {
        let root = temp("refuse");
        // A folder of the user's.
        let notes = root.join("notes");
        fs::create_dir(&notes).unwrap();
        fs::write(notes.join("todo.txt"), b"keep me").unwrap();
        let e = write_v(&notes, "v1").unwrap_err().to_string();
        assert!(e.contains("notes") && e.contains("not a test directory"), "{e}");
        assert_eq!(fs::read(notes.join("todo.txt")).unwrap(), b"keep me");
        // A file where a directory was asked for.
        let file = root.join("file");
        fs::write(&file, b"data").unwrap();
        let e = write_v(&file, "v1").unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"data");
        // A directory where a file was asked for.
        assert!(write_atomically(&notes, b"x").unwrap_err().to_string().contains("is a directory"));
        // Paths without a name of their own.
        for p in ["..", ".", "/"] {
            assert!(write_v(Path::new(p), "v1").unwrap_err().to_string().contains("names no file"), "{p}");
        }
        assert_eq!(names(&root), vec!["file", "notes"], "nothing added, nothing moved");
        // An empty directory holds nothing to lose.
        let empty = root.join("empty");
        fs::create_dir(&empty).unwrap();
        write_v(&empty, "v1").unwrap();
        assert_eq!(fs::read(empty.join("a")).unwrap(), b"v1");
    }

    #[test]
    fn leftovers_of_dead_writers_are_recovered_or_removed() {
        let root = temp("recover");
        let dir = root.join("model");
        let pid = dead_pid();
        // A crash between the two renames of a fallback replace: the target is missing, the
        // old version waits aside, the new one is in the temporary.
        let old = temp_path(&root, "model", "old", pid);
        fs::create_dir(&old).unwrap();
        fs::write(old.join("mine"), b"old").unwrap();
        let tmp = temp_path(&root, "model", "tmp", pid);
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("a"), b"partial").unwrap();
        // A temporary file of a dead file writer, and one of a live process (this one's
        // parent, which runs): the latter is not touched.
        let file_tmp = temp_path(&root, "preds.csv", "tmp", pid);
        fs::write(&file_tmp, b"partial").unwrap();
        let live = temp_path(&root, "model", "tmp", std::os::unix::process::parent_id());
        fs::write(&live, b"busy").unwrap();
        recover(&root, "model").unwrap();
        assert_eq!(fs::read(dir.join("mine")).unwrap(), b"old", "the old version is back in place");
        assert!(!tmp.exists() && !old.exists());
        assert!(live.exists(), "a live process's temporary stays");
        write_atomically(&root.join("preds.csv"), b"new").unwrap();
        assert!(!file_tmp.exists());
        fs::remove_file(&live).unwrap();
        assert_eq!(names(&root), vec!["model", "preds.csv"]);
    }
}
