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

/// Counts lines as a reader moves forward through a file, right whatever ends them: `\n`,
/// `\r\n` (the bundled iris.csv) or a lone `\r`.
struct LineCounter<'a> {
    bytes: &'a [u8],
    at: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter { bytes, at: 0, line: 1 }
    }

    /// The 1-based line of the record the csv reader says starts at byte `start` (which may
    /// point at the end of the line before: line ends are skipped first). Records come in
    /// order, so the count only moves forward.
    fn of_record(&mut self, start: u64) -> u64 {
        let start = (start as usize).min(self.bytes.len());
        let first = self.bytes[start..].iter().position(|&b| b != b'\n' && b != b'\r').map_or(start, |k| start + k);
        while self.at < first {
            let b = self.bytes[self.at];
            if b == b'\n' || (b == b'\r' && self.bytes.get(self.at + 1) != Some(&b'\n')) {
                self.line += 1;
            }
            self.at += 1;
        }
        self.line
    }
}

/// A CSV file in memory, read record by record.
struct Records<'a> {
    path: &'a Path,
    reader: csv::Reader<&'a [u8]>,
    lines: LineCounter<'a>,
    header: Vec<String>,
    record: csv::StringRecord,
    rows: usize,
}

impl<'a> Records<'a> {
    /// Reads the header; the header must have at least one named column.
    fn new(bytes: &'a [u8], path: &'a Path) -> Result<Records<'a>> {
        let mut lines = LineCounter::new(bytes);
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(bytes);
        let header: Vec<String> =
            reader.headers().map_err(|e| csv_error(path, &mut lines, e))?.iter().map(str::to_string).collect();
        if header.iter().all(String::is_empty) {
            return Err(format_error(path, "line 1: missing header row".into()));
        }
        Ok(Records { path, reader, lines, header, record: csv::StringRecord::new(), rows: 0 })
    }

    /// The position of column `name`, which must be named once only.
    fn column(&self, name: &str, needed: impl Fn() -> String) -> Result<usize> {
        let mut found = self.header.iter().enumerate().filter(|(_, h)| *h == name).map(|(c, _)| c);
        match (found.next(), found.next()) {
            (Some(c), None) => Ok(c),
            (Some(a), Some(b)) => Err(format_error(
                self.path,
                format!("line 1: the name {} is given to columns {} and {}", quote(name), a + 1, b + 1),
            )),
            (None, _) => Err(format_error(self.path, format!("no column {} ({})", quote(name), needed()))),
        }
    }

    /// Checks that every column has a name, and a name of its own (when every column is used).
    fn check_all_named(&self) -> Result<()> {
        let mut seen = std::collections::HashMap::new();
        for (c, name) in self.header.iter().enumerate() {
            if name.is_empty() {
                return Err(format_error(self.path, format!("line 1: column {} has no name", c + 1)));
            }
            if let Some(first) = seen.insert(name.as_str(), c) {
                return Err(format_error(
                    self.path,
                    format!("line 1: the name {} is given to columns {} and {}", quote(name), first + 1, c + 1),
                ));
            }
        }
        Ok(())
    }

    /// The next data row and its line, blank lines skipped; `None` at the end. A file with a
    /// header and no rows is an error.
    fn next_row(&mut self) -> Result<Option<(u64, &csv::StringRecord)>> {
        loop {
            let more =
                self.reader.read_record(&mut self.record).map_err(|e| csv_error(self.path, &mut self.lines, e))?;
            if !more {
                if self.rows == 0 {
                    return Err(format_error(self.path, "has a header but no rows of data".into()));
                }
                return Ok(None);
            }
            let line = self.record.position().map_or(0, |p| self.lines.of_record(p.byte()));
            if self.record.len() == 1 && self.record[0].is_empty() {
                continue; // a blank line
            }
            if self.record.len() != self.header.len() {
                return Err(format_error(
                    self.path,
                    format!("line {line}: {} cells, the header has {} columns", self.record.len(), self.header.len()),
                ));
            }
            self.rows += 1;
            return Ok(Some((line, &self.record)));
        }
    }
}

fn csv_error(path: &Path, lines: &mut LineCounter<'_>, e: csv::Error) -> Error {
    let at = e.position().map(|p| format!("line {}: ", lines.of_record(p.byte()))).unwrap_or_default();
    let msg = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => Error::Io { path: PathBuf::from(path), source },
        csv::ErrorKind::Utf8 { err, .. } => {
            format_error(path, format!("{at}field {} is not UTF-8 text", err.field() + 1))
        }
        _ => format_error(path, format!("{at}{msg}")),
    }
}

/// Appends `v`, growing the buffer fallibly: a table too large for memory is an error.
fn push(buf: &mut Vec<f32>, v: f32, path: &Path) -> Result<()> {
    if buf.len() == buf.capacity() {
        let more = buf.capacity().max(1024);
        crate::backend::ensure_available(
            crate::Device::Cpu,
            ((buf.len() + more) * 4) as u64,
            &format!("reading {}", path.display()),
        )?;
        buf.try_reserve(more)
            .map_err(|_| format_error(path, format!("the table does not fit in memory ({} values read)", buf.len())))?;
    }
    buf.push(v);
    Ok(())
}

