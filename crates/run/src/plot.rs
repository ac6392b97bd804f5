//! Line charts as PNG files, drawn pixel by pixel with the built-in bitmap font: the loss plot a
//! run redraws as it trains. Not a plotting library: one chart type at one size, linear axes,
//! no anti-aliasing.
//!
//! Points that are NaN, infinite or beyond ±1e150 are skipped (the line joins their
//! neighbours); a single point is drawn as a dot; all-equal values get an axis around them; a
//! plot with no points at all shows its axes and "no data". Long series are thinned to the
//! highest and lowest point of each short run before drawing, which keeps every spike.

use std::path::Path;

use crate::error::{Result, RunError};
use crate::font::{self, ADVANCE, GLYPH_HEIGHT};
use crate::metrics::Series;

/// Plot width in pixels.
pub const WIDTH: usize = 800;
/// Plot height in pixels.
pub const HEIGHT: usize = 500;

/// The series colours, in order (matplotlib's "tab10", less its gray and olive); the ninth
/// series takes the first colour again.
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

/// The colour of text, the frame and the tick marks.
pub const TEXT_COLOUR: [u8; 3] = [0, 0, 0];
const BACKGROUND: [u8; 3] = [255, 255, 255];
const GRID_COLOUR: [u8; 3] = [228, 228, 228];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];

const TITLE_SCALE: usize = 2;
const TEXT_SCALE: usize = 1;
const TICK_LENGTH: i64 = 5;
/// Values beyond this are skipped: it keeps every span and tick computation finite.
const MAX_MAGNITUDE: f64 = 1e150;
/// Room beside the data, as a fraction of its spread, so a line along an edge is not hidden by
/// the frame: a little left and right (a run's steps start and end there), more above and below.
const X_MARGIN: f64 = 0.01;
const Y_MARGIN: f64 = 0.04;
/// Series names longer than this are cut, so the legend cannot cover the plot.
const MAX_NAME_CHARS: usize = 40;

