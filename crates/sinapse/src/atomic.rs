//! Writing files and directories atomically: readers (and the next run, after a crash) see
//! either the old complete file or the new complete one, never a half-written one.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see either the old file or the complete new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling(path, "tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Builds a directory through `fill` (called with a fresh temporary directory next to `dir`)
/// and then puts it in place of `dir` by renames. If `fill` fails or the process dies, the
/// old `dir` (if any) is untouched; at every moment `dir` is either the old complete directory
/// or the new complete one (between the two renames the old one waits as `.NAME.old-PID`).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = sibling(dir, "old");
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    }
    Ok(())
}

/// `.NAME.KIND-PID` beside `path`.
fn sibling(path: &Path, kind: &str) -> PathBuf {
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sinapse-atomic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_failed_directory_write_keeps_the_old_directory() {
        let root = temp("atomic");
        let dir = root.join("model");
        write_dir_atomically(&dir, |d| std::fs::write(d.join("a"), b"v1").map_err(io_err(d))).unwrap();
        let failed = write_dir_atomically(&dir, |d| {
            std::fs::write(d.join("a"), b"v2-partial").map_err(io_err(d))?;
            Err(Error::invalid("test", "interrupted"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"v1");
        write_dir_atomically(&dir, |d| std::fs::write(d.join("a"), b"v2").map_err(io_err(d))).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"v2");
        let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
