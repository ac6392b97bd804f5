//! The loss plot a run redraws as it trains, drawn with plotters to a PNG and an SVG: each
//! series' raw curve faint with a smoothed curve over it, the epochs marked, and optional
//! further panels (D(x) and D(G(z)) for a GAN, reconstruction and KL for a VAE) below the first,
//! sharing its x axis. Not a plotting library: one chart layout, linear axes.
//!
//! Points that are NaN, infinite or beyond ±1e150 are skipped (the line joins their
//! neighbours); a series with one point (or all points equal) is drawn as a dot; all-equal
//! values get an axis around them; a panel with no points shows its axes and "no data". Long
//! series are thinned to the highest and lowest point of each short run before drawing, which
//! keeps every spike and draws a million points in milliseconds.
//!
//! The PNG's text is drawn in DejaVu Sans, built into the crate (`assets/`): drawing needs no
//! system fonts. The SVG names "sans-serif" and leaves the font to its viewer.

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::error::{Result, RunError};
use crate::metrics::Series;

/// One panel of a chart: its series share a y axis.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    pub y_label: &'a str,
    pub series: &'a [Series],
}

/// A chart: `panels` stacked top to bottom under `title`, sharing one x axis labelled
/// `x_label`. With `steps_per_epoch`, a light vertical line marks the end of each epoch (of
/// every 2nd, 5th, 10th... when there are more than [`MAX_EPOCH_MARKS`] epochs).
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub panels: &'a [Panel<'a>],
    pub steps_per_epoch: Option<u64>,
}

/// Image width in pixels.
pub const WIDTH: u32 = 900;
/// The height of the first panel, title included, and of each further one.
const FIRST_PANEL_HEIGHT: u32 = 500;
const OTHER_PANEL_HEIGHT: u32 = 260;
/// At most this many panels: each makes the image taller.
pub const MAX_PANELS: usize = 4;
/// At most this many epoch lines are drawn.
pub const MAX_EPOCH_MARKS: usize = 20;

/// The series colours, in order (matplotlib's "tab10", less its gray and olive), counted
/// across panels so no two series of a chart share one until the ninth.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],  // blue
    [255, 127, 14],  // orange
    [44, 160, 44],   // green
    [214, 39, 40],   // red
    [148, 103, 189], // purple
    [140, 86, 75],   // brown
    [227, 119, 194], // pink
    [23, 190, 207],  // cyan
];
/// How much of its colour the raw curve under a smoothed one keeps (see [`Curve::faint_colour`]).
const RAW_TINT: f64 = 0.25;
/// The colour of the epoch lines.
pub const EPOCH_COLOUR: [u8; 3] = [205, 205, 205];
const GRID_COLOUR: RGBColor = RGBColor(235, 235, 235);

/// The smoothing weight: TensorBoard's exponential moving average, weight 0.9 (each point
/// counts for a tenth, so about the last ten points show) for series of up to 1000 points.
/// Longer series smooth over 1% of their points instead, so a curve logged every step reads
/// like one logged every hundred: at 900 pixels across, ten points of a long series are less
/// than a pixel and would smooth nothing.
pub fn smoothing_weight(points: usize) -> f64 {
    1.0 - 1.0 / (points as f64 / 100.0).max(10.0)
}

/// Values beyond this are skipped: it keeps every span and tick computation finite.
const MAX_MAGNITUDE: f64 = 1e150;
/// More points than this are thinned before drawing (a few per pixel column).
const MAX_DRAWN_POINTS: usize = 4 * WIDTH as usize;
/// Series names longer than this are cut, so the legend cannot cover the plot.
const MAX_NAME_CHARS: usize = 40;

