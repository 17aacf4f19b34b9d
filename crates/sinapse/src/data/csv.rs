//! Reading tables of numbers from CSV files (with the `csv` crate).
//!
//! The first row names the columns. One column, chosen by name, is the target: class names
//! (any strings, mapped to indices by a [`LabelMap`] that is kept with the model) or numbers
//! (regression). Every other cell must be a number; an empty or non-numeric cell is an error
//! that names its line and column.

use std::path::{Path, PathBuf};

use super::files::quote;
use super::LabelMap;
use crate::{Error, Result, Tensor};

/// What the target column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Class names, mapped to indices.
    Class,
    /// Numbers (regression).
    Value,
}

/// A CSV table split into features and target.
#[derive(Clone, Debug)]
pub struct Table {
    /// `[N, F]` feature values.
    pub features: Tensor,
    /// The feature columns' names, in order.
    pub feature_names: Vec<String>,
    /// `[N]`: class indices or values; `None` when the table had no target column.
    pub targets: Option<Tensor>,
    /// The class names, for a class target.
    pub classes: Option<LabelMap>,
}

fn format_error(path: &Path, msg: String) -> Error {
    Error::Format { path: PathBuf::from(path), msg }
}

/// A data row with its line number in the file.
type Row = (u64, csv::StringRecord);

/// Where each line of a file starts, for line numbers that are right whatever ends the lines:
/// `\n`, `\r\n` (the bundled iris.csv) or a lone `\r`.
struct Lines(Vec<usize>);

impl Lines {
    fn new(bytes: &[u8]) -> Lines {
        let mut starts = vec![0];
        for (i, &b) in bytes.iter().enumerate() {
            let ends_line = b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
            if ends_line {
                starts.push(i + 1);
            }
        }
        Lines(starts)
    }

    /// The 1-based line holding byte `at`.
    fn of(&self, at: u64) -> u64 {
        self.0.partition_point(|&s| s as u64 <= at) as u64
    }

    /// The line of the record the csv reader says starts at byte `at`: it may point at the
    /// end of the previous line (the `\n` of a `\r\n`), so line ends are skipped first.
    fn of_record(&self, bytes: &[u8], at: u64) -> u64 {
        let first = bytes[at as usize..].iter().position(|&b| b != b'\n' && b != b'\r').map_or(at, |k| at + k as u64);
        self.of(first)
    }
}

/// Reads the header and the rows of a CSV file (a regular file; read whole, within the memory
/// there is). The header must name every column, each once, and at least one row must follow.
fn read_rows(path: &Path) -> Result<(Vec<String>, Vec<Row>)> {
    rows_of(&super::files::read_regular(path)?, path)
}

/// [`read_rows`] on the bytes of a file (`path` names it in errors).
fn rows_of(bytes: &[u8], path: &Path) -> Result<(Vec<String>, Vec<Row>)> {
    let lines = Lines::new(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(bytes);
    let header: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, &lines, bytes, e))?.iter().map(str::to_string).collect();
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(format_error(path, "line 1: missing header row".into()));
    }
    for (c, name) in header.iter().enumerate() {
        if name.is_empty() {
            return Err(format_error(path, format!("line 1: column {} has no name", c + 1)));
        }
        if let Some(first) = header[..c].iter().position(|h| h == name) {
            return Err(format_error(
                path,
                format!("line 1: the name {} is given to columns {} and {}", quote(name), first + 1, c + 1),
            ));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, &lines, bytes, e))?;
        let line = record.position().map_or(0, |p| lines.of_record(bytes, p.byte()));
        if record.iter().all(str::is_empty) {
            continue; // blank line
        }
        if record.len() != header.len() {
            return Err(format_error(
                path,
                format!("line {line}: {} cells, the header has {} columns", record.len(), header.len()),
            ));
        }
        rows.push((line, record));
    }
    if rows.is_empty() {
        return Err(format_error(path, "has a header but no rows of data".into()));
    }
    Ok((header, rows))
}

fn csv_error(path: &Path, lines: &Lines, bytes: &[u8], e: csv::Error) -> Error {
    let at = e.position().map(|p| format!("line {}: ", lines.of_record(bytes, p.byte()))).unwrap_or_default();
    let msg = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => Error::Io { path: PathBuf::from(path), source },
        csv::ErrorKind::Utf8 { err, .. } => {
            format_error(path, format!("{at}field {} is not UTF-8 text", err.field() + 1))
        }
        _ => format_error(path, format!("{at}{msg}")),
    }
}

