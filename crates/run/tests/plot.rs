//! The loss plot: a PNG of the stated size with each series in its colour and text drawn, and
//! no panic on degenerate data.

use std::path::Path;

use kiln_run::plot::{line_plot, HEIGHT, PALETTE, TEXT_COLOUR, WIDTH};
use kiln_run::{RunError, Series};

/// An RGB image read back from a PNG.
struct Image {
    width: usize,
    pixels: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut bytes = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut bytes).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (WIDTH, HEIGHT));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        Image {
            width: info.width as usize,
            pixels: bytes[..info.buffer_size()]
                .chunks_exact(3)
                .map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    }

    /// Pixels of `colour` in rows `rows`.
    fn count_in_rows(&self, colour: [u8; 3], rows: std::ops::Range<usize>) -> usize {
        self.pixels[rows.start * self.width..rows.end * self.width]
            .iter()
            .filter(|&&p| p == colour)
            .count()
    }

    fn count(&self, colour: [u8; 3]) -> usize {
        self.count_in_rows(colour, 0..self.pixels.len() / self.width)
    }
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    (name.to_string(), points)
}

/// Three noisy loss curves over 2000 steps.
fn losses() -> Vec<Series> {
    let curve = |offset: f64, wiggle: f64| {
        (0..2000)
            .map(|step| {
                let x = step as f64;
                (
                    x,
                    offset + 0.3 * (-x / 400.0).exp() + wiggle * (x / 50.0).sin(),
                )
            })
            .collect()
    };
    vec![
        series("loss_d", curve(0.6, 0.05)),
        series("loss_g", curve(1.9, 0.2)),
        series("d_real", curve(1.2, 0.02)),
    ]
}

#[test]
fn the_plot_has_the_stated_size_each_series_colour_and_text() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("loss.png");
    line_plot(&path, "GAN losses", &losses(), "step", "loss").unwrap();
    let image = Image::read(&path);

    for (index, colour) in PALETTE.iter().take(3).enumerate() {
        // A curve across the plot is hundreds of pixels; a legend swatch alone is ~40.
        let pixels = image.count(*colour);
        assert!(
            pixels > 500,
            "series {index}: {pixels} pixels of {colour:?}"
        );
    }
    assert_eq!(
        image.count(PALETTE[3]),
        0,
        "a fourth colour with three series"
    );
    let background = image.count([255, 255, 255]);
    assert!(background > WIDTH * HEIGHT / 2, "{background} white pixels");

    // The title is the only thing drawn in the top band: its ink is there with a title and
    // absent without one.
    let band = 0..40;
    assert!(image.count_in_rows(TEXT_COLOUR, band.clone()) > 100);
    let untitled = temporary.path().join("untitled.png");
    line_plot(&untitled, "", &losses(), "step", "loss").unwrap();
    assert_eq!(Image::read(&untitled).count_in_rows(TEXT_COLOUR, band), 0);

    // Tick labels and the x label are drawn below the plot area.
    let bottom = HEIGHT - 40..HEIGHT;
    assert!(image.count_in_rows(TEXT_COLOUR, bottom) > 50);

    // Nothing but the PNG is left in the folder (it was written under a temporary name).
    assert_eq!(std::fs::read_dir(temporary.path()).unwrap().count(), 2);
}

#[test]
fn a_single_point_is_drawn_as_a_dot() {
    let temporary = tempfile::tempdir().unwrap();
    let with_point = temporary.path().join("point.png");
    let without = temporary.path().join("empty.png");
    line_plot(
        &with_point,
        "one",
        &[series("loss", vec![(1.0, 0.5)])],
        "step",
        "loss",
    )
    .unwrap();
    line_plot(&without, "one", &[series("loss", vec![])], "step", "loss").unwrap();
    let dot = Image::read(&with_point).count(PALETTE[0]);
    let legend_only = Image::read(&without).count(PALETTE[0]);
    assert!(legend_only > 0, "the legend swatch");
    assert!(
        dot >= legend_only + 9,
        "dot {dot}, legend alone {legend_only}"
    );
}

#[test]
fn degenerate_data_draws_without_panicking() {
    let temporary = tempfile::tempdir().unwrap();
    let many: Vec<Series> = (0..20)
        .map(|i| {
            series(
                &format!("series {i}"),
                vec![(0.0, i as f64), (1.0, -(i as f64))],
            )
        })
        .collect();
    let cases: Vec<(&str, Vec<Series>)> = vec![
        ("no series", vec![]),
        (
            "empty series",
            vec![series("a", vec![]), series("b", vec![])],
        ),
        ("all equal", vec![series("flat", vec![(0.0, 0.7); 50])]),
        (
            "all zero",
            vec![series("zero", (0..10).map(|i| (i as f64, 0.0)).collect())],
        ),
        (
            "same x",
            vec![series("vertical", vec![(3.0, 1.0), (3.0, 2.0)])],
        ),
        (
            "not finite",
            vec![series(
                "nan",
                vec![
                    (f64::NAN, 1.0),
                    (1.0, f64::INFINITY),
                    (2.0, f64::NEG_INFINITY),
                ],
            )],
        ),
        (
            "mixed",
            vec![series(
                "gaps",
                vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 1e300)],
            )],
        ),
        (
            "extremes",
            vec![series(
                "wide",
                vec![(-1e150, -1e150), (1e150, 1e150), (0.0, 1e-300)],
            )],
        ),
        (
            "tiny",
            vec![series("tiny", vec![(0.0, 1e-12), (1.0, 3e-12)])],
        ),
        (
            "big offset",
            vec![series("offset", vec![(0.0, 1e9), (1.0, 1e9 + 1e-3)])],
        ),
        (
            "long",
            vec![series(
                "long",
                (0..200_000)
                    .map(|i| (i as f64, ((i * 7919) % 1000) as f64))
                    .collect(),
            )],
        ),
        (
            "unsorted",
            vec![series(
                "back and forth",
                vec![(5.0, 1.0), (1.0, 2.0), (3.0, 0.5)],
            )],
        ),
        ("many series", many),
        (
            "odd names",
            vec![
                series("λ loss — ünïcode", vec![(0.0, 1.0), (1.0, 2.0)]),
                series(&"very long name ".repeat(20), vec![(0.0, 2.0), (1.0, 1.0)]),
            ],
        ),
    ];
    for (index, (case, data)) in cases.iter().enumerate() {
        let path = temporary.path().join(format!("{index}.png"));
        let title = format!("{case}: {}", "long title ".repeat(index));
        line_plot(&path, &title, data, "step ±", "").unwrap_or_else(|err| panic!("{case}: {err}"));
        let image = Image::read(&path);
        assert!(image.count(TEXT_COLOUR) > 0, "{case}: no frame or text");
    }
}

#[test]
fn a_plot_the_os_cannot_write_is_an_error_naming_the_path() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("missing-folder/loss.png");
    let err = line_plot(&path, "t", &losses(), "x", "y").unwrap_err();
    assert!(matches!(err, RunError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot write: ", path.display())),
        "{err}"
    );
}
