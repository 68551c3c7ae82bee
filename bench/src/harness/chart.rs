//! An SVG chart of latency against achieved throughput for sweeps: the usual picture of
//! a system's capacity, where latency stays flat until the system saturates and then
//! rises steeply.
//!
//! Each result file is one colour, with two series: p50 (solid line, circles) and p99
//! (dashed line, triangles). Points are joined in the order the load levels ran, so a
//! sweep whose throughput falls past saturation bends back as it does in reality. The x
//! axis is successful operations per second, the y axis latency on a log scale, in
//! microseconds, or milliseconds when the largest p99 reaches 10 ms. Latency at a load
//! level combines the histograms of the charted operation kinds (all kinds unless one is
//! chosen) and throughput adds their rates.
//!
//! Drawing uses plotters' SVG backend without font support, which writes text as SVG
//! `<text>` elements for the viewer to render and estimates text sizes for layout, so no
//! system fonts, fontconfig or freetype are needed.

use std::fs;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::result::{PointResult, ResultError, RunResult};

/// Width and height of the chart, in SVG pixels.
const CHART_SIZE_PIXELS: (u32, u32) = (960, 600);

/// Series colours, one per result file, repeating after the sixth.
const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The largest p99, in microseconds, from which the y axis shows milliseconds.
const MILLIS_AXIS_FROM_MICROS: f64 = 10_000.0;

/// One result file's load levels, ready to draw.
struct Series {
    name: String,
    points: Vec<ChartPoint>,
}

#[derive(Clone, Copy)]
struct ChartPoint {
    ok_per_sec: f64,
    p50_micros: f64,
    p99_micros: f64,
}

/// Writes an SVG chart of p50 and p99 latency of all operations against achieved
/// throughput, one colour per result, labelled with each target's system name.
///
/// # Errors
///
/// [`ResultError::Chart`] when no load level of any result has a successful operation
/// or drawing fails, [`ResultError::InvalidHistogram`] inside [`ResultError::In`] for a
/// histogram that does not decode, and [`ResultError::Write`] when writing fails.
pub fn write_latency_chart(
    results: &[&RunResult],
    path: impl AsRef<Path>,
) -> Result<(), ResultError> {
    write_chart(results, None, path.as_ref())
}

/// Writes the chart of [`write_latency_chart`] for one operation kind, such as `write`.
///
/// # Errors
///
/// As [`write_latency_chart`].
pub fn write_operation_latency_chart(
    results: &[&RunResult],
    kind: &str,
    path: impl AsRef<Path>,
) -> Result<(), ResultError> {
    write_chart(results, Some(kind), path.as_ref())
}

fn write_chart(results: &[&RunResult], kind: Option<&str>, path: &Path) -> Result<(), ResultError> {
    let chart_error = |reason: String| ResultError::Chart {
        path: path.to_owned(),
        reason,
    };
    let series = collect_series(results, kind)?;
    if series.iter().all(|series| series.points.is_empty()) {
        let operations = kind.map_or("any operation".to_owned(), |kind| format!("a `{kind}`"));
        return Err(chart_error(format!(
            "no load level of the {} results has {operations} that succeeded",
            results.len()
        )));
    }

    let title = match kind {
        Some(kind) => format!("{kind} latency against throughput"),
        None => "Latency against throughput, all operations".to_owned(),
    };
    let mut svg = String::new();
    draw(&series, &title, &mut svg).map_err(chart_error)?;
    fs::write(path, svg).map_err(|source| ResultError::Write {
        path: path.to_owned(),
        source,
    })
}

fn collect_series(results: &[&RunResult], kind: Option<&str>) -> Result<Vec<Series>, ResultError> {
    let mut series = Vec::with_capacity(results.len());
    for (index, result) in results.iter().enumerate() {
        let mut points = Vec::new();
        for (point_index, point) in result.points.iter().enumerate() {
            let location = format!(
                "result {}, point {} ({})",
                index + 1,
                point_index + 1,
                point.label()
            );
            if let Some(chart_point) = chart_point(point, kind).map_err(|e| e.at(location))? {
                points.push(chart_point);
            }
        }
        series.push(Series {
            name: series_name(results, index),
            points,
        });
    }
    Ok(series)
}

/// Returns the target's system and kind, numbered when several results share them.
fn series_name(results: &[&RunResult], index: usize) -> String {
    let name = |result: &RunResult| format!("{} ({})", result.target.system, result.target.kind);
    let own = name(results[index]);
    let shared = results.iter().filter(|result| name(result) == own).count();
    if shared > 1 {
        format!("{own} #{}", index + 1)
    } else {
        own
    }
}