fn parse_number(path: &Path, line: u64, column: usize, name: &str, cell: &str) -> Result<f32> {
    let at = || format!("line {line}, column {} ({})", column + 1, quote(name));
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ if cell.is_empty() => Err(format_error(path, format!("{}: missing value", at()))),
        _ if cell.parse::<f64>().is_ok_and(f64::is_finite) => Err(format_error(
            path,
            format!("{}: {} is out of the range of 32-bit floats (about ±3.4e38)", at(), quote(cell)),
        )),
        _ => Err(format_error(path, format!("{}: {} is not a number", at(), quote(cell)))),
    }
}

/// Reads `path` with `label` as the target column (`None`: every column is a feature).
///
/// For a class target, `known` maps names to indices (a label it lacks is an error); without
/// it, the distinct labels of this file make the map.
pub fn read_csv(
    path: impl AsRef<Path>,
    label: Option<&str>,
    target: Target,
    known: Option<&LabelMap>,
) -> Result<Table> {
    let path = path.as_ref();
    table_of(read_rows(path)?, path, label, target, known)
}

/// [`read_csv`] on the bytes of a CSV file already in memory (`path` names it in errors).
pub fn parse_csv(
    bytes: &[u8],
    path: &Path,
    label: Option<&str>,
    target: Target,
    known: Option<&LabelMap>,
) -> Result<Table> {
    table_of(rows_of(bytes, path)?, path, label, target, known)
}

/// The table of the rows of a CSV file.
fn table_of(
    (header, rows): (Vec<String>, Vec<Row>),
    path: &Path,
    label: Option<&str>,
    target: Target,
    known: Option<&LabelMap>,
) -> Result<Table> {
    let label_col = match label {
        None => None,
        Some(name) => Some(header.iter().position(|h| h == name).ok_or_else(|| {
            format_error(path, format!("no column {} (columns: {})", quote(name), header.join(", ")))
        })?),
    };
    let feature_cols: Vec<usize> = (0..header.len()).filter(|&c| Some(c) != label_col).collect();
    let mut features = Vec::with_capacity(rows.len() * feature_cols.len());
    for (line, row) in &rows {
        for &c in &feature_cols {
            features.push(parse_number(path, *line, c, &header[c], &row[c])?);
        }
    }
    let (targets, classes) = match (label_col, target) {
        (None, _) => (None, None),
        (Some(c), Target::Value) => {
            let values = rows
                .iter()
                .map(|(line, row)| parse_number(path, *line, c, &header[c], &row[c]))
                .collect::<Result<Vec<f32>>>()?;
            (Some(values), None)
        }
        (Some(c), Target::Class) => {
            let map = match known {
                Some(m) => m.clone(),
                None => LabelMap::from_labels(rows.iter().map(|(_, row)| &row[c])),
            };
            let index: std::collections::HashMap<&str, usize> =
                map.classes.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect();
            let mut idx = Vec::with_capacity(rows.len());
            for (line, row) in &rows {
                let cell = &row[c];
                if cell.is_empty() {
                    return Err(format_error(
                        path,
                        format!("line {line}, column {} ('{}'): missing label", c + 1, header[c]),
                    ));
                }
                let i = index.get(cell).copied().ok_or_else(|| {
                    format_error(
                        path,
                        format!("line {line}: unknown class {} (known: {})", quote(cell), map.classes.join(", ")),
                    )
                })?;
                idx.push(i as f32);
            }
            (Some(idx), Some(map))
        }
    };
    let n = rows.len();
    Ok(Table {
        features: Tensor::from_vec(features, &[n, feature_cols.len()])?,
        feature_names: feature_cols.iter().map(|&c| header[c].clone()).collect(),
        targets: targets.map(|t| Tensor::from_vec(t, &[n])).transpose()?,
        classes,
    })
}