/// Appends the numbers in columns `cols` of `row` (at `line`).
fn push_numbers(
    buf: &mut Vec<f32>,
    row: &csv::StringRecord,
    line: u64,
    cols: &[usize],
    header: &[String],
    path: &Path,
) -> Result<()> {
    for &c in cols {
        push(buf, parse_number(path, line, c, &header[c], &row[c])?, path)?;
    }
    Ok(())
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

/// Reads `path` with `label` as the target column (`None`: every column is a feature). The
/// file is read whole (a regular file, within the memory there is); every column must be
/// named, each name once, and at least one row must follow the header.
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
    parse_csv(&super::files::read_regular(path)?, path, label, target, known)
}

/// [`read_csv`] on the bytes of a CSV file already in memory (`path` names it in errors).
pub fn parse_csv(
    bytes: &[u8],
    path: &Path,
    label: Option<&str>,
    target: Target,
    known: Option<&LabelMap>,
) -> Result<Table> {
    let mut records = Records::new(bytes, path)?;
    records.check_all_named()?;
    let header = records.header.clone();
    let label_col = match label {
        None => None,
        Some(name) => Some(records.column(name, || format!("columns: {}", header.join(", ")))?),
    };
    let feature_cols: Vec<usize> = (0..header.len()).filter(|&c| Some(c) != label_col).collect();
    let mut features = Vec::new();
    let mut values = Vec::new();
    // Class names as met, interned: each row keeps only an index.
    let mut names: Vec<String> = Vec::new();
    let mut index_of: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut ids: Vec<u32> = Vec::new();
    let known_index: Option<std::collections::HashMap<&str, usize>> =
        known.map(|m| m.classes.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect());
    while let Some((line, row)) = records.next_row()? {
        push_numbers(&mut features, row, line, &feature_cols, &header, path)?;
        let Some(c) = label_col else { continue };
        let cell = &row[c];
        match target {
            Target::Value => push(&mut values, parse_number(path, line, c, &header[c], cell)?, path)?,
            Target::Class => {
                if cell.is_empty() {
                    return Err(format_error(
                        path,
                        format!("line {line}, column {} ({}): missing label", c + 1, quote(&header[c])),
                    ));
                }
                if let (Some(index), Some(map)) = (&known_index, known) {
                    let i = index.get(cell).copied().ok_or_else(|| {
                        format_error(
                            path,
                            format!("line {line}: unknown class {} (known: {})", quote(cell), map.classes.join(", ")),
                        )
                    })?;
                    push(&mut values, i as f32, path)?;
                    continue;
                }
                let id = match index_of.get(cell) {
                    Some(&id) => id,
                    None => {
                        let id = names.len() as u32;
                        names.push(cell.to_string());
                        index_of.insert(cell.to_string(), id);
                        id
                    }
                };
                ids.push(id);
            }
        }
    }
    let n = records.rows;
    let (targets, classes) = match (label_col, target, known) {
        (None, _, _) => (None, None),
        (Some(_), Target::Value, _) => (Some(values), None),
        (Some(_), Target::Class, Some(map)) => (Some(values), Some(map.clone())),
        (Some(_), Target::Class, None) => {
            // The map orders the names (numerically when they are numbers); rows follow it.
            let map = LabelMap::from_labels(names.iter().map(String::as_str));
            let order: Vec<f32> = names.iter().map(|n| map.index_of(n).unwrap_or(0) as f32).collect();
            (Some(ids.iter().map(|&id| order[id as usize]).collect()), Some(map))
        }
    };
    Ok(Table {
        features: Tensor::from_vec(features, &[n, feature_cols.len()])?,
        feature_names: feature_cols.iter().map(|&c| header[c].clone()).collect(),
        targets: targets.map(|t| Tensor::from_vec(t, &[n])).transpose()?,
        classes,
    })
}

/// Reads the columns `names` (in that order, wherever they are in the file) as features
/// `[N, F]`; other columns are ignored (and may be unnamed, as a saved index column is). For
/// prediction on new data.
pub fn read_features(path: impl AsRef<Path>, names: &[String]) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = super::files::read_regular(path)?;
    let mut records = Records::new(&bytes, path)?;
    let cols = names
        .iter()
        .map(|n| records.column(n, || format!("the model needs: {}", names.join(", "))))
        .collect::<Result<Vec<usize>>>()?;
    let header = records.header.clone();
    let mut out = Vec::new();
    while let Some((line, row)) = records.next_row()? {
        push_numbers(&mut out, row, line, &cols, &header, path)?;
    }
    Tensor::from_vec(out, &[records.rows, cols.len()])
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

    #[test]
    fn unused_columns_may_be_unnamed_and_empty_rows_are_missing_values() {
        // A pandas to_csv() file: an unnamed index column the model does not use.
        let p = write("pandas.csv", ",f1,f2\n0,1.5,2\n1,3,4.5\n");
        let f = read_features(&p, &["f2".into(), "f1".into()]).unwrap();
        assert_eq!(f.to_vec(), vec![2., 1.5, 4.5, 3.]);
        // But a column it uses must be named once.
        let p = write("twice.csv", "f1,f1\n1,2\n");
        assert!(read_features(&p, &["f1".into()]).unwrap_err().to_string().contains("given to columns 1 and 2"));
        // A row of empty cells is missing values, not a blank line.
        let p = write("empty_row.csv", "a,b\n1,2\n,\n");
        let e = read_csv(&p, None, Target::Value, None).unwrap_err().to_string();
        assert!(e.contains("line 3, column 1 ('a'): missing value"), "{e}");
    }
}
