//! Opening the files a user names: regular files only (a directory, a device such as
//! `/dev/zero` or a pipe is refused before it is read, so nothing hangs or reads forever), and
//! whole-file reads bounded by the memory there is.

use std::fs::File;
use std::path::Path;

use crate::backend::ensure_available;
use crate::{Device, Error, Result};

/// Opens `path` for reading after checking that it is a regular file (links followed).
pub fn open_regular(path: &Path) -> Result<File> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a device, pipe or socket)" };
        return Err(Error::Format { path: path.to_path_buf(), msg: format!("is {what}; give a file") });
    }
    File::open(path).map_err(io)
}

/// The bytes of the regular file `path`, refused before reading when they would not fit in
/// memory.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let len = file.metadata().map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
    ensure_available(Device::Cpu, len, &format!("reading {}", path.display()))?;
    let mut bytes = Vec::with_capacity(len as usize);
    // At most the size seen: a file growing while it is read cannot grow the buffer.
    file.by_ref().take(len).read_to_end(&mut bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(bytes)
}

/// The text of the regular file `path` (UTF-8), bounded as [`read_regular`].
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|e| Error::Format { path: path.to_path_buf(), msg: format!("is not UTF-8 text ({e})") })
}

/// `text` cut to a readable length for an error message (a 20 MB cell is not quoted whole).
pub fn quote(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("'{}…' ({} bytes)", &text[..cut], text.len()),
        None => format!("'{text}'"),
    }
}
