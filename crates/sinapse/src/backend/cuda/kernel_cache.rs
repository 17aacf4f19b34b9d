//! The compiled kernels kept on disk between processes, as PyTorch keeps its run-time
//! compiled kernels in `~/.cache/torch/kernels`: NVRTC takes about a second to compile
//! `kernels.cu` (1.4 s on a 2-core development machine), which every process that opens a GPU
//! would otherwise spend again. One PTX file per source, architecture and NVRTC version; a
//! file is written whole or not at all (a temporary file renamed into place), and one that
//! does not name every kernel, or that the driver refuses, is compiled again.
//!
//! The folder is `SINAPSE_KERNEL_CACHE` (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/sinapse/kernels`, else `$HOME/.cache/sinapse/kernels`. A folder that cannot
//! be made or written only costs the compile. It keeps the [`KEPT`] newest files (about 0.6
//! MB each), so that a developer's rebuilds do not pile up old ones.

use std::path::{Path, PathBuf};

/// How many compiled files a folder keeps: storing one removes the oldest beyond this.
pub(crate) const KEPT: usize = 8;

/// A folder of compiled kernels.
pub(crate) struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// The cache the environment names (see the module's text), or `None` when it is off or
    /// no folder is named.
    pub(crate) fn from_env() -> Option<KernelCache> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match var("SINAPSE_KERNEL_CACHE") {
            Some(v) if v == "off" => return None,
            Some(v) => PathBuf::from(v),
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

    /// Where the kernels compiled from `source` for `compute_{arch}` by NVRTC `nvrtc`
    /// (major, minor) are kept: the file's name holds the architecture, the version and a
    /// 64-bit FNV-1a hash of the source.
    pub(crate) fn path(&self, source: &str, arch: u32, nvrtc: (i32, i32)) -> PathBuf {
        let hash =
            source.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.dir.join(format!("kernels-compute_{arch}-nvrtc{}.{}-{hash:016x}.ptx", nvrtc.0, nvrtc.1))
    }

    /// The PTX kept at `path`, if it is there and names every one of `kernels`.
    pub(crate) fn load(path: &Path, kernels: &[&str]) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        kernels.iter().all(|name| text.contains(&format!(".entry {name}("))).then_some(text)
    }

    /// Keeps `ptx` at `path`, whole or not at all: written to a temporary file of this
    /// process's in the same folder, then renamed over `path`. Then removes the folder's
    /// oldest compiled files beyond [`KEPT`].
    pub(crate) fn store(path: &Path, ptx: &str) -> std::io::Result<()> {
        let dir = path.parent().ok_or_else(|| std::io::Error::other("a cache file without a folder"))?;
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let partial = dir.join(format!(".{name}.{}.partial", std::process::id()));
        let written = std::fs::write(&partial, ptx).and_then(|()| std::fs::rename(&partial, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written?;
        prune(dir, KEPT);
        Ok(())
    }
}

/// Removes the oldest compiled files (`kernels-*.ptx`, by modification time) of `dir` beyond
/// the `keep` newest; a file another process removes first, or one that cannot be removed, is
/// passed over.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kernels-") && name.ends_with(".ptx")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.iter().skip(keep) {
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
        let path = cache.path("source", 90, (13, 0));
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_name_changes_with_the_source_the_architecture_and_the_compiler() {
        let cache = KernelCache::at(Path::new("/cache"));
        let base = cache.path("source", 90, (13, 0));
        assert_eq!(base, cache.path("source", 90, (13, 0)));
        for other in
            [cache.path("sourcf", 90, (13, 0)), cache.path("source", 75, (13, 0)), cache.path("source", 90, (13, 1))]
        {
            assert_ne!(base, other);
        }
        // FNV-1a's published value for "a", so the name stays the same across builds.
        assert!(cache.path("a", 90, (13, 0)).ends_with("kernels-compute_90-nvrtc13.0-af63dc4c8601ec8c.ptx"));
    }

    #[test]
    fn storing_keeps_the_newest_files_and_nothing_else_is_touched() {
        let dir = scratch("prune");
        let cache = KernelCache::at(&dir);
        let paths: Vec<PathBuf> = (0..KEPT + 2).map(|k| cache.path(&format!("source {k}"), 90, (13, 0))).collect();
        for (k, path) in paths.iter().enumerate() {
            KernelCache::store(path, PTX).unwrap();
            // Ages a second apart, oldest first, whatever the file system's clock resolution.
            let age = std::time::Duration::from_secs((paths.len() - k) as u64);
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(std::time::SystemTime::now() - age).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        KernelCache::store(&paths[KEPT + 1], PTX).unwrap();
        let gone: Vec<bool> = paths.iter().map(|p| !p.exists()).collect();
        assert_eq!(gone.iter().filter(|g| **g).count(), 2, "{gone:?}");
        assert!(gone[0] && gone[1], "the two oldest go: {gone:?}");
        assert!(dir.join("notes.txt").exists(), "a file that is not a compiled one stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error_not_a_panic() {
        let dir = scratch("blocked");
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the folder would go.
        std::fs::write(dir.join("file"), "x").unwrap();
        let cache = KernelCache::at(&dir.join("file").join("kernels"));
        let path = cache.path("source", 90, (13, 0));
        assert!(KernelCache::store(&path, PTX).is_err());
        assert_eq!(KernelCache::load(&path, KERNELS), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