/// The font every text style below names, DejaVu Sans (see assets/README.md).
const FONT: &str = "sans-serif";
const FONT_FILE: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Draws `chart` to `png_path` (an RGB PNG [`WIDTH`] pixels wide, 500 tall with one panel and
/// 260 taller for each further one) and to the same path with extension "svg". Each file
/// appears whole or not at all (written under a temporary name, then renamed). Fails when the
/// chart has more than [`MAX_PANELS`] panels or a file cannot be written.
pub fn draw(png_path: impl AsRef<Path>, chart: &Chart) -> Result<()> {
    let png_path = png_path.as_ref();
    let svg_path = png_path.with_extension("svg");
    if chart.panels.len() > MAX_PANELS {
        return Err(RunError::Plot {
            path: png_path.display().to_string(),
            message: format!(
                "a chart has at most {MAX_PANELS} panels, got {}",
                chart.panels.len()
            ),
        });
    }
    static REGISTER_FONT: std::sync::Once = std::sync::Once::new();
    REGISTER_FONT.call_once(|| {
        // Cannot fail for the committed font; if it did, drawing text would fail with "font
        // unavailable" and `draw` return that.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_FILE);
    });
    let layout = Layout::new(chart);
    let (width, height) = layout.size();
    let drawing_error = |path: &Path, err: &dyn std::fmt::Display| RunError::Plot {
        path: path.display().to_string(),
        message: err.to_string(),
    };

    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        render(&root, chart, &layout)
            .and_then(|()| root.present())
            .map_err(|err| drawing_error(png_path, &err))?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        render(&root, chart, &layout)
            .and_then(|()| root.present())
            .map_err(|err| drawing_error(&svg_path, &err))?;
    }

    kiln_fs::write_file_atomically(png_path, |out| {
        let mut encoder = png::Encoder::new(out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // A third of the default's time for a quarter more bytes: the plot is redrawn as a
        // run trains, and tests draw dozens in debug builds.
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&pixels)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
    .map_err(|err| RunError::io(png_path, "write", err))?;
    kiln_fs::write_file_atomically(&svg_path, |out| {
        std::io::Write::write_all(out, svg.as_bytes())
    })
    .map_err(|err| RunError::io(&svg_path, "write", err))
}

/// What a chart draws, worked out once for both images: the curves ready to draw and the axes.
struct Layout {
    panels: Vec<PanelLayout>,
    x: Span,
    epoch_marks: Vec<(f64, u64)>,
}

struct PanelLayout {
    curves: Vec<Curve>,
    y: Span,
}

/// One series ready to draw: the points that can be drawn, and their smoothed curve, both
/// thinned.
struct Curve {
    name: String,
    colour: RGBColor,
    raw: Vec<(f64, f64)>,
    smoothed: Vec<(f64, f64)>,
}

impl Layout {
    fn new(chart: &Chart) -> Layout {
        // A chart without panels draws one, empty: its axes and "no data".
        let no_panel = [Panel {
            y_label: "",
            series: &[],
        }];
        let panels = if chart.panels.is_empty() {
            &no_panel[..]
        } else {
            chart.panels
        };
        let mut colours = PALETTE.iter().cycle().map(|&[r, g, b]| RGBColor(r, g, b));
        let panels: Vec<PanelLayout> = panels
            .iter()
            .map(|panel| {
                let curves: Vec<Curve> = panel
                    .series
                    .iter()
                    .zip(&mut colours)
                    .map(|((name, points), colour)| Curve::new(name, points, colour))
                    .collect();
                let y = Span::covering(curves.iter().flat_map(|c| &c.raw).map(|p| p.1), 0.05);
                PanelLayout { curves, y }
            })
            .collect();
        let all_points = panels.iter().flat_map(|p| &p.curves).flat_map(|c| &c.raw);
        let x = Span::covering(all_points.map(|p| p.0), 0.01);
        let epoch_marks = epoch_marks(chart.steps_per_epoch, &x);
        Layout {
            panels,
            x,
            epoch_marks,
        }
    }

    fn size(&self) -> (u32, u32) {
        let further = self.panels.len() as u32 - 1;
        (WIDTH, FIRST_PANEL_HEIGHT + further * OTHER_PANEL_HEIGHT)
    }
}

impl Curve {
    fn new(name: &str, points: &[(f64, f64)], colour: RGBColor) -> Curve {
        let raw = plottable(points);
        let smoothed = smooth(&raw, smoothing_weight(raw.len()));
        let name = match name.char_indices().nth(MAX_NAME_CHARS) {
            Some((cut, _)) => format!("{}…", &name[..cut]),
            None => name.to_string(),
        };
        Curve {
            name,
            colour,
            raw: thin(raw),
            smoothed: thin(smoothed),
        }
    }

    /// Two points or more, not all equal: a line. One point, or many that are all equal, would
    /// draw nothing as a line and is drawn as a dot.
    fn is_line(&self) -> bool {
        self.raw.iter().any(|&point| point != self.raw[0])
    }

    /// The raw curve's colour: the series colour mixed with white, not see-through, so a noisy
    /// curve crossing itself many times in a pixel column stays as faint as a quiet one.
    fn faint_colour(&self) -> RGBColor {
        let RGBColor(red, green, blue) = self.colour;
        let tint = |channel: u8| (255.0 - RAW_TINT * (255.0 - f64::from(channel))).round() as u8;
        RGBColor(tint(red), tint(green), tint(blue))
    }
}

/// Draws the whole chart on `root`.
fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    layout: &Layout,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let mut rest = root.clone();
    let last = layout.panels.len() - 1;
    for (index, panel) in layout.panels.iter().enumerate() {
        let height = if index == 0 {
            FIRST_PANEL_HEIGHT
        } else {
            OTHER_PANEL_HEIGHT
        };
        let (area, below) = rest.split_vertically(height);
        rest = below;
        let y_label = chart.panels.get(index).map_or("", |p| p.y_label);
        let title = if index == 0 { chart.title } else { "" };
        let x_label = (index == last).then_some(chart.x_label);
        render_panel(&area, panel, layout, title, x_label, y_label, index == 0)?;
    }
    Ok(())
}

/// Draws one panel on `area`: with a title when `title` is not empty, with x tick labels and
/// `x_label` when it is the bottom panel (`x_label` given), with epoch numbers when `first`.
fn render_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &PanelLayout,
    layout: &Layout,
    title: &str,
    x_label: Option<&str>,
    y_label: &str,
    first: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x, y) = (&layout.x, &panel.y);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_left(12)
        .margin_right(24)
        .margin_top(if title.is_empty() { 12 } else { 8 })
        .margin_bottom(if x_label.is_some() { 8 } else { 4 })
        .y_label_area_size(80)
        .x_label_area_size(if x_label.is_some() { 48 } else { 6 });
    if !title.is_empty() {
        builder.caption(title, (FONT, 20));
    }
    let mut plot = builder.build_cartesian_2d(x.range(), y.range())?;

    let (x_labels, y_labels) = (10, 6);
    let format_x = |value: &f64| match x_label {
        Some(_) => tick_label(*value, x.high - x.low, x_labels),
        None => String::new(),
    };
    let format_y = |value: &f64| tick_label(*value, y.high - y.low, y_labels);
    let mut mesh = plot.configure_mesh();
    mesh.disable_x_mesh()
        .bold_line_style(GRID_COLOUR)
        .light_line_style(TRANSPARENT)
        .x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&format_x)
        .y_label_formatter(&format_y)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .y_desc(y_label);
    if let Some(x_label) = x_label {
        mesh.x_desc(x_label);
    }
    mesh.draw()?;

    if !layout.epoch_marks.is_empty() {
        let epoch_colour = RGBColor(EPOCH_COLOUR[0], EPOCH_COLOUR[1], EPOCH_COLOUR[2]);
        let lines = layout
            .epoch_marks
            .iter()
            .map(|&(at, _)| PathElement::new(vec![(at, y.low), (at, y.high)], epoch_colour));
        let lines = plot.draw_series(lines)?;
        if first {
            lines.label("epoch").legend(move |(left, middle)| {
                PathElement::new(
                    vec![(left + 10, middle - 7), (left + 10, middle + 7)],
                    epoch_colour.stroke_width(2),
                )
            });
            let style = TextStyle::from((FONT, 11)).color(&RGBColor(140, 140, 140));
            plot.draw_series(layout.epoch_marks.iter().map(|&(at, epoch)| {
                // Right of its line, or left of it at the right edge, where it would be cut.
                let (side, offset) = match x.fraction(at) > 0.97 {
                    true => (HPos::Right, -3),
                    false => (HPos::Left, 3),
                };
                let style = style.pos(Pos::new(side, VPos::Top));
                EmptyElement::at((at, y.high)) + Text::new(epoch.to_string(), (offset, 3), style)
            }))?;
        }
    }

    // Every raw curve before any smoothed one, so none hides another series' smoothed curve.
    for curve in panel.curves.iter().filter(|c| c.is_line()) {
        plot.draw_series([PathElement::new(curve.raw.clone(), curve.faint_colour())])?;
    }
    for curve in &panel.curves {
        let colour = curve.colour;
        let drawn = if curve.is_line() {
            let line = PathElement::new(curve.smoothed.clone(), colour.stroke_width(2));
            plot.draw_series([line])?
        } else if let Some(&point) = curve.raw.first() {
            plot.draw_series([Circle::new(point, 4, colour.filled())])?
        } else {
            // Nothing to draw but its legend entry.
            plot.draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
        };
        drawn.label(&curve.name).legend(move |(left, middle)| {
            PathElement::new(
                vec![(left, middle), (left + 20, middle)],
                colour.stroke_width(2),
            )
        });
    }

    if panel.curves.iter().all(|c| c.raw.is_empty()) {
        let style = TextStyle::from((FONT, 18)).pos(Pos::new(HPos::Center, VPos::Center));
        plot.draw_series([Text::new(
            "no data",
            ((x.low + x.high) / 2.0, (y.low + y.high) / 2.0),
            style,
        )])?;
    }
    if !panel.curves.is_empty() || (first && !layout.epoch_marks.is_empty()) {
        plot.configure_series_labels()
            .position(legend_corner(panel, x))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(170, 170, 170))
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

