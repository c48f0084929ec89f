//! The per-epoch history of a run, and its plot (SVG, with plotters).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

/// What one model recorded per epoch, from epoch `first_epoch` on (after a resume, the
/// epoch after the checkpoint's).
#[derive(Default)]
pub struct History {
    /// The epoch of the first entries (1 when the run started from scratch; 0 is read as 1).
    pub first_epoch: usize,
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Test accuracy per epoch, in evaluation mode.
    pub test_accuracy: Vec<f64>,
}

/// Draws one line per run into `chart`, with its legend entry.
fn draw_runs<DB: DrawingBackend, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    runs: &[(&str, &History)],
    values: impl Fn(&History) -> &[f64],
) -> Result<(), Box<dyn Error>>
where
    X: Ranged<ValueType = usize>,
    Y: Ranged<ValueType = f64>,
    DB::ErrorType: 'static,
{
    for ((name, history), colour) in runs.iter().zip([BLUE, RED]) {
        let first = history.first_epoch.max(1);
        let points: Vec<(usize, f64)> = values(history)
            .iter()
            .enumerate()
            .map(|(i, &v)| (first + i, v))
            .filter(|p| p.1.is_finite())
            .collect();
        // A marker at every epoch, so that a run of one epoch shows too.
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        chart
            .draw_series(LineSeries::new(points, colour))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    Ok(())
}

/// Writes the loss and accuracy curves of `runs`, with the majority-class `baseline`.
pub fn plot(path: &Path, runs: &[(&str, &History)], baseline: f64) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    // The epochs the runs cover (at least two on the axis, for a run of one epoch).
    let first = runs
        .iter()
        .map(|(_, h)| h.first_epoch.max(1))
        .min()
        .unwrap_or(1);
    let last = runs
        .iter()
        .map(|(_, h)| h.first_epoch.max(1) + h.train_loss.len().max(1) - 1)
        .max()
        .unwrap_or(1)
        .max(first + 1);
    let finite_max = |values: &mut dyn Iterator<Item = f64>| {
        values.filter(|v| v.is_finite()).fold(0.0, f64::max)
    };
    let losses = || runs.iter().flat_map(|(_, h)| h.train_loss.iter().copied());
    let max_loss = finite_max(&mut losses());
    let min_loss = losses().filter(|v| v.is_finite()).fold(max_loss, f64::min);

    // Log scale: the first epoch without BatchNorm is far above the rest. Its ticks are the
    // 1-2-5 values in range, each drawn once (plotters' own log ticks repeat "10.0" and fill
    // the top decade with a grey band of minor lines).
    let (low, high) = if max_loss > 0.0 {
        (min_loss * 0.9, max_loss * 1.1)
    } else {
        (0.1, 10.0) // no finite loss to show: an empty chart with a sensible axis
    };
    let ticks: Vec<f64> = (-3..4)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|t| (low..=high).contains(t))
        .collect();
    let mut chart = ChartBuilder::on(&left)
        .caption("train loss", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(first..last, (low..high).log_scale().with_key_points(ticks))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("cross-entropy (log scale)")
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(TRANSPARENT)
        .draw()?;
    draw_runs(&mut chart, runs, |h| &h.train_loss)?;
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&right)
        .caption("test accuracy (evaluation mode)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(first..last, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .y_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
        .light_line_style(TRANSPARENT)
        .draw()?;
    draw_runs(&mut chart, runs, |h| &h.test_accuracy)?;
    // Dashed, thick and drawn last: a model stuck at the majority class lies exactly on this
    // line, and both must stay visible.
    let baseline_style = BLACK.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(
            [(first, baseline), (last, baseline)],
            6,
            6,
            baseline_style,
        ))?
        .label("majority class")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], baseline_style));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
