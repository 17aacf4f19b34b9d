//! The compiled kernels kept on disk between processes, as PyTorch keeps its run-time
//! compiled kernels in `~/.cache/torch/kernels`: NVRTC takes about a second to compile
//! `kernels.cu` (1.4 s on a 2-core development machine), which every process that opens a GPU
//! would otherwise spend again. One PTX file per source, architecture and NVRTC version; a
//! file is written whole or not at all (a temporary file renamed into place), and one that
//! does not name every kernel, or that the driver refuses, is compiled again.
//!
//! The folder is `SINAPSE_KERNEL_CACHE` (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/sinapse/kernels`, else `$HOME/.cache/sinapse/kernels`; on the emulated GPU
//! of the tests, only a folder `SINAPSE_KERNEL_CACHE` names (the tests leave the user's cache
//! alone). A folder that cannot be made or written only costs the compile. It keeps the
//! [`KEPT`] newest files (about 0.6 MB each), so that a developer's rebuilds do not pile up
//! old ones.

use std::path::{Path, PathBuf};

/// How many compiled files a folder keeps: storing one removes the oldest beyond this.
pub(crate) const KEPT: usize = 8;

/// A folder of compiled kernels.
pub(crate) struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// The cache the environment names (see the module's text), or `None` when it is off or
    /// no folder is named; with `named_only`, only a folder `SINAPSE_KERNEL_CACHE` names.
    pub(crate) fn from_env(named_only: bool) -> Option<KernelCache> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match var("SINAPSE_KERNEL_CACHE") {
            Some(v) if v == "off" => return None,
            Some(v) => PathBuf::from(v),
            None if named_only => return None,
            None => var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))?
                .join("sinapse")
                .join("kernels"),
        };
        Some(KernelCache { dir })
    }

    /// A cache in `dir`.
    #[cfg(test)]
    fn at(dir: &Path) -> KernelCache {
        KernelCache { dir: dir.to_path_buf() }
    }

    /// Where the kernels compiled from `source` with NVRTC's `options` for `compute_{arch}` by
    /// NVRTC `nvrtc` (major, minor) are kept: the file's name holds the architecture, the
    /// version and a 64-bit FNV-1a hash of the options and the source.
    pub(crate) fn path(&self, source: &str, options: &[String], arch: u32, nvrtc: (i32, i32)) -> PathBuf {
        let text = options.iter().flat_map(|o| o.bytes().chain([0])).chain(source.bytes());
        let hash = text.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.dir.join(format!("kernels-compute_{arch}-nvrtc{}.{}-{hash:016x}.ptx", nvrtc.0, nvrtc.1))
    }

    /// The PTX kept at `path`, if it is there, names every one of `kernels` and holds no NUL
    /// (a file cut short by a crash may end in zeros; the driver is handed a C string).
    pub(crate) fn load(path: &Path, kernels: &[&str]) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let whole = !text.contains('\0') && kernels.iter().all(|name| text.contains(&format!(".entry {name}(")));
        whole.then_some(text)
    }

    /// Keeps `ptx` at `path`, whole or not at all: written to a new temporary file in the
    /// same folder (named by process and time, and refused if it exists, so that two writers
    /// never share one), then renamed over `path`. Then removes the folder's oldest compiled
    /// files beyond [`KEPT`], and temporary files an hour old (a writer that died).
    pub(crate) fn store(path: &Path, ptx: &str) -> std::io::Result<()> {
        use std::io::Write;
        let dir = path.parent().ok_or_else(|| std::io::Error::other("a cache file without a folder"))?;
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let partial = dir.join(format!(".{name}.{}-{nanos}.partial", std::process::id()));
        let written = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&partial)
            .and_then(|mut file| file.write_all(ptx.as_bytes()))
            .and_then(|()| std::fs::rename(&partial, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written?;
        prune(dir, KEPT);
        Ok(())
    }
}

