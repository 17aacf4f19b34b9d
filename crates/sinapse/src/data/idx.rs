//! The IDX file format of the MNIST database (LeCun et al.), plain or gzip-compressed.
//!
//! Layout: a 4-byte magic number `0x00 0x00 TYPE RANK`, then RANK big-endian `u32` sizes, then
//! the elements in row-major order. Only TYPE 0x08 (unsigned bytes) is used by MNIST and
//! supported here. Every claim of the header is checked against the bytes actually present,
//! and nothing is allocated beyond what the file really holds.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::Dataset;
use crate::{Error, Result, Tensor};

/// The contents of an IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The sizes of the axes, from the header.
    pub dims: Vec<usize>,
    /// The elements, row-major; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

const TYPE_U8: u8 = 0x08;

/// Reads an IDX file; a `.gz` file (recognised by its gzip magic bytes) is decompressed on the
/// fly. `expect_rank`, when given, must match the header's rank.
pub fn read_idx(path: impl AsRef<Path>, expect_rank: Option<usize>) -> Result<IdxArray> {
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = super::files::open_regular(path)?;
    let mut head = [0u8; 2];
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    let file = std::io::BufReader::new(std::io::Cursor::new(head[..n].to_vec()).chain(file));
    if n == 2 && head == [0x1f, 0x8b] {
        parse_idx(path, GzDecoder::new(file), expect_rank)
    } else {
        parse_idx(path, file, expect_rank)
    }
}

/// Parses IDX bytes from `reader`; `path` is only used in error messages.
pub fn parse_idx(path: &Path, mut reader: impl Read, expect_rank: Option<usize>) -> Result<IdxArray> {
    let fail = |msg: String| Error::Format { path: PathBuf::from(path), msg };
    let io = |source| Error::Io { path: PathBuf::from(path), source };
    let mut magic = [0u8; 4];
    if read_up_to(&mut reader, &mut magic).map_err(io)? < 4 {
        return Err(fail("truncated IDX header: fewer than 4 bytes".into()));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(fail(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x} should start with 0000",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    if magic[2] != TYPE_U8 {
        return Err(fail(format!("unsupported IDX element type 0x{:02x} (only 0x08, unsigned byte)", magic[2])));
    }
    let rank = magic[3] as usize;
    if let Some(r) = expect_rank {
        if rank != r {
            return Err(fail(format!("IDX rank {rank}, expected {r} (magic 0x0000{:02x}{:02x})", magic[2], magic[3])));
        }
    }
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut b = [0u8; 4];
        if read_up_to(&mut reader, &mut b).map_err(io)? < 4 {
            return Err(fail(format!("truncated IDX header: size of axis {i} missing")));
        }
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail(format!("IDX sizes {dims:?} overflow")))?;
    // Read at most one byte more than the header promises: a bomb of a header cannot make us
    // allocate, and the vector only grows as real bytes arrive; a compressed file that really
    // inflates that far is refused first when memory cannot hold it.
    crate::backend::ensure_available(crate::Device::Cpu, expected as u64, &format!("reading {}", path.display()))?;
    let mut data = Vec::new();
    reader.take((expected as u64).saturating_add(1)).read_to_end(&mut data).map_err(io)?;
    if data.len() < expected {
        return Err(fail(format!(
            "truncated IDX data: header {dims:?} promises {expected} bytes, file holds {}",
            data.len()
        )));
    }
    if data.len() > expected {
        return Err(fail(format!("IDX data longer than its header {dims:?} says ({expected} bytes)")));
    }
    Ok(IdxArray { dims, data })
}

/// Reads an images file (rank 2 or more) and its labels file (rank 1) as a dataset: images
/// flattened to `[N, H·W]` with bytes scaled to [0, 1], labels `[N]` as class indices.
pub fn read_labelled_images(images: &Path, labels: &Path) -> Result<Dataset> {
    let img = read_idx(images, None)?;
    let lab = read_idx(labels, Some(1))?;
    if img.dims.len() < 2 {
        return Err(Error::Format {
            path: images.to_path_buf(),
            msg: format!("images need rank 2 or more, the header says {:?}", img.dims),
        });
    }
    let n = img.dims[0];
    if lab.dims[0] != n {
        return Err(Error::Format {
            path: labels.to_path_buf(),
            msg: format!("{} labels for {n} images in {}", lab.dims[0], images.display()),
        });
    }
    let features: usize = img.dims[1..].iter().product();
    let x = Tensor::from_vec(img.data.iter().map(|&p| p as f32 / 255.0).collect(), &[n, features])?;
    let y = Tensor::from_vec(lab.data.iter().map(|&l| l as f32).collect(), &[n])?;
    Dataset::new(x, y)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<IdxArray> {
        parse_idx(Path::new("test.idx"), bytes, None)
    }

    #[test]
    fn reads_a_small_file() {
        let a = parse(&[0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_bad_files_with_a_reason() {
        let msg = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(msg(&[0x12, 0x34, 8, 1, 0, 0, 0, 1, 7]).contains("magic"));
        assert!(msg(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 7]).contains("element type"));
        assert!(msg(&[0, 0, 8]).contains("truncated"));
        assert!(msg(&[0, 0, 8, 2, 0, 0, 0, 2]).contains("axis 1"));
        assert!(msg(&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2]).contains("promises 3 bytes, file holds 2"));
        assert!(msg(&[0, 0, 8, 1, 0, 0, 0, 1, 1, 2]).contains("longer"));
        let rank = parse_idx(Path::new("x"), &[0u8, 0, 8, 1, 0, 0, 0, 1, 7][..], Some(3)).unwrap_err();
        assert!(rank.to_string().contains("rank 1, expected 3"));
    }

    #[test]
    fn a_huge_header_allocates_nothing_before_failing() {
        // Claims 4G x 4G x 255 bytes, holds 3.
        let e = parse(&[0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 255, 1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");
        // Claims 65535 x 65535 bytes (4 GiB), holds 3: read stops at the real end.
        let e = parse(&[0, 0, 8, 2, 0, 0, 255, 255, 0, 0, 255, 255, 1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("file holds 3"), "{e}");
    }
}
