//! The red wine-quality data: 11 raw measurements and a quality score from 3 to 8.

use std::error::Error;
use std::path::Path;

use ndarray::{Array2, Axis};
use tapegrad::Tensor;

/// Features `(n, 11)` and classes `0..6` (quality 3 to 8).
pub struct Data {
    /// Features, one row per wine.
    pub x: Array2<f32>,
    /// Classes `quality - 3`.
    pub y: Vec<usize>,
}

impl Data {
    /// Reads the CSV (a header, then the measurements and the quality per line).
    pub fn load(path: &Path) -> Result<Data, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (mut features, mut labels) = (Vec::new(), Vec::new());
        for (line_no, line) in text.lines().enumerate().skip(1) {
            let fields: Vec<f32> = line
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), line_no + 1))?;
            let (quality, measurements) = fields.split_last().ok_or("empty line")?;
            features.extend_from_slice(measurements);
            labels.push(
                (*quality as usize)
                    .checked_sub(3)
                    .ok_or("quality below 3")?,
            );
        }
        let n = labels.len();
        Ok(Data {
            x: Array2::from_shape_vec((n, features.len() / n.max(1)), features)?,
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
