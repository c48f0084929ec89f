//! The 1,797 8×8 handwritten digits (UCI optdigits' test set, as scikit-learn ships it).

use std::error::Error;
use std::path::Path;

use ndarray::{Array4, Axis};
use tapegrad::Tensor;

/// Images `(n, 8, 8, 1)` scaled to `[0, 1]`, and their digits.
pub struct Digits {
    /// One 8×8 image per row, NHWC.
    pub images: Array4<f32>,
    /// The digit each image shows.
    pub labels: Vec<usize>,
}

impl Digits {
    /// Reads the CSV: per line 64 pixel counts in `0..=16`, row by row, then the digit.
    pub fn load(path: &Path) -> Result<Digits, Box<dyn Error>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for (line_no, line) in text.lines().enumerate() {
            let fields: Vec<f32> = line
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), line_no + 1))?;
            let (&digit, image) = fields.split_last().ok_or("empty line")?;
            if image.len() != 64 || !(0.0..10.0).contains(&digit) {
                return Err(format!(
                    "{}:{}: not 64 pixels and a digit",
                    path.display(),
                    line_no + 1
                )
                .into());
            }
            pixels.extend(image.iter().map(|p| p / 16.0));
            labels.push(digit as usize);
        }
        let n = labels.len();
        Ok(Digits {
            images: Array4::from_shape_vec((n, 8, 8, 1), pixels)?,
            labels,
        })
    }

    /// The images `idx` as a batch, and their labels.
    pub fn batch(&self, idx: &[usize]) -> (Tensor<f32>, Vec<usize>) {
        let x = self.images.select(Axis(0), idx);
        (
            Tensor::constant(x),
            idx.iter().map(|&i| self.labels[i]).collect(),
        )
    }
}