/// Draws `series` — (name, [(x, y)]) each — as a line chart with `title` and axis labels and
/// writes it to `path` as an 800x500 RGB PNG. The file appears whole or not at all (written
/// under a temporary name, then renamed). Characters outside printable ASCII are drawn as '?'.
pub fn line_plot(
    path: impl AsRef<Path>,
    title: &str,
    series: &[Series],
    x_label: &str,
    y_label: &str,
) -> Result<()> {
    let path = path.as_ref();
    let canvas = render(title, series, x_label, y_label);
    kiln_fs::write_file_atomically(path, |out| {
        let mut encoder = png::Encoder::new(out, WIDTH as u32, HEIGHT as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&canvas.pixels)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
    .map_err(|err| RunError::io(path, "write", err))
}

/// Draws the whole chart.
fn render(title: &str, series: &[Series], x_label: &str, y_label: &str) -> Canvas {
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, points)| thin(plottable(points)))
        .collect();
    let all = || lines.iter().flatten();
    let x_axis = Axis::new(all().map(|&(x, _)| x), X_MARGIN);
    let y_axis = Axis::new(all().map(|&(_, y)| y), Y_MARGIN);

    // Margins: the y label (turned on its side) and the widest y tick label on the left, the x
    // tick labels and the x label below, the title above.
    let text_height = (GLYPH_HEIGHT * TEXT_SCALE) as i64;
    let widest_y_tick = y_axis
        .labels
        .iter()
        .map(|label| font::text_width(label, TEXT_SCALE))
        .max()
        .unwrap_or(0) as i64;
    let left = 12 + text_height + 10 + widest_y_tick + TICK_LENGTH + 4;
    let top = 16 + (GLYPH_HEIGHT * TITLE_SCALE) as i64 + 12;
    let right = WIDTH as i64 - 24;
    let bottom = HEIGHT as i64 - (12 + text_height + 10 + text_height + TICK_LENGTH + 4);
    let frame = Rect {
        left,
        top,
        right,
        bottom,
    };

    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    let to_x = |x: f64| {
        frame.left + (x_axis.fraction(x) * (frame.right - frame.left) as f64).round() as i64
    };
    let to_y = |y: f64| {
        frame.bottom - (y_axis.fraction(y) * (frame.bottom - frame.top) as f64).round() as i64
    };

    // Grid lines and ticks.
    for (&value, label) in x_axis.ticks.iter().zip(&x_axis.labels) {
        let x = to_x(value);
        canvas.line(x, frame.top, x, frame.bottom, 1, GRID_COLOUR, &frame);
        canvas.line(
            x,
            frame.bottom,
            x,
            frame.bottom + TICK_LENGTH,
            1,
            TEXT_COLOUR,
            &canvas.bounds(),
        );
        let width = font::text_width(label, TEXT_SCALE) as i64;
        canvas.text(
            x - width / 2,
            frame.bottom + TICK_LENGTH + 4,
            label,
            TEXT_SCALE,
            TEXT_COLOUR,
        );
    }
    for (&value, label) in y_axis.ticks.iter().zip(&y_axis.labels) {
        let y = to_y(value);
        canvas.line(frame.left, y, frame.right, y, 1, GRID_COLOUR, &frame);
        canvas.line(
            frame.left - TICK_LENGTH,
            y,
            frame.left,
            y,
            1,
            TEXT_COLOUR,
            &canvas.bounds(),
        );
        let width = font::text_width(label, TEXT_SCALE) as i64;
        let cap_middle = (7 * TEXT_SCALE / 2) as i64;
        canvas.text(
            frame.left - TICK_LENGTH - 4 - width,
            y - cap_middle,
            label,
            TEXT_SCALE,
            TEXT_COLOUR,
        );
    }

    // The series, each in its colour.
    let inside = Rect {
        left: frame.left + 1,
        top: frame.top + 1,
        right: frame.right - 1,
        bottom: frame.bottom - 1,
    };
    for (index, points) in lines.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let pixels: Vec<(i64, i64)> = points.iter().map(|&(x, y)| (to_x(x), to_y(y))).collect();
        // A single point, or points that all land on one pixel, would draw too small to see.
        if let Some(&(x, y)) = pixels
            .first()
            .filter(|&&first| pixels.iter().all(|&p| p == first))
        {
            canvas.fill(
                &Rect {
                    left: x - 2,
                    top: y - 2,
                    right: x + 2,
                    bottom: y + 2,
                }
                .clip(&inside),
                colour,
            );
        }
        for pair in pixels.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            canvas.line(x0, y0, x1, y1, 2, colour, &inside);
        }
    }
    if lines.iter().all(Vec::is_empty) {
        let message = "no data";
        let width = font::text_width(message, TITLE_SCALE) as i64;
        canvas.text(
            (frame.left + frame.right - width) / 2,
            (frame.top + frame.bottom) / 2 - 8,
            message,
            TITLE_SCALE,
            TEXT_COLOUR,
        );
    }
    canvas.frame(&frame, TEXT_COLOUR);

    if !series.is_empty() {
        draw_legend(&mut canvas, series, &inside);
    }

    // Title, centred above the plot; axis labels centred on their axes.
    let width = font::text_width(title, TITLE_SCALE) as i64;
    canvas.text(
        (WIDTH as i64 - width).max(0) / 2,
        16,
        title,
        TITLE_SCALE,
        TEXT_COLOUR,
    );
    let width = font::text_width(x_label, TEXT_SCALE) as i64;
    canvas.text(
        (frame.left + frame.right - width) / 2,
        HEIGHT as i64 - 12 - text_height,
        x_label,
        TEXT_SCALE,
        TEXT_COLOUR,
    );
    let width = font::text_width(y_label, TEXT_SCALE) as i64;
    canvas.text_up(
        12,
        (frame.top + frame.bottom + width) / 2,
        y_label,
        TEXT_SCALE,
        TEXT_COLOUR,
    );
    canvas
}

