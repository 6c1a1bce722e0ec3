//! The region round-trip-time matrix (`region-rtt-ms.csv`): rows are `from`, columns `to`, in
//! milliseconds.
//!
//! ```text
//! from,us-east-1,eu-west-1,...
//! us-east-1,0,80.55,...
//! eu-west-1,80.52,0,...
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most regions a matrix may name: the file is ours, but a bound keeps a wrong file from making
/// the bench allocate without limit.
pub const MAX_REGIONS: usize = 256;

/// Default location of the matrix, relative to the workspace root (`/work/main`).
pub const DEFAULT_RTT_FILE: &str = "../shared/data/region-rtt-ms.csv";

/// A copy of that matrix ("Latency Between AWS Global Regions", 2017, as published in the
/// shared data folder), used when the shared folder is not next to the checkout.
pub const BUNDLED_RTT_CSV: &str = include_str!("../data/region-rtt-ms.csv");

/// Errors reading the matrix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RttError {
    /// The file could not be read.
    #[error("cannot read the RTT matrix {path}: {source}; pass its location with --rtt-file")]
    Read {
        /// Every path tried.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The header line is missing or does not start with `from`.
    #[error("the RTT matrix has no `from,<region>,...` header line")]
    NoHeader,
    /// No regions, or more than [`MAX_REGIONS`].
    #[error("the RTT matrix names {0} regions; expected 1 to {MAX_REGIONS}")]
    RegionCount(usize),
    /// A row has the wrong number of fields.
    #[error("line {line}: expected {expected} fields, found {found}")]
    RowLength {
        /// 1-based line number.
        line: usize,
        /// Fields expected (regions + 1).
        expected: usize,
        /// Fields found.
        found: usize,
    },
    /// A row names a region the header does not, or one named twice.
    #[error("line {line}: row region {region:?} is unknown or repeated")]
    BadRow {
        /// 1-based line number.
        line: usize,
        /// The row's region.
        region: String,
    },
    /// A value is not a finite non-negative number.
    #[error("line {line}: {value:?} is not a round-trip time in milliseconds")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// The field.
        value: String,
    },
    /// Some header region has no row.
    #[error("region {0:?} has no row")]
    MissingRow(String),
}

/// Round-trip times between regions.
#[derive(Debug, Clone, PartialEq)]
pub struct RttMatrix {
    regions: Vec<String>,
    /// Row-major: `rtt_ms[from * n + to]`.
    rtt_ms: Vec<f64>,
}

impl RttMatrix {
    /// Parses the CSV text. Rows may come in any order; each header region needs exactly one.
    pub fn parse(text: &str) -> Result<Self, RttError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (_, header) = lines.next().ok_or(RttError::NoHeader)?;
        let mut fields = header.split(',').map(str::trim);
        if fields.next() != Some("from") {
            return Err(RttError::NoHeader);
        }
        let regions: Vec<String> = fields.map(str::to_owned).collect();
        let n = regions.len();
        if n == 0 || n > MAX_REGIONS {
            return Err(RttError::RegionCount(n));
        }
        let mut rows: Vec<Option<Vec<f64>>> = vec![None; n];
        for (line, text) in lines {
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            if fields.len() != n + 1 {
                return Err(RttError::RowLength {
                    line,
                    expected: n + 1,
                    found: fields.len(),
                });
            }
            let name = fields.first().copied().unwrap_or_default();
            let index = regions.iter().position(|r| r == name);
            let slot = match index.and_then(|i| rows.get_mut(i)) {
                Some(slot @ None) => slot,
                _ => {
                    return Err(RttError::BadRow {
                        line,
                        region: name.to_owned(),
                    });
                }
            };
            let values = fields
                .iter()
                .skip(1)
                .map(|v| match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                    _ => Err(RttError::BadValue {
                        line,
                        value: (*v).to_owned(),
                    }),
                })
                .collect::<Result<Vec<f64>, _>>()?;
            *slot = Some(values);
        }
        let mut rtt_ms = Vec::with_capacity(n * n);
        for (region, row) in regions.iter().zip(rows) {
            rtt_ms.extend(row.ok_or_else(|| RttError::MissingRow(region.clone()))?);
        }
        Ok(Self { regions, rtt_ms })
    }

    /// Reads the matrix from `path`. A relative path that does not exist from the current
    /// directory is also tried from the workspace root, so `cargo test` (which runs in the
    /// crate's directory) and `cargo run` (in the workspace root) find the same default file.
    pub fn load(path: &Path) -> Result<Self, RttError> {
        let candidates = candidate_paths(path);
        let mut last = None;
        for candidate in &candidates {
            match std::fs::read_to_string(candidate) {
                Ok(text) => return Self::parse(&text),
                Err(e) => last = Some(e),
            }
        }
        if path == Path::new(DEFAULT_RTT_FILE) {
            // A checkout without the shared data folder: the copy shipped with the bench.
            return Self::parse(BUNDLED_RTT_CSV);
        }
        Err(RttError::Read {
            path: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            source: last.unwrap_or_else(|| std::io::Error::other("no path to try")),
        })
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no regions (never true for a parsed matrix).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The name of region `i`.
    pub fn region(&self, i: usize) -> &str {
        self.regions.get(i).map_or("?", String::as_str)
    }

    /// Measured round-trip time from region `from` to region `to`, in milliseconds.
    pub fn rtt_ms(&self, from: usize, to: usize) -> f64 {
        self.rtt_ms
            .get(from * self.regions.len() + to)
            .copied()
            .unwrap_or(0.0)
    }

    /// The one-way delay of a link dialled from `from` to `to`: half the measured RTT.
    pub fn one_way(&self, from: usize, to: usize) -> Duration {
        Duration::from_secs_f64(self.rtt_ms(from, to) / 2.0 / 1_000.0)
    }
}

/// `path` itself, then (if relative) the same path from the workspace root.
fn candidate_paths(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    if path.is_relative() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        out.push(root.join(path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "from,a,b,c\nb,10,0,30\na,0,10.5,20\n\nc,20,30,0\n";

    #[test]
    fn parses_rows_in_any_order() {
        let m = RttMatrix::parse(SAMPLE).expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m.region(2), "c");
        assert_eq!(m.rtt_ms(0, 1), 10.5);
        assert_eq!(m.rtt_ms(1, 0), 10.0);
        assert_eq!(m.one_way(0, 2), Duration::from_millis(10));
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(matches!(
            RttMatrix::parse("to,a\na,0\n"),
            Err(RttError::NoHeader)
        ));
        assert!(matches!(
            RttMatrix::parse("from,a,b\na,0,1\n"),
            Err(RttError::MissingRow(r)) if r == "b"
        ));
        assert!(matches!(
            RttMatrix::parse("from,a,b\na,0,1\na,0,1\n"),
            Err(RttError::BadRow { line: 3, .. })
        ));
        assert!(matches!(
            RttMatrix::parse("from,a\na,-1\n"),
            Err(RttError::BadValue { .. })
        ));
        assert!(matches!(
            RttMatrix::parse("from,a\na,1,2\n"),
            Err(RttError::RowLength { .. })
        ));
    }

    #[test]
    fn the_bundled_matrix_parses() {
        let m = RttMatrix::parse(BUNDLED_RTT_CSV).expect("bundled matrix");
        assert_eq!(m.len(), 10);
        assert_eq!(m.region(0), "us-east-1");
        assert!((0..m.len()).all(|i| m.rtt_ms(i, i) == 0.0));
    }
}
