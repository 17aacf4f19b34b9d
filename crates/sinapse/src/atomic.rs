//! Writing files and directories so that no crash and no mistake loses a user's data:
//!
//! - a write never replaces what it does not own: an existing directory is replaced only when
//!   it is empty, or when its owner recognises it and it holds nothing but the files a save
//!   wrote there (listed in its manifest, [`MANIFEST`]); a directory is never replaced by a
//!   file; a refusal changes nothing and names what is in the way;
//! - the new content is written beside the target under a hidden temporary name
//!   (`.NAME.tmp-PID-N`), flushed to disk (`fsync` of every file, of the directory, and of
//!   any folder created for it), then published in one step: a rename for a new target, and
//!   for a directory that exists, an atomic exchange (Linux's `renameat2(RENAME_EXCHANGE)`),
//!   after which what was swapped out is checked again before it is deleted. At every moment
//!   the target is the old complete version or the new complete one;
//! - where the exchange is not available, the old directory steps aside as `.NAME.old-PID-N`
//!   for the moment between two renames, and the next write puts it back if the process died
//!   there;
//! - temporaries of a dead writer (its PID no longer runs and it holds no lock on them, so a
//!   writer in another container or on another machine is not taken for dead) are removed by
//!   the next write to the same target, as far as they can be; every error path removes its
//!   own. Recovery of dead writers' leftovers needs a Unix system.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// The file in a directory written by [`write_dir_atomically`] that lists what the write put
/// there: what a later write may replace.
pub const MANIFEST: &str = ".sinapse-files";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The refusal of a write that would destroy something it does not own.
fn refuse(path: &Path, why: impl Into<String>) -> Error {
    Error::WouldOverwrite { path: path.to_path_buf(), why: why.into() }
}

/// The target's name and the folder it is in; a path without a last name (`..`, `/`) is
/// refused.
fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    let name = match path.components().next_back() {
        Some(std::path::Component::Normal(n)) => n.to_os_string(),
        _ => return Err(refuse(path, "names no file or directory of its own (give a name, not '.', '..' or '/')")),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// `.NAME.KIND-` in `parent`, the start of every temporary of that target and kind.
fn temp_prefix(name: &OsStr, kind: &str) -> OsString {
    let mut p = OsString::from(".");
    p.push(name);
    p.push(format!(".{kind}-"));
    p
}

/// A fresh temporary path for `name` in `parent`: `.NAME.KIND-PID-N`, N counting this
/// process's writes, so two writes of one process never share one.
fn temp_path(parent: &Path, name: &OsStr, kind: &str) -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut file = temp_prefix(name, kind);
    file.push(format!("{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed)));
    parent.join(file)
}

/// True while process `pid` runs, as far as this system can tell (on systems where that
/// cannot be asked, always true, so nothing of a possibly live process is touched).
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

/// An exclusive lock on a file or directory, held while a write uses it, so that no other
/// process (in another PID namespace, or on another machine of a shared file system) takes
/// it for a dead writer's leftover. Released when dropped.
struct Held(#[allow(dead_code)] Option<fs::File>);

impl Held {
    /// Locks `path`; `None` inside when locks are not available (nothing is then held).
    fn lock(path: &Path) -> Held {
        Held(fs::File::open(path).ok().filter(try_lock))
    }
}

/// Takes an exclusive lock on `f` without waiting; false when another holds it (or locks
/// are not available).
fn try_lock(f: &fs::File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor this `File` owns; released when it is closed.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        false
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

/// Cleans up after dead writers of `parent/name`, as far as it can (a leftover it may not
/// remove stays, and the write goes on): when the target is missing and a dead writer left
/// the old version aside (`.NAME.old-…`), it is put back; every other temporary of a dead
/// writer is removed.
fn recover(parent: &Path, name: &OsStr) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let target = parent.join(name);
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        for (kind, old) in [("tmp", false), ("old", true)] {
            let prefix = temp_prefix(name, kind);
            let Some(rest) = file_name.as_encoded_bytes().strip_prefix(prefix.as_encoded_bytes()) else { continue };
            // PID, or PID-N.
            let pid = std::str::from_utf8(rest).ok().and_then(|r| r.split('-').next()?.parse::<u32>().ok());
            if let Some(pid) = pid {
                if pid != std::process::id() && !alive(pid) {
                    stale.push((old, entry.path()));
                }
            }
        }
    }
    // The old version first: it is complete, and the target is missing only if a crash came
    // between the two renames of a fallback replace.
    stale.sort_by_key(|(old, _)| !*old);
    for (old, path) in stale {
        // A lock still held means a live writer elsewhere: leave it.
        let Ok(f) = fs::File::open(&path) else { continue };
        if !try_lock(&f) && cfg!(unix) {
            continue;
        }
        if old && fs::symlink_metadata(&target).is_err() {
            let _ = fs::rename(&path, &target);
        } else {
            let _ = remove_any(&path);
        }
    }
}

/// Flushes a file, or a directory tree and its entries, to disk.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
        return sync_dir(path);
    }
    if !meta.is_file() {
        return Ok(()); // links and the like hold no data of ours
    }
    // Some systems flush only files open for writing.
    fs::OpenOptions::new().write(cfg!(not(unix))).read(cfg!(unix)).open(path)?.sync_all()
}