/// Draws the legend in the corner of `inside` where it covers the fewest series pixels.
fn draw_legend(canvas: &mut Canvas, series: &[Series], inside: &Rect) {
    let names: Vec<String> = series
        .iter()
        .map(|(name, _)| match name.char_indices().nth(MAX_NAME_CHARS) {
            Some((cut, _)) => format!("{}..", &name[..cut]),
            None => name.clone(),
        })
        .collect();
    let swatch = 20;
    let padding = 8;
    let row_height = (GLYPH_HEIGHT * TEXT_SCALE + 5) as i64;
    let widest = names
        .iter()
        .map(|name| font::text_width(name, TEXT_SCALE))
        .max()
        .unwrap_or(0) as i64;
    let width = padding + swatch + 6 + widest + padding;
    let height = padding + row_height * names.len() as i64 - 5 + padding;
    let inset = 8;
    let corners = [
        (inside.right - inset - width, inside.top + inset),
        (inside.left + inset, inside.top + inset),
        (inside.right - inset - width, inside.bottom - inset - height),
        (inside.left + inset, inside.bottom - inset - height),
    ];
    let boxes = corners.map(|(left, top)| Rect {
        left,
        top,
        right: left + width,
        bottom: top + height,
    });
    let Some(place) = boxes
        .iter()
        .min_by_key(|rect| canvas.count(rect, |pixel| PALETTE.contains(&pixel)))
    else {
        return;
    };
    canvas.fill(&place.clip(&canvas.bounds()), BACKGROUND);
    canvas.frame(place, LEGEND_BORDER);
    for (index, name) in names.iter().enumerate() {
        let top = place.top + padding + row_height * index as i64;
        let middle = top + (7 * TEXT_SCALE / 2) as i64;
        let colour = PALETTE[index % PALETTE.len()];
        let left = place.left + padding;
        canvas.line(
            left,
            middle,
            left + swatch,
            middle,
            2,
            colour,
            &canvas.bounds(),
        );
        canvas.text(left + swatch + 6, top, name, TEXT_SCALE, TEXT_COLOUR);
    }
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

/// More points than this are thinned before drawing (a few per pixel column).
const MAX_DRAWN_POINTS: usize = 4 * WIDTH;

/// Keeps, of each run of consecutive points, the lowest and the highest (in their order), so a
/// long series draws in bounded time and still shows every spike.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_DRAWN_POINTS {
        return points;
    }
    let run = points.len().div_ceil(MAX_DRAWN_POINTS / 2);
    let mut kept = Vec::with_capacity(MAX_DRAWN_POINTS);
    for chunk in points.chunks(run) {
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let low = chunk.iter().enumerate().min_by(|a, b| by_y(&a.1, &b.1));
        let high = chunk.iter().enumerate().max_by(|a, b| by_y(&a.1, &b.1));
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

/// One axis: its range and its tick values with their labels.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    low: f64,
    high: f64,
    ticks: Vec<f64>,
    labels: Vec<String>,
}

impl Axis {
    /// An axis covering `values` (all finite) with `margin` (a fraction of their spread) on
    /// both sides, and 4 to 6 ticks at multiples of a 1-2-5 step.
    fn new(values: impl Iterator<Item = f64>, margin: f64) -> Axis {
        let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
            (low.min(v), high.max(v))
        });
        let (low, high) = if low <= high {
            widen(low, high)
        } else {
            (0.0, 1.0)
        };
        let pad = (high - low) * margin;
        let ticks = choose_ticks(low - pad, high + pad);
        let step = ticks.step.value();
        let scientific = ticks.step.exponent < -4
            || [ticks.first, ticks.last]
                .iter()
                .any(|&k| (k as f64 * step).abs() >= 1e6);
        Axis {
            low: (low - pad).min(ticks.first as f64 * step),
            high: (high + pad).max(ticks.last as f64 * step),
            ticks: (ticks.first..=ticks.last)
                .map(|k| k as f64 * step)
                .collect(),
            labels: (ticks.first..=ticks.last)
                .map(|k| format_tick(k * ticks.step.mantissa, ticks.step.exponent, scientific))
                .collect(),
        }
    }

    /// Where `value` lies along the axis: 0 at its low end, 1 at its high end.
    fn fraction(&self, value: f64) -> f64 {
        (value - self.low) / (self.high - self.low)
    }
}

/// A range of data an axis can show: all-equal (or nearly) values get room around them.
fn widen(low: f64, high: f64) -> (f64, f64) {
    let magnitude = low.abs().max(high.abs());
    if high - low > 1e-9 * magnitude && high - low > 1e-100 {
        return (low, high);
    }
    let centre = low / 2.0 + high / 2.0;
    let pad = if centre.abs() > 1e-100 {
        centre.abs() / 10.0
    } else {
        1.0
    };
    (centre - pad, centre + pad)
}

/// A tick step `mantissa` x 10^`exponent`, with `mantissa` 1, 2 or 5.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    mantissa: i64,
    exponent: i32,
}

impl Step {
    fn value(self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exponent)
    }
}

/// Ticks at `first * step ..= last * step`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    step: Step,
    first: i64,
    last: i64,
}