/// The corner of the panel where the fewest points lie, for the legend.
fn legend_corner(panel: &PanelLayout, x: &Span) -> SeriesLabelPosition {
    let y = &panel.y;
    let corners = [
        (SeriesLabelPosition::UpperRight, 0.6..1.0, 0.65..1.0),
        (SeriesLabelPosition::UpperLeft, 0.0..0.4, 0.65..1.0),
        (SeriesLabelPosition::LowerRight, 0.6..1.0, 0.0..0.35),
        (SeriesLabelPosition::LowerLeft, 0.0..0.4, 0.0..0.35),
    ];
    let points = || panel.curves.iter().flat_map(|c| &c.raw);
    corners
        .into_iter()
        .min_by_key(|(_, across, up)| {
            points()
                .filter(|&&(px, py)| {
                    across.contains(&x.fraction(px)) && up.contains(&y.fraction(py))
                })
                .count()
        })
        .map_or(SeriesLabelPosition::UpperRight, |(corner, _, _)| corner)
}

/// The points that can be drawn: finite and within ±[`MAX_MAGNITUDE`].
fn plottable(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let fits = |v: f64| v.is_finite() && v.abs() <= MAX_MAGNITUDE;
    points
        .iter()
        .copied()
        .filter(|&(x, y)| fits(x) && fits(y))
        .collect()
}