/// Reads the columns `names` (in that order, wherever they are in the file) as features
/// `[N, F]`; other columns are ignored. For prediction on new data.
pub fn read_features(path: impl AsRef<Path>, names: &[String]) -> Result<Tensor> {
    let path = path.as_ref();
    let (header, rows) = read_rows(path)?;
    let cols = names
        .iter()
        .map(|n| {
            header.iter().position(|h| h == n).ok_or_else(|| {
                format_error(path, format!("no column {} (the model needs: {})", quote(n), names.join(", ")))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for (line, row) in &rows {
        for &c in &cols {
            out.push(parse_number(path, *line, c, &header[c], &row[c])?);
        }
    }
    Tensor::from_vec(out, &[rows.len(), cols.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sinapse-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_features_and_maps_string_labels() {
        let p = write("ok.csv", "a,kind,b\n1,cat,2\n3,dog,4\n\n5,cat,6\n");
        let t = read_csv(&p, Some("kind"), Target::Class, None).unwrap();
        assert_eq!(t.feature_names, vec!["a", "b"]);
        assert_eq!(t.features.to_vec(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(t.targets.unwrap().to_vec(), vec![0., 1., 0.]);
        assert_eq!(t.classes.unwrap().classes, vec!["cat", "dog"]);
        let v = read_csv(&p, None, Target::Value, None);
        assert!(v.unwrap_err().to_string().contains("line 2, column 2 ('kind'): 'cat' is not a number"));
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let p = write("bad.csv", "x,y,label\n1,2,a\n3,,b\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 3, column 2 ('y'): missing value"), "{e}");
        let p = write("bad2.csv", "x,y,label\n1,2,a\n3,abc,b\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 3, column 2 ('y'): 'abc' is not a number"), "{e}");
        let p = write("short.csv", "x,y,label\n1,2\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 2: 2 cells, the header has 3 columns"), "{e}");
        let p = write("bad.csv", "x,y,label\n1,2,a\n");
        let e = read_csv(&p, Some("species"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("no column 'species' (columns: x, y, label)"), "{e}");
        let known = LabelMap { classes: vec!["a".into()] };
        let p = write("unknown.csv", "x,label\n1,a\n2,b\n");
        let e = read_csv(&p, Some("label"), Target::Class, Some(&known)).unwrap_err().to_string();
        assert!(e.contains("line 3: unknown class 'b' (known: a)"), "{e}");
        let e = read_csv(Path::new("/no/such.csv"), None, Target::Value, None).unwrap_err().to_string();
        assert!(e.contains("/no/such.csv"), "{e}");
    }

    #[test]
    fn regression_targets_and_feature_selection() {
        let p = write("reg.csv", "y,a,b\n1.5,1,2\n-2,3,4\n");
        let t = read_csv(&p, Some("y"), Target::Value, None).unwrap();
        assert_eq!(t.targets.unwrap().to_vec(), vec![1.5, -2.0]);
        let f = read_features(&p, &["b".into(), "a".into()]).unwrap();
        assert_eq!(f.to_vec(), vec![2., 1., 4., 3.]);
        assert!(read_features(&p, &["c".into()]).unwrap_err().to_string().contains("no column 'c'"));
    }

    #[test]
    fn line_numbers_are_right_for_every_line_ending() {
        for (name, end) in [("lf.csv", "\n"), ("crlf.csv", "\r\n"), ("cr.csv", "\r")] {
            let text = ["x,y,label", "1,2,a", "3,4,b", "5,oops,a", ""].join(end);
            let p = write(name, &text);
            let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
            assert!(e.contains("line 4, column 2 ('y'): 'oops' is not a number"), "{name}: {e}");
        }
        // The bundled iris.csv is CRLF: it reads, and its rows are all there.
        let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/iris.csv");
        assert_eq!(read_csv(&iris, Some("species"), Target::Class, None).unwrap().features.shape(), &[150, 4]);
    }

    #[test]
    fn headers_must_name_each_column_once_and_rows_must_follow() {
        let p = write("dup.csv", "a,b,a,label\n1,2,3,x\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 1: the name 'a' is given to columns 1 and 3"), "{e}");
        let p = write("unnamed.csv", "a,,label\n1,2,x\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 1: column 2 has no name"), "{e}");
        let p = write("header_only.csv", "a,b,label\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("has a header but no rows of data"), "{e}");
    }

    #[test]
    fn values_out_of_range_and_long_cells() {
        let p = write("range.csv", "a,label\n3.4e38,x\n3.5e38,y\n");
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.contains("line 3, column 1 ('a'): '3.5e38' is out of the range of 32-bit floats"), "{e}");
        // A huge cell is quoted in part, not whole.
        let p = write("long.csv", &format!("a,label\n{},x\n", "9".repeat(100) + &"z".repeat(100_000)));
        let e = read_csv(&p, Some("label"), Target::Class, None).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("…' (100100 bytes) is not a number"), "{} bytes: {}", e.len(), &e[..200]);
    }

    #[test]
    fn only_regular_files_are_read() {
        for p in ["/dev/zero", "/tmp", "/dev/null"] {
            let e = read_csv(Path::new(p), None, Target::Value, None).unwrap_err().to_string();
            assert!(e.contains("give a file"), "{p}: {e}");
        }
    }
}