/// The ticks for [low, high]: 4 to 6 of them (or, failing that, the count nearest 5) at
/// multiples of a 1-2-5 step, widening the range as little as possible. Each end either keeps
/// its ticks inside the range or extends it to the next multiple: no single choice gives 4 to
/// 6 ticks for every range ([0, 12.5] needs its top end extended to 15 with a step of 5).
fn choose_ticks(low: f64, high: f64) -> Ticks {
    let exponent = ((high - low) / 5.0).log10().floor() as i32;
    let candidates = (exponent - 1..=exponent + 1).flat_map(|exponent| {
        [1, 2, 5].into_iter().flat_map(move |mantissa| {
            let step = Step { mantissa, exponent };
            // The slack keeps 0.3 / 0.1 = 2.9999999999999996 from missing the tick at 0.3.
            let (low, high) = (low / step.value(), high / step.value());
            let firsts = [(low - 1e-9).ceil(), (low + 1e-9).floor()];
            let lasts = [(high + 1e-9).floor(), (high - 1e-9).ceil()];
            firsts.into_iter().flat_map(move |first| {
                lasts.map(|last| Ticks {
                    step,
                    first: first as i64,
                    last: last as i64,
                })
            })
        })
    });
    let cost = |ticks: &Ticks| {
        let count = ticks.last - ticks.first + 1;
        let step = ticks.step.value();
        let span = (high.max(ticks.last as f64 * step)) - (low.min(ticks.first as f64 * step));
        ((count - 5).abs().max(1) - 1, span)
    };
    candidates
        .filter(|ticks| ticks.last > ticks.first)
        .min_by(|a, b| {
            let (miss_a, span_a) = cost(a);
            let (miss_b, span_b) = cost(b);
            miss_a.cmp(&miss_b).then(span_a.total_cmp(&span_b))
        })
        .unwrap_or(Ticks {
            step: Step {
                mantissa: 1,
                exponent: 0,
            },
            first: 0,
            last: 1,
        })
}

/// The label of the tick `digits` x 10^`exponent`, written exactly (no float noise) and with as
/// many decimals as the step has: "0.25", "1.0", "1500", or in scientific notation "2.5e6",
/// "1e-5".
fn format_tick(digits: i64, exponent: i32, scientific: bool) -> String {
    if digits == 0 && (scientific || exponent >= 0) {
        return "0".to_string();
    }
    let sign = if digits < 0 { "-" } else { "" };
    let text = digits.unsigned_abs().to_string();
    if scientific {
        let power = exponent + text.len() as i32 - 1;
        let rest = text[1..].trim_end_matches('0');
        let point = if rest.is_empty() { "" } else { "." };
        return format!("{sign}{}{point}{rest}e{power}", &text[..1]);
    }
    if exponent >= 0 {
        return format!("{sign}{text}{}", "0".repeat(exponent as usize));
    }
    let decimals = exponent.unsigned_abs() as usize;
    let padded = format!("{text:0>width$}", width = decimals + 1);
    let (whole, fraction) = padded.split_at(padded.len() - decimals);
    format!("{sign}{whole}.{fraction}")
}

/// A pixel rectangle, edges included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }

    fn clip(&self, other: &Rect) -> Rect {
        Rect {
            left: self.left.max(other.left),
            top: self.top.max(other.top),
            right: self.right.min(other.right),
            bottom: self.bottom.min(other.bottom),
        }
    }
}