/// TensorBoard's smoothing: an exponential moving average with `weight` on the past, divided
/// by the weight its terms sum to (1 - weight^n after n points) so the curve starts at the
/// first value rather than climbing from zero.
fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut average = 0.0;
    let mut total_weight = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            average = average * weight + (1.0 - weight) * y;
            total_weight = total_weight * weight + (1.0 - weight);
            (x, average / total_weight)
        })
        .collect()
}

/// Keeps, of each run of consecutive points, the lowest and the highest (in their order), so a
/// long series draws in bounded time and still shows every spike.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_DRAWN_POINTS {
        return points;
    }
    let run = points.len().div_ceil(MAX_DRAWN_POINTS / 2);
    let mut kept = Vec::with_capacity(MAX_DRAWN_POINTS);
    for chunk in points.chunks(run) {
        let by_y = |a: &(usize, &(f64, f64)), b: &(usize, &(f64, f64))| a.1 .1.total_cmp(&b.1 .1);
        let low = chunk.iter().enumerate().min_by(by_y);
        let high = chunk.iter().enumerate().max_by(by_y);
        if let (Some((low_at, &low)), Some((high_at, &high))) = (low, high) {
            match low_at.cmp(&high_at) {
                std::cmp::Ordering::Less => kept.extend([low, high]),
                std::cmp::Ordering::Greater => kept.extend([high, low]),
                std::cmp::Ordering::Equal => kept.push(low),
            }
        }
    }
    kept
}