/// Flushes a directory's entries (a rename or a creation inside it) to disk (Unix; elsewhere
/// directories cannot be opened to flush).
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

/// Creates `dir` and its missing ancestors, and flushes each new entry to disk.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while fs::symlink_metadata(at).is_err() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    for d in &missing {
        sync_dir(d)?;
    }
    let top = missing.last().and_then(|d| d.parent()).filter(|p| !p.as_os_str().is_empty());
    sync_dir(top.unwrap_or(Path::new(".")))
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
        // Not supported here (old kernel, file system, a sandbox's filter): use the fallback,
        // whose renames fail the same way if the cause is real.
        match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Who may be replaced by a directory write, and what such a directory is called.
pub struct Owner<'a> {
    /// What such a directory is called in errors ("Sinapse model directory").
    pub what: &'a str,
    /// True for a directory of this kind (for a model directory: its card reads).
    pub recognise: &'a dyn Fn(&Path) -> bool,
    /// The names such a directory held when written by a version without a manifest.
    pub legacy_names: &'a [&'a str],
}

/// The names in `dir` that no save wrote: everything but what its manifest (or, without
/// one, `legacy_names`) lists.
fn foreign_entries(dir: &Path, legacy_names: &[&str]) -> std::io::Result<Vec<OsString>> {
    let listed: Vec<OsString> = match fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).lines().map(OsString::from).collect(),
        Err(_) => legacy_names.iter().map(OsString::from).collect(),
    };
    let mut foreign = Vec::new();
    for entry in fs::read_dir(dir)? {
        let n = entry?.file_name();
        if n != MANIFEST && !listed.contains(&n) {
            foreign.push(n);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Why `dir` (which exists) may not be replaced, or `None` when it may.
fn why_not(dir: &Path, owner: &Owner<'_>) -> Result<Option<String>> {
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.file_type().is_symlink() {
        return Ok(Some("is a symbolic link; give the directory itself".into()));
    }
    if !meta.is_dir() {
        return Ok(Some(format!("is a file, not a {}; refusing to replace it", owner.what)));
    }
    if fs::read_dir(dir).map_err(io_err(dir))?.next().is_none() {
        return Ok(None);
    }
    if !(owner.recognise)(dir) {
        return Ok(Some(format!("exists and is not a {}; refusing to replace it", owner.what)));
    }
    let foreign = foreign_entries(dir, owner.legacy_names).map_err(io_err(dir))?;
    if foreign.is_empty() {
        return Ok(None);
    }
    let shown: Vec<String> = foreign.iter().take(5).map(|n| format!("'{}'", n.to_string_lossy())).collect();
    let more = if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() };
    Ok(Some(format!(
        "is a {} that also holds {}{more}, which a save did not write; move them, or choose another directory",
        owner.what,
        shown.join(", ")
    )))
}

/// Checks that a directory write to `dir` may go ahead: `dir` does not exist, is an empty
/// directory, or is a directory of `owner`'s holding only what a save wrote there. Anything
/// else (a file, a link, a directory of the user's, a model directory the user added files
/// to) is refused with an error that names it; a refusal changes nothing.
pub fn check_replaceable(dir: &Path, owner: &Owner<'_>) -> Result<()> {
    let (parent, name) = split(dir)?;
    recover(&parent, &name);
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    match why_not(dir, owner)? {
        Some(why) => Err(refuse(dir, why)),
        None => Ok(()),
    }
}

/// Builds a directory with `fill` (called with a fresh temporary directory beside `dir`) and
/// puts it in place of `dir`, after [`check_replaceable`] allowed it. The directory gets a
/// manifest of what `fill` wrote. If `fill` fails, the check refuses, or the process dies at
/// any point, `dir` is the old complete directory or the new complete one, and nothing else
/// of the user's has changed.
pub fn write_dir_atomically(dir: &Path, owner: &Owner<'_>, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (parent, name) = split(dir)?;
    check_replaceable(dir, owner)?;
    create_dirs_durably(&parent).map_err(io_err(&parent))?;
    let tmp = temp_path(&parent, &name, "tmp");
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let lock = Held::lock(&tmp);
    let published = fill(&tmp)
        .and_then(|()| write_manifest(&tmp))
        .and_then(|()| sync_tree(&tmp).map_err(io_err(&tmp)))
        .and_then(|()| publish_dir(&tmp, dir, &parent, &name, owner));
    drop(lock);
    // Whatever happened, the temporary goes: it holds the new version that failed, or the
    // old one that was just replaced.
    let _ = remove_any(&tmp);
    published?;
    sync_dir(&parent).map_err(io_err(&parent))
}

/// Lists the top-level entries of `dir` in its manifest.
fn write_manifest(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let path = dir.join(MANIFEST);
    fs::write(&path, names.join("\n") + "\n").map_err(io_err(&path))
}

/// Puts the complete directory `tmp` in place of `dir`.
fn publish_dir(tmp: &Path, dir: &Path, parent: &Path, name: &OsStr, owner: &Owner<'_>) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return fs::rename(tmp, dir).map_err(io_err(dir));
    }
    if exchange(tmp, dir).map_err(io_err(dir))? {
        // What was swapped out is checked again: something else may have been put at `dir`
        // since the check. If it may not go, it goes back.
        if let Some(why) = why_not(tmp, owner)? {
            exchange(tmp, dir).map_err(io_err(dir))?;
            return Err(refuse(dir, why));
        }
        return Ok(()); // `tmp` now holds the old version, removed by the caller
    }
    let old = temp_path(parent, name, "old");
    fs::rename(dir, &old).map_err(io_err(dir))?;
    if let Some(why) = why_not(&old, owner)? {
        let _ = fs::rename(&old, dir);
        return Err(refuse(dir, why));
    }
    if let Err(e) = fs::rename(tmp, dir) {
        let _ = fs::rename(&old, dir); // put the old one back
        return Err(Error::Io { path: dir.to_path_buf(), source: e });
    }
    // Published. If the old copy cannot be removed now, a later write removes it.
    let _ = remove_any(&old);
    Ok(())
}

