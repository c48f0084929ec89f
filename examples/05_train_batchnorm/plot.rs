//! The per-epoch history of a run, and its plot (SVG, with plotters).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

/// What one model recorded per epoch.
#[derive(Default)]
pub struct History {
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
        let points = values(history).iter().enumerate().map(|(i, &v)| (i + 1, v));
        chart
            .draw_series(LineSeries::new(points.filter(|p| p.1.is_finite()), colour))?
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
    let epochs = runs
        .iter()
        .map(|(_, h)| h.train_loss.len())
        .max()
        .unwrap_or(1);
    let finite_max = |values: &mut dyn Iterator<Item = f64>| {
        values.filter(|v| v.is_finite()).fold(0.0, f64::max)
    };
    let losses = || runs.iter().flat_map(|(_, h)| h.train_loss.iter().copied());
    let max_loss = finite_max(&mut losses());
    let min_loss = losses().filter(|v| v.is_finite()).fold(max_loss, f64::min);

    let mut chart = ChartBuilder::on(&left)
        .caption("train loss (cross-entropy)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(45)
        // Log scale: the first epoch without BatchNorm is far above the rest.
        .build_cartesian_2d(1..epochs, (min_loss * 0.9..max_loss * 1.1).log_scale())?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    draw_runs(&mut chart, runs, |h| &h.train_loss)?;
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;

    let mut chart = ChartBuilder::on(&right)
        .caption("test accuracy (evaluation mode)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(1..epochs, 0.0..1.0)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    draw_runs(&mut chart, runs, |h| &h.test_accuracy)?;
    chart
        .draw_series(LineSeries::new(
            [(1, baseline), (epochs, baseline)],
            BLACK.mix(0.5),
        ))?
        .label("majority class")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