/// Where epoch lines go, with the epoch each ends: at multiples of `steps_per_epoch` inside
/// `x`, every epoch or, past [`MAX_EPOCH_MARKS`] of them, every 2nd, 5th, 10th, 20th...
fn epoch_marks(steps_per_epoch: Option<u64>, x: &Span) -> Vec<(f64, u64)> {
    let Some(steps) = steps_per_epoch.filter(|&steps| steps > 0) else {
        return Vec::new();
    };
    let steps = steps as f64;
    let (first, last) = ((x.low / steps).ceil().max(1.0), (x.high / steps).floor());
    if last < first {
        return Vec::new();
    }
    let marks = |stride: f64| (last / stride).floor() - (first / stride).ceil() + 1.0;
    let mut stride = 1.0;
    for next in [2.0, 2.5, 2.0].into_iter().cycle() {
        if marks(stride) <= MAX_EPOCH_MARKS as f64 {
            break;
        }
        stride *= next;
    }
    let first = (first / stride).ceil() * stride;
    (0..MAX_EPOCH_MARKS)
        .map(|index| first + index as f64 * stride)
        .take_while(|&epoch| epoch <= last)
        .map(|epoch| (epoch * steps, epoch as u64))
        .collect()
}

/// One axis' range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    low: f64,
    high: f64,
}

impl Span {
    /// A range covering `values` (all finite) with `margin` (a fraction of their spread) on
    /// both sides, so a line along an edge is not hidden by the frame. All-equal (or nearly)
    /// values get room around them; no values at all get [0, 1].
    fn covering(values: impl Iterator<Item = f64>, margin: f64) -> Span {
        let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
            (low.min(v), high.max(v))
        });
        if low > high {
            return Span {
                low: 0.0,
                high: 1.0,
            };
        }
        let magnitude = low.abs().max(high.abs());
        let (low, high) = if high - low > 1e-9 * magnitude && high - low > 1e-100 {
            (low, high)
        } else {
            let centre = low / 2.0 + high / 2.0;
            let pad = if centre.abs() > 1e-100 {
                centre.abs() / 10.0
            } else {
                1.0
            };
            (centre - pad, centre + pad)
        };
        let pad = (high - low) * margin;
        Span {
            low: low - pad,
            high: high + pad,
        }
    }

    fn range(&self) -> Range<f64> {
        self.low..self.high
    }

    /// Where `value` lies along the axis: 0 at its low end, 1 at its high end.
    fn fraction(&self, value: f64) -> f64 {
        (value - self.low) / (self.high - self.low)
    }
}