/// Combines the charted operations of one load level; `None` when none succeeded.
fn chart_point(point: &PointResult, kind: Option<&str>) -> Result<Option<ChartPoint>, ResultError> {
    let mut ok_per_sec = 0.0;
    let mut latency: Option<Histogram<u64>> = None;
    let charted = point
        .operations
        .iter()
        .filter(|(name, _)| kind.is_none_or(|kind| kind == name.as_str()));
    for (name, operation) in charted {
        ok_per_sec += operation.ok_per_sec;
        let histogram = operation
            .latency
            .decode()
            .map_err(|error| error.at(format!("operation `{name}`")))?;
        match latency.as_mut() {
            None => {
                let mut first = histogram;
                first.auto(true);
                latency = Some(first);
            }
            Some(sum) => sum
                .add(&histogram)
                .map_err(|error| ResultError::InvalidHistogram {
                    reason: format!(
                        "adding the histogram of operation `{name}` failed ({error:?})"
                    ),
                })?,
        }
    }
    let Some(latency) = latency.filter(|histogram| !histogram.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(ChartPoint {
        ok_per_sec,
        p50_micros: latency.value_at_quantile(0.5) as f64 / 1_000.0,
        p99_micros: latency.value_at_quantile(0.99) as f64 / 1_000.0,
    }))
}

/// Chooses the y axis unit: returns its name and how many microseconds one unit is.
fn latency_unit(series: &[Series]) -> (&'static str, f64) {
    let p99_max = all_points(series)
        .map(|point| point.p99_micros)
        .fold(0.0, f64::max);
    if p99_max >= MILLIS_AXIS_FROM_MICROS {
        ("ms", 1_000.0)
    } else {
        ("µs", 1.0)
    }
}

fn all_points(series: &[Series]) -> impl Iterator<Item = &ChartPoint> {
    series.iter().flat_map(|series| &series.points)
}

/// Draws the chart into `svg`; the error is plotters' message.
fn draw(series: &[Series], title: &str, svg: &mut String) -> Result<(), String> {
    let (unit, micros_per_unit) = latency_unit(series);
    let x_max = all_points(series)
        .map(|point| point.ok_per_sec)
        .fold(0.0, f64::max);
    let y_min = all_points(series)
        .map(|point| point.p50_micros.min(point.p99_micros) / micros_per_unit)
        .fold(f64::INFINITY, f64::min);
    let y_max = all_points(series)
        .map(|point| point.p99_micros.max(point.p50_micros) / micros_per_unit)
        .fold(0.0, f64::max);
    // Log axes need a positive range; 1 ns is the smallest latency a histogram records.
    let y_low = (y_min / 1.5).max(0.001 / micros_per_unit);
    let y_high = (y_max * 1.5).max(y_low * 10.0);
    let x_high = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };

    let root = SVGBackend::with_string(svg, CHART_SIZE_PIXELS).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_high, (y_low..y_high).log_scale())
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (successful operations/s)")
        .y_desc(format!("latency ({unit}, log scale)"))
        .x_label_formatter(&|value| format_tick(*value))
        .y_label_formatter(&|value| format_tick(*value))
        .draw()
        .map_err(|error| error.to_string())?;

    for (index, one) in series.iter().enumerate() {
        let color = SERIES_COLORS[index % SERIES_COLORS.len()];
        draw_series(&mut chart, one, color, micros_per_unit).map_err(|error| error.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|error| error.to_string())?;
    root.present().map_err(|error| error.to_string())
}

type LatencyChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::combinators::LogCoord<f64>,
    >,
>;

fn draw_series(
    chart: &mut LatencyChart<'_, '_>,
    series: &Series,
    color: RGBColor,
    micros_per_unit: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let p50: Vec<(f64, f64)> = series
        .points
        .iter()
        .map(|point| (point.ok_per_sec, point.p50_micros / micros_per_unit))
        .collect();
    let p99: Vec<(f64, f64)> = series
        .points
        .iter()
        .map(|point| (point.ok_per_sec, point.p99_micros / micros_per_unit))
        .collect();
    let line = color.stroke_width(2);

    chart
        .draw_series(LineSeries::new(p50.clone(), line))?
        .label(format!("{} p50", series.name))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
    chart.draw_series(
        p50.iter()
            .map(|&point| Circle::new(point, 4, color.filled())),
    )?;

    chart
        .draw_series(DashedLineSeries::new(p99.clone(), 8, 5, line))?
        .label(format!("{} p99", series.name))
        .legend(move |(x, y)| {
            plotters::element::DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 3, line)
        });
    chart.draw_series(
        p99.iter()
            .map(|&point| TriangleMarker::new(point, 5, color.filled())),
    )?;
    Ok(())
}

/// Formats an axis tick: whole numbers without decimals, others with fewer decimals as
/// they grow.
fn format_tick(value: f64) -> String {
    if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