/// Writes `bytes` to the file `path` through a flushed temporary file beside it and a rename,
/// so readers see either the old file or the complete new one. A directory at `path` is
/// refused; on any error nothing is left behind.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let (parent, name) = split(path)?;
    recover(&parent, &name);
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(refuse(path, "is a directory; give a file name"));
    }
    create_dirs_durably(&parent).map_err(io_err(&parent))?;
    let tmp = temp_path(&parent, &name, "tmp");
    let written = (|| {
        // A new file: never through something planted at the temporary name.
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
        let _locked = try_lock(&f);
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

    const OWNER: Owner<'static> = Owner { what: "test directory", recognise: &ours, legacy_names: &["mine", "a"] };

    fn write_v(dir: &Path, v: &str) -> Result<()> {
        write_dir_atomically(dir, &OWNER, |d| {
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
        assert_eq!(names(&dir), vec![MANIFEST, "a", "mine"]);
        let failed = write_dir_atomically(&dir, &OWNER, |d| {
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
        // One of ours to which the user added a file: the file would go with it.
        let model = root.join("model");
        write_v(&model, "v1").unwrap();
        fs::write(model.join("preds.csv"), b"mine too").unwrap();
        let e = write_v(&model, "v2").unwrap_err().to_string();
        assert!(e.contains("also holds 'preds.csv'"), "{e}");
        assert_eq!(fs::read(model.join("a")).unwrap(), b"v1");
        fs::remove_file(model.join("preds.csv")).unwrap();
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
        assert_eq!(names(&root), vec!["file", "model", "notes"], "nothing added, nothing moved");
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
        let at = |name: &str, kind: &str, n: u32| root.join(format!(".{name}.{kind}-{pid}-{n}"));
        // A crash between the two renames of a fallback replace: the target is missing, the
        // old version waits aside, the new one is in the temporary.
        let old = at("model", "old", 0);
        fs::create_dir(&old).unwrap();
        fs::write(old.join("mine"), b"old").unwrap();
        let tmp = at("model", "tmp", 1);
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("a"), b"partial").unwrap();
        // A temporary file of a dead file writer (named as before counters, too), one of a
        // live process (this one's parent), and one whose writer holds its lock.
        let file_tmp = root.join(format!(".preds.csv.tmp-{pid}"));
        fs::write(&file_tmp, b"partial").unwrap();
        let live = root.join(format!(".model.tmp-{}-0", std::os::unix::process::parent_id()));
        fs::write(&live, b"busy").unwrap();
        let locked = at("model", "tmp", 7);
        fs::write(&locked, b"elsewhere").unwrap();
        let held = Held::lock(&locked);
        recover(&root, OsStr::new("model"));
        assert_eq!(fs::read(dir.join("mine")).unwrap(), b"old", "the old version is back in place");
        assert!(!tmp.exists() && !old.exists());
        assert!(live.exists(), "a live process's temporary stays");
        assert!(locked.exists(), "a locked temporary stays");
        drop(held);
        write_atomically(&root.join("preds.csv"), b"new").unwrap();
        assert!(!file_tmp.exists());
        fs::remove_file(&live).unwrap();
        recover(&root, OsStr::new("model"));
        assert_eq!(names(&root), vec!["model", "preds.csv"]);
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_as_they_are() {
        use std::os::unix::ffi::OsStrExt;
        let root = temp("bytes");
        let dir = root.join(OsStr::from_bytes(b"model-\xff"));
        write_v(&dir, "v1").unwrap();
        write_v(&dir, "v2").unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"v2");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
    }
}