/// An RGB image being drawn on; drawing outside it is ignored.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: BACKGROUND.repeat(width * height),
        }
    }

    fn bounds(&self) -> Rect {
        Rect {
            left: 0,
            top: 0,
            right: self.width as i64 - 1,
            bottom: self.height as i64 - 1,
        }
    }

    fn set(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if self.bounds().contains(x, y) {
            let at = (y as usize * self.width + x as usize) * 3;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn get(&self, x: i64, y: i64) -> Option<[u8; 3]> {
        self.bounds().contains(x, y).then(|| {
            let at = (y as usize * self.width + x as usize) * 3;
            [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
        })
    }

    fn fill(&mut self, rect: &Rect, colour: [u8; 3]) {
        for y in rect.top..=rect.bottom {
            for x in rect.left..=rect.right {
                self.set(x, y, colour);
            }
        }
    }

    /// How many pixels of `rect` satisfy `test`.
    fn count(&self, rect: &Rect, test: impl Fn([u8; 3]) -> bool) -> usize {
        (rect.top..=rect.bottom)
            .flat_map(|y| (rect.left..=rect.right).map(move |x| (x, y)))
            .filter(|&(x, y)| self.get(x, y).is_some_and(&test))
            .count()
    }

    /// A one-pixel outline of `rect`.
    fn frame(&mut self, rect: &Rect, colour: [u8; 3]) {
        let bounds = self.bounds();
        let Rect {
            left,
            top,
            right,
            bottom,
        } = *rect;
        self.line(left, top, right, top, 1, colour, &bounds);
        self.line(left, bottom, right, bottom, 1, colour, &bounds);
        self.line(left, top, left, bottom, 1, colour, &bounds);
        self.line(right, top, right, bottom, 1, colour, &bounds);
    }

    /// A Bresenham line from (x0, y0) to (x1, y1), `thickness` pixels wide (a square pen
    /// extending right and down), drawing only the pixels inside `clip`.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        x0: i64,
        y0: i64,
        x1: i64,
        y1: i64,
        thickness: i64,
        colour: [u8; 3],
        clip: &Rect,
    ) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (step_x, step_y) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut error) = (x0, y0, dx + dy);
        loop {
            for pen_y in y..y + thickness {
                for pen_x in x..x + thickness {
                    if clip.contains(pen_x, pen_y) {
                        self.set(pen_x, pen_y, colour);
                    }
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let doubled = 2 * error;
            if doubled >= dy {
                error += dy;
                x += step_x;
            }
            if doubled <= dx {
                error += dx;
                y += step_y;
            }
        }
    }

    /// `text` left to right with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: [u8; 3]) {
        self.glyphs(text, scale, colour, |along, down| (x + along, y + down));
    }

    /// `text` turned a quarter left (reading bottom to top), starting at (x, y) and with the
    /// tops of its letters towards smaller x.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: [u8; 3]) {
        self.glyphs(text, scale, colour, |along, down| (x + down, y - along));
    }

    /// Draws the ink of `text`'s glyphs; `place` maps (pixels along the text, pixels down from
    /// its top) to the canvas.
    fn glyphs(
        &mut self,
        text: &str,
        scale: usize,
        colour: [u8; 3],
        place: impl Fn(i64, i64) -> (i64, i64),
    ) {
        for (index, c) in text.chars().enumerate() {
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for column in 0..font::GLYPH_WIDTH {
                    if bits & (0b10000 >> column) == 0 {
                        continue;
                    }
                    let along = ((index * ADVANCE + column) * scale) as i64;
                    let down = (row * scale) as i64;
                    for (dx, dy) in
                        (0..scale as i64).flat_map(|a| (0..scale as i64).map(move |b| (a, b)))
                    {
                        let (px, py) = place(along + dx, down + dy);
                        self.set(px, py, colour);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tick steps picked for a spread of ranges give 4 to 6 ticks that cover the range.
    #[test]
    fn ticks_cover_the_range_in_four_to_six_steps() {
        let mut ranges = vec![
            (0.0, 1.0),
            (0.9, 2.1),
            (0.0, 10.1),
            (-3.0, 7.0),
            (0.61, 0.62),
        ];
        // A deterministic spread of magnitudes and offsets.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..2000 {
            let scale = 10f64.powf(next() * 20.0 - 10.0);
            let low = (next() - 0.5) * scale * 3.0;
            let span = next() * scale + scale * 1e-3;
            ranges.push((low, low + span));
        }
        for (low, high) in ranges {
            let axis = Axis::new([low, high].into_iter(), 0.0);
            let count = axis.ticks.len();
            assert!(
                (4..=6).contains(&count),
                "{low}..{high}: {count} ticks {:?}",
                axis.labels
            );
            assert!(
                axis.low <= low && axis.high >= high,
                "{low}..{high}: axis {:?}",
                axis
            );
        }
    }

    #[test]
    fn tick_labels_are_exact() {
        assert_eq!(format_tick(25, -2, false), "0.25");
        assert_eq!(format_tick(-3, -1, false), "-0.3");
        assert_eq!(format_tick(10, -1, false), "1.0");
        assert_eq!(format_tick(15, 2, false), "1500");
        assert_eq!(format_tick(0, 5, false), "0");
        assert_eq!(format_tick(0, -2, false), "0.00");
        assert_eq!(format_tick(25, 5, true), "2.5e6");
        assert_eq!(format_tick(1, -5, true), "1e-5");
        assert_eq!(format_tick(-120, -7, true), "-1.2e-5");
        let axis = Axis::new([0.3, 0.7].into_iter(), 0.0);
        assert_eq!(axis.labels, ["0.3", "0.4", "0.5", "0.6", "0.7"]);
    }

    #[test]
    fn equal_values_get_room() {
        let axis = Axis::new([2.0, 2.0].into_iter(), Y_MARGIN);
        assert!(axis.low < 2.0 && axis.high > 2.0, "{axis:?}");
        let axis = Axis::new([0.0].into_iter(), Y_MARGIN);
        assert!(axis.low < 0.0 && axis.high > 0.0, "{axis:?}");
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
}