/// Removes the oldest compiled files (`kernels-*.ptx`, by modification time) of `dir` beyond
/// the `keep` newest, and temporary files (`.kernels-*.partial`) over an hour old; a file
/// another process removes first, or one that cannot be removed, is passed over.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let (mut files, mut stale) = (Vec::new(), Vec::new());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) else { continue };
        if name.starts_with("kernels-") && name.ends_with(".ptx") {
            files.push((modified, entry.path()));
        } else if name.starts_with(".kernels-")
            && name.ends_with(".partial")
            && modified.elapsed().is_ok_and(|age| age.as_secs() > 3600)
        {
            stale.push(entry.path());
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for old in files.into_iter().skip(keep).map(|(_, path)| path).chain(stale) {
        let _ = std::fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELS: &[&str] = &["fill", "copy"];
    const PTX: &str = ".version 9.0\n.entry fill(\n)\n.entry copy(\n)\n";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sinapse-kernel-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_stored_file_is_found_again_and_a_partial_or_foreign_one_is_not() {
        let dir = scratch("roundtrip");
        let cache = KernelCache::at(&dir.join("nested"));
        let path = cache.path("source", &[], 90, (13, 0));
        assert_eq!(KernelCache::load(&path, KERNELS), None, "nothing kept yet");
        KernelCache::store(&path, PTX).unwrap();
        assert_eq!(KernelCache::load(&path, KERNELS).as_deref(), Some(PTX));
        // No temporary file is left beside it.
        let files: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        // A file cut short (the last kernel missing) or made for other kernels is not used.
        std::fs::write(&path, &PTX[..PTX.len() - 12]).unwrap();
        assert_eq!(KernelCache::load(&path, KERNELS), None);
        assert_eq!(KernelCache::load(&path, &["fill", "adam"]), None);
        // Nor one whose end a crash left as zeros.
        std::fs::write(&path, format!("{PTX}\0\0\0")).unwrap();
        assert_eq!(KernelCache::load(&path, KERNELS), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_name_changes_with_the_source_the_options_the_architecture_and_the_compiler() {
        let cache = KernelCache::at(Path::new("/cache"));
        let base = cache.path("source", &[], 90, (13, 0));
        assert_eq!(base, cache.path("source", &[], 90, (13, 0)));
        let others = [
            cache.path("sourcf", &[], 90, (13, 0)),
            cache.path("source", &["-lineinfo".into()], 90, (13, 0)),
            cache.path("source", &[], 75, (13, 0)),
            cache.path("source", &[], 90, (13, 1)),
        ];
        for other in others {
            assert_ne!(base, other);
        }
        // FNV-1a's published value for "a", so the name stays the same across builds.
        assert!(cache.path("a", &[], 90, (13, 0)).ends_with("kernels-compute_90-nvrtc13.0-af63dc4c8601ec8c.ptx"));
    }

    #[test]
    fn storing_keeps_the_newest_files_and_nothing_else_is_touched() {
        let dir = scratch("prune");
        let cache = KernelCache::at(&dir);
        let ago = |secs: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        let age = |path: &Path, secs: u64| {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(ago(secs)).unwrap();
        };
        let paths: Vec<PathBuf> = (0..KEPT + 2).map(|k| cache.path(&format!("source {k}"), &[], 90, (13, 0))).collect();
        // Ages a second apart, oldest first, whatever the file system's clock resolution: the
        // ninth and tenth stores each remove the oldest file.
        for (k, path) in paths.iter().enumerate() {
            KernelCache::store(path, PTX).unwrap();
            age(path, (paths.len() - k) as u64);
        }
        let gone: Vec<bool> = paths.iter().map(|p| !p.exists()).collect();
        assert_eq!(gone.iter().filter(|g| **g).count(), 2, "{gone:?}");
        assert!(gone[0] && gone[1], "the two oldest go: {gone:?}");
        // A dead writer's temporary file goes after an hour; a live one's, and other files, stay.
        let (dead, live) = (dir.join(".kernels-x.ptx.1-2.partial"), dir.join(".kernels-x.ptx.3-4.partial"));
        for file in [&dead, &live] {
            std::fs::write(file, "half").unwrap();
        }
        age(&dead, 7200);
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        KernelCache::store(&paths[KEPT + 1], PTX).unwrap();
        assert!(!dead.exists() && live.exists(), "the dead writer's file goes, the live one's stays");
        assert!(dir.join("notes.txt").exists(), "a file that is not a compiled one stays");
        assert_eq!(paths.iter().filter(|p| p.exists()).count(), KEPT);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error_not_a_panic() {
        let dir = scratch("blocked");
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the folder would go.
        std::fs::write(dir.join("file"), "x").unwrap();
        let cache = KernelCache::at(&dir.join("file").join("kernels"));
        let path = cache.path("source", &[], 90, (13, 0));
        assert!(KernelCache::store(&path, PTX).is_err());
        assert_eq!(KernelCache::load(&path, KERNELS), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
