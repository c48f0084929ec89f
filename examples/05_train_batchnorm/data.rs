//! The red wine-quality data: 11 raw measurements and a quality score from 3 to 8.

use std::error::Error;
use std::path::Path;

use ndarray::{Array2, Axis};
use tapegrad::Tensor;

/// Features `(n, 11)` and classes `0..6` (quality 3 to 8).
#[derive(Debug)]
pub struct Data {
    /// Features, one row per wine.
    pub x: Array2<f32>,
    /// Classes `quality - 3`.
    pub y: Vec<usize>,
}

impl Data {
    /// Reads the CSV: a header, then the measurements and the quality per line, separated by
    /// commas or, as in the UCI original, semicolons (whichever the header uses).
    pub fn load(path: &Path) -> Result<Data, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()).into())
    }

    /// The data of a CSV text (see [`Data::load`]).
    pub fn parse(text: &str) -> Result<Data, String> {
        let header = text.lines().next().unwrap_or_default();
        let delimiter = if header.contains(';') { b';' } else { b',' };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let columns = reader.headers().map_err(|e| e.to_string())?.len();
        let (mut features, mut labels) = (Vec::new(), Vec::new());
        for record in reader.records() {
            let record = record.map_err(|e| e.to_string())?;
            let line = record.position().map_or(0, |p| p.line());
            let fields: Vec<f32> = record
                .iter()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("line {line}: {e} (fields {:?})", record.as_slice()))?;
            if fields.len() != columns {
                return Err(format!(
                    "line {line}: {} fields, the header has {columns}",
                    fields.len()
                ));
            }
            let (quality, measurements) = fields.split_last().ok_or("an empty header")?;
            features.extend_from_slice(measurements);
            labels.push(
                (*quality as usize)
                    .checked_sub(3)
                    .ok_or(format!("line {line}: a quality below 3"))?,
            );
        }
        let n = labels.len();
        if n == 0 {
            return Err("no data rows after the header".into());
        }
        Ok(Data {
            x: Array2::from_shape_vec((n, columns - 1), features).map_err(|e| e.to_string())?,
            y: labels,
        })
    }

    /// The rows `idx` as a batch: inputs and labels.
    pub fn rows(&self, idx: &[usize]) -> (Tensor<f32>, Vec<usize>) {
        let x = self.x.select(Axis(0), idx);
        (
            Tensor::constant(x),
            idx.iter().map(|&i| self.y[i]).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Data;

    #[test]
    fn commas_semicolons_quotes_and_a_trailing_blank_line_all_read() {
        let comma = "\"a\",\"b\",\"quality\"\n1.5,2,5\n3,4.25,8\n";
        let semicolon = "\"a\";\"b\";\"quality\"\n1.5;2;5\n3;4.25;8\n\n";
        for text in [comma, semicolon] {
            let data = Data::parse(text).unwrap();
            assert_eq!(data.x.as_slice().unwrap(), [1.5, 2.0, 3.0, 4.25]);
            assert_eq!(data.y, [2, 5]);
        }
    }

    #[test]
    fn a_bad_field_names_its_line() {
        let err = Data::parse("a,quality\n1,5\nx,6\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(
            Data::parse("a,quality\n")
                .unwrap_err()
                .contains("no data rows")
        );
    }
}