/// The label of the tick at `value` on an axis spanning `span` with at most `count` ticks: as
/// many decimals as their spacing needs ("0.25", "1500"), in scientific notation ("2.5e6",
/// "1e-5") beyond a million or for spacings below 1e-4.
fn tick_label(value: f64, span: f64, count: usize) -> String {
    if value.abs() < span * 1e-9 {
        return "0".to_string(); // not 1e-17 from adding up the spacing
    }
    let spacing_exponent = (span / count as f64).log10().floor() as i32;
    if value.abs().max(span) >= 1e6 || spacing_exponent < -4 {
        let digits = (value.abs().log10().floor() as i32 - spacing_exponent).clamp(0, 6);
        let text = format!("{value:.*e}", digits as usize);
        // "1e6" beside "2e5", not "1.0e6".
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = match mantissa.contains('.') {
            true => mantissa.trim_end_matches('0').trim_end_matches('.'),
            false => mantissa,
        };
        return format!("{mantissa}e{exponent}");
    }
    format!("{value:.*}", (-spacing_exponent).max(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_the_decimals_their_spacing_needs() {
        assert_eq!(tick_label(0.25, 1.0, 10), "0.2"); // spacing 0.1
        assert_eq!(tick_label(0.25, 0.1, 5), "0.25");
        assert_eq!(tick_label(1500.0, 2000.0, 10), "1500");
        assert_eq!(tick_label(2.5e6, 1e6, 5), "2.5e6");
        assert_eq!(tick_label(1e-5, 1e-4, 5), "1e-5");
        assert_eq!(tick_label(1e-17, 1.0, 5), "0");
        assert_eq!(tick_label(-1e150, 2e150, 6), "-1e150");
        assert_eq!(tick_label(1e6, 1e6, 10), "1e6");
        assert_eq!(tick_label(1.5e6, 1e6, 10), "1.5e6");
    }

    #[test]
    fn equal_values_get_room() {
        let span = Span::covering([2.0, 2.0].into_iter(), 0.05);
        assert!(span.low < 2.0 && span.high > 2.0, "{span:?}");
        let span = Span::covering([0.0].into_iter(), 0.05);
        assert!(span.low < 0.0 && span.high > 0.0, "{span:?}");
        let span = Span::covering(std::iter::empty(), 0.05);
        assert_eq!(span.range(), 0.0..1.0);
    }

    /// The smoothed curve against a closed form: for a step from 0 to 1 after n points, the
    /// debiased average k points later is (1 - w^k) / (1 - w^(n+k)).
    #[test]
    fn smoothing_is_a_debiased_moving_average() {
        let weight = 0.9;
        let points: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64, if i < 10 { 0.0 } else { 1.0 }))
            .collect();
        let smoothed = smooth(&points, weight);
        assert_eq!(smoothed[0], (0.0, 0.0));
        for k in 1..=10 {
            let expected = (1.0 - weight.powi(k)) / (1.0 - weight.powi(10 + k));
            let (x, y) = smoothed[9 + k as usize];
            assert_eq!(x, (9 + k) as f64);
            assert!((y - expected).abs() < 1e-12, "{k}: {y} vs {expected}");
        }
        // A constant is its own average from the first point: that is the debiasing.
        let flat = smooth(&[(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)], weight);
        assert!(
            flat.iter().all(|&(_, y)| (y - 3.0).abs() < 1e-12),
            "{flat:?}"
        );
    }

    #[test]
    fn smoothing_spans_a_hundredth_of_long_series() {
        assert_eq!(smoothing_weight(1), 0.9);
        assert_eq!(smoothing_weight(1000), 0.9);
        assert!((smoothing_weight(100_000) - 0.999).abs() < 1e-12);
    }

    #[test]
    fn thinning_keeps_extremes_and_bounds_the_count() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 0.0)).collect();
        points[51_234].1 = 9.0;
        points[77_777].1 = -4.0;
        let kept = thin(points);
        assert!(kept.len() <= MAX_DRAWN_POINTS, "{}", kept.len());
        assert!(kept.contains(&(51_234.0, 9.0)) && kept.contains(&(77_777.0, -4.0)));
        assert!(kept.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn epoch_marks_are_thinned_to_round_strides() {
        let span = |low, high| Span { low, high };
        let epochs = |marks: Vec<(f64, u64)>| marks.iter().map(|m| m.1).collect::<Vec<_>>();
        // 5 epochs of 100 steps: each marked, at its last step.
        let marks = epoch_marks(Some(100), &span(-5.0, 505.0));
        assert_eq!(marks.first(), Some(&(100.0, 1)));
        assert_eq!(epochs(marks), [1, 2, 3, 4, 5]);
        // 100 epochs: every 5th (20 marks).
        let marks = epochs(epoch_marks(Some(10), &span(0.0, 1000.0)));
        assert_eq!(marks, (1..=20).map(|k| 5 * k).collect::<Vec<_>>());
        // 1000 epochs: every 50th.
        assert_eq!(
            epochs(epoch_marks(Some(1), &span(0.0, 1000.0)))[..2],
            [50, 100]
        );
        // A resumed run's plot starting at step 4000.
        assert_eq!(
            epochs(epoch_marks(Some(1000), &span(4000.0, 6500.0))),
            [4, 5, 6]
        );
        assert!(epoch_marks(None, &span(0.0, 1000.0)).is_empty());
        assert!(epoch_marks(Some(0), &span(0.0, 1000.0)).is_empty());
        assert!(epoch_marks(Some(5000), &span(0.0, 1000.0)).is_empty());
        assert!(epoch_marks(Some(1), &span(-1e150, 1e150)).len() <= MAX_EPOCH_MARKS);
    }
}
