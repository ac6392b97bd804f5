//! The loss plot: a PNG of the stated width with each series in its colour, the raw curve faint
//! under the smoothed one, epoch lines, text; an SVG beside it; a taller image with a second
//! panel; and no panic on degenerate data.

use std::path::{Path, PathBuf};

use kiln_run::plot::{draw, Chart, Panel, EPOCH_COLOUR, MAX_PANELS, PALETTE, WIDTH};
use kiln_run::{RunError, Series};

/// An RGB image read back from a PNG.
struct Image {
    width: usize,
    height: usize,
    pixels: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut bytes = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut bytes).unwrap();
        assert_eq!(info.width, WIDTH);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        Image {
            width: info.width as usize,
            height: info.height as usize,
            pixels: bytes[..info.buffer_size()]
                .chunks_exact(3)
                .map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    }

    /// (column, row) of every pixel that passes `test`.
    fn find(&self, test: impl Fn([u8; 3]) -> bool) -> Vec<(usize, usize)> {
        (0..self.pixels.len())
            .filter(|&at| test(self.pixels[at]))
            .map(|at| (at % self.width, at / self.width))
            .collect()
    }

    fn count(&self, colour: [u8; 3]) -> usize {
        self.find(|pixel| pixel == colour).len()
    }

    /// How many columns hold at least `at_least` pixels of `colour`.
    fn columns_with(&self, colour: [u8; 3], at_least: usize) -> usize {
        let mut per_column = vec![0; self.width];
        for (column, _) in self.find(|pixel| pixel == colour) {
            per_column[column] += 1;
        }
        per_column.iter().filter(|&&n| n >= at_least).count()
    }
}

/// Text and axes: black, and the darkest parts of anti-aliased glyphs.
fn ink(pixel: [u8; 3]) -> bool {
    pixel.iter().all(|&channel| channel < 90)
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    (name.to_string(), points)
}

/// Noisy curves over steps 1..=2000: `offset` + a decay + a wiggle of size `noise`.
fn curve(offset: f64, noise: f64) -> Vec<(f64, f64)> {
    (1..=2000)
        .map(|step| {
            let x = step as f64;
            let wiggle = ((step * 7919) % 101) as f64 / 100.0 - 0.5;
            (x, offset + 0.3 * (-x / 400.0).exp() + noise * wiggle)
        })
        .collect()
}

fn losses() -> Vec<Series> {
    vec![
        series("loss_d", curve(0.6, 0.1)),
        series("loss_g", curve(1.9, 0.4)),
        series("d_real", curve(1.2, 0.05)),
    ]
}

fn one_panel<'a>(title: &'a str, panels: &'a [Panel<'a>]) -> Chart<'a> {
    Chart {
        title,
        x_label: "step",
        panels,
        steps_per_epoch: None,
    }
}

/// Draws `chart` under `folder` as `name`.png and returns the PNG's path.
fn draw_in(folder: &Path, name: &str, chart: &Chart) -> PathBuf {
    let path = folder.join(format!("{name}.png"));
    draw(&path, chart).unwrap_or_else(|err| panic!("{name}: {err}"));
    path
}

fn svg_of(png: &Path) -> String {
    std::fs::read_to_string(png.with_extension("svg")).unwrap()
}

#[test]
fn the_plot_has_each_series_colour_text_and_an_svg() {
    let temporary = tempfile::tempdir().unwrap();
    let losses = losses();
    let panels = [Panel {
        y_label: "loss",
        series: &losses,
    }];
    let path = draw_in(temporary.path(), "loss", &one_panel("GAN losses", &panels));
    let image = Image::read(&path);

    for (index, colour) in PALETTE.iter().take(3).enumerate() {
        // A smoothed curve across the plot is a thousand pixels; a legend swatch alone is 40.
        let pixels = image.count(*colour);
        assert!(
            pixels > 1000,
            "series {index}: {pixels} pixels of {colour:?}"
        );
    }
    assert_eq!(
        image.count(PALETTE[3]),
        0,
        "a fourth colour with three series"
    );
    let background = image.count([255, 255, 255]);
    let area = image.width * image.height;
    assert!(background > area / 2, "{background} white pixels");

    // The title is the only ink in the middle of the top band: there with a title, absent
    // without one.
    let title_band = |image: &Image| {
        image
            .find(ink)
            .into_iter()
            .filter(|&(column, row)| row < 32 && (250..650).contains(&column))
            .count()
    };
    assert!(
        title_band(&image) > 50,
        "{} title pixels",
        title_band(&image)
    );
    let untitled = draw_in(temporary.path(), "untitled", &one_panel("", &panels));
    assert_eq!(title_band(&Image::read(&untitled)), 0);

    // Tick labels and the x label below the plot; the y label left of it.
    let ink = image.find(ink);
    let below = ink.iter().filter(|p| p.1 >= image.height - 60).count();
    let left = ink.iter().filter(|p| p.0 < 30).count();
    assert!(
        below > 100 && left > 20,
        "{below} pixels below, {left} left"
    );

    let svg = svg_of(&path);
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for text in ["GAN losses", "loss_d", "loss_g", "d_real", "step"] {
        assert!(svg.contains(text), "no {text:?} in the SVG");
    }

    // Nothing but the PNGs and SVGs is left in the folder (written under temporary names).
    let mut names: Vec<String> = std::fs::read_dir(temporary.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["loss.png", "loss.svg", "untitled.png", "untitled.svg"]
    );
}

/// A series jumping between 0 and 1: its raw curve fills the band between them faintly; the
/// smoothed curve is a solid line through the middle.
#[test]
fn the_raw_curve_is_faint_and_the_smoothed_one_runs_through_it() {
    let temporary = tempfile::tempdir().unwrap();
    let jumping = vec![series(
        "jumping",
        (0..10_000).map(|i| (i as f64, (i % 2) as f64)).collect(),
    )];
    let panels = [Panel {
        y_label: "loss",
        series: &jumping,
    }];
    let image = Image::read(&draw_in(
        temporary.path(),
        "jumping",
        &one_panel("", &panels),
    ));

    let [red, green, _] = PALETTE[0];
    let faint = image.find(|[r, g, b]| {
        [r, g, b] != [255; 3] && r > red && g > green && b > 200 && u16::from(b) > u16::from(r) + 20
    });
    let solid = image.find(|pixel| pixel == PALETTE[0]);
    let rows = |pixels: &[(usize, usize)]| {
        let mut rows: Vec<usize> = pixels.iter().map(|p| p.1).collect();
        rows.sort_unstable();
        rows
    };
    let (faint_rows, solid_rows) = (rows(&faint), rows(&solid));
    assert!(
        faint_rows.len() > 50_000,
        "{} faint pixels",
        faint_rows.len()
    );
    let (band_top, band_bottom) = (faint_rows[0], faint_rows[faint_rows.len() - 1]);
    assert!(
        band_bottom - band_top > 300,
        "band {band_top}..{band_bottom}"
    );

    let middle = solid_rows[solid_rows.len() / 2];
    let centre = (band_top + band_bottom) / 2;
    assert!(
        middle.abs_diff(centre) < 10,
        "line at {middle}, band centre {centre}"
    );
    // All but the start, where the average climbs from the first point (0) to 0.5, and the
    // legend's swatch.
    let near = solid_rows
        .iter()
        .filter(|r| r.abs_diff(middle) <= 4)
        .count();
    assert!(
        near * 10 > solid_rows.len() * 8,
        "{near} of {} solid pixels within 4 rows of {middle}",
        solid_rows.len()
    );
    assert!(solid_rows.len() > 1000, "{} solid pixels", solid_rows.len());
}

#[test]
fn a_second_panel_makes_the_image_taller_and_holds_its_own_series() {
    let temporary = tempfile::tempdir().unwrap();
    let losses = vec![series("loss", curve(1.0, 0.2))];
    let scores = vec![
        series("D(x)", curve(0.7, 0.1)),
        series("D(G(z))", curve(0.3, 0.1)),
    ];
    let top = Panel {
        y_label: "loss",
        series: &losses,
    };
    let bottom = Panel {
        y_label: "D(x), D(G(z))",
        series: &scores,
    };
    let one = Image::read(&draw_in(temporary.path(), "one", &one_panel("t", &[top])));
    let two = Image::read(&draw_in(
        temporary.path(),
        "two",
        &one_panel("t", &[top, bottom]),
    ));
    assert!(
        two.height > one.height + 100,
        "{} vs {}",
        two.height,
        one.height
    );

    // Colours count on across panels: the second panel's series are the 2nd and 3rd colours,
    // drawn below everything of the first.
    let lowest_of_first = two.find(|p| p == PALETTE[0]).iter().map(|p| p.1).max();
    for colour in [PALETTE[1], PALETTE[2]] {
        let pixels = two.find(|p| p == colour);
        assert!(pixels.len() > 500, "{} pixels of {colour:?}", pixels.len());
        let highest = pixels.iter().map(|p| p.1).min();
        assert!(
            highest > lowest_of_first,
            "{highest:?} vs {lowest_of_first:?}"
        );
    }
    assert_eq!(two.count(PALETTE[3]), 0);
    let svg = svg_of(&temporary.path().join("two.png"));
    assert!(svg.contains("D(G(z))") && svg.contains("D(x), D(G(z))"));
}

#[test]
fn epoch_lines_are_drawn_and_thinned() {
    let temporary = tempfile::tempdir().unwrap();
    let losses = vec![series("loss", curve(1.0, 0.2))];
    let panels = [Panel {
        y_label: "loss",
        series: &losses,
    }];
    let lines = |name: &str, steps_per_epoch: Option<u64>| {
        let chart = Chart {
            steps_per_epoch,
            ..one_panel("epochs", &panels)
        };
        Image::read(&draw_in(temporary.path(), name, &chart)).columns_with(EPOCH_COLOUR, 100)
    };
    assert_eq!(lines("none", None), 0);
    // Steps 1..=2000 at 500 a epoch: lines at steps 500, 1000, 1500 and 2000.
    assert_eq!(lines("four", Some(500)), 4);
    // 2000 epochs: every 100th.
    assert_eq!(lines("many", Some(1)), 20);
    assert_eq!(lines("zero", Some(0)), 0);
    assert_eq!(lines("longer than the run", Some(5000)), 0);
}

#[test]
fn a_single_point_is_drawn_as_a_dot() {
    let temporary = tempfile::tempdir().unwrap();
    let point = vec![series("loss", vec![(1.0, 0.5)])];
    let nothing = vec![series("loss", vec![])];
    let dot = |name: &str, series: &[Series]| {
        let panels = [Panel {
            y_label: "loss",
            series,
        }];
        Image::read(&draw_in(temporary.path(), name, &one_panel("one", &panels))).count(PALETTE[0])
    };
    let (with_point, legend_only) = (dot("point", &point), dot("empty", &nothing));
    assert!(legend_only > 0, "the legend swatch");
    assert!(
        with_point >= legend_only + 30,
        "dot {with_point}, legend alone {legend_only}"
    );
}

#[test]
fn a_panel_without_points_says_no_data_and_long_names_are_cut() {
    let temporary = tempfile::tempdir().unwrap();
    let long_name = format!("loss {}", "x".repeat(100));
    let data = vec![series(&long_name, curve(1.0, 0.1))];
    let empty = vec![series("d_real", vec![(0.0, f64::NAN)])];
    let panels = [
        Panel {
            y_label: "loss",
            series: &data,
        },
        Panel {
            y_label: "D(x)",
            series: &empty,
        },
    ];
    let svg = svg_of(&draw_in(temporary.path(), "half", &one_panel("t", &panels)));
    assert_eq!(svg.matches("no data").count(), 1);
    assert!(!svg.contains(&long_name));
    let cut = format!("{}…", &long_name[..40]);
    assert!(svg.contains(&cut), "no {cut:?}");

    let svg = svg_of(&draw_in(
        temporary.path(),
        "full",
        &one_panel("t", &panels[..1]),
    ));
    assert!(!svg.contains("no data"));
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
            "tinier",
            vec![series("tinier", vec![(0.0, 1e-300), (1.0, 3e-300)])],
        ),
        (
            "big offset",
            vec![series("offset", vec![(0.0, 1e9), (1.0, 1e9 + 1e-3)])],
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
                series("λ loss — ünïcode <&>", vec![(0.0, 1.0), (1.0, 2.0)]),
                series("", vec![(0.0, 2.0), (1.0, 1.0)]),
            ],
        ),
    ];
    let mut drawn = 0;
    let mut check = |case: &str, chart: &Chart| {
        drawn += 1;
        let path = temporary.path().join(format!("{drawn}.png"));
        draw(&path, chart).unwrap_or_else(|err| panic!("{case}: {err}"));
        let image = Image::read(&path);
        assert!(!image.find(ink).is_empty(), "{case}: no axes or text");
        let svg = svg_of(&path);
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{case}");
    };
    for (index, (case, data)) in cases.iter().enumerate() {
        let title = format!("{case}: {}", "long title ".repeat(index));
        let panels = [
            Panel {
                y_label: "loss ±",
                series: data,
            },
            Panel {
                y_label: "",
                series: data,
            },
        ];
        // One or two panels, and epochs of every size, by turns.
        let chart = Chart {
            title: &title,
            x_label: "",
            panels: &panels[..1 + index % 2],
            steps_per_epoch: [None, Some(1), Some(u64::MAX)][index % 3],
        };
        check(case, &chart);
    }
    check("no panels", &one_panel("", &[]));
    let flat = vec![series("flat", vec![(0.0, 0.7); 5])];
    let most = [Panel {
        y_label: "y",
        series: &flat,
    }; MAX_PANELS];
    check("most panels", &one_panel("", &most));
}

/// A million points are thinned before drawing: the SVG stays small (unthinned it would hold
/// every point, ~20 MB) and drawing takes well under a second in release builds (~50 ms; this
/// test allows for debug builds, ~0.5 s, on a busy machine).
#[test]
fn a_long_series_is_thinned_and_fast() {
    let temporary = tempfile::tempdir().unwrap();
    let long = vec![series(
        "long",
        (0..1_000_000u64)
            .map(|i| (i as f64, ((i * 7919) % 1000) as f64))
            .collect(),
    )];
    let panels = [Panel {
        y_label: "loss",
        series: &long,
    }];
    let chart = Chart {
        steps_per_epoch: Some(1000),
        ..one_panel("long", &panels)
    };
    let start = std::time::Instant::now();
    let path = draw_in(temporary.path(), "long", &chart);
    let elapsed = start.elapsed();
    assert!(elapsed.as_secs_f64() < 4.0, "{elapsed:?}");
    let svg_bytes = std::fs::metadata(path.with_extension("svg")).unwrap().len();
    assert!(svg_bytes < 1_000_000, "{svg_bytes} bytes of SVG");
    assert!(Image::read(&path).count(PALETTE[0]) > 1000);
}

#[test]
fn too_many_panels_is_an_error_naming_the_count() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("loss.png");
    let losses = losses();
    let panels = [Panel {
        y_label: "loss",
        series: &losses,
    }; MAX_PANELS + 1];
    let err = draw(&path, &one_panel("t", &panels)).unwrap_err();
    assert!(matches!(err, RunError::Plot { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot draw the plot: a chart has at most {MAX_PANELS} panels, got {}",
            path.display(),
            MAX_PANELS + 1
        )
    );
    assert_eq!(std::fs::read_dir(temporary.path()).unwrap().count(), 0);
}

#[test]
fn a_plot_the_os_cannot_write_is_an_error_naming_the_path() {
    let temporary = tempfile::tempdir().unwrap();
    let path = temporary.path().join("missing-folder/loss.png");
    let losses = losses();
    let panels = [Panel {
        y_label: "loss",
        series: &losses,
    }];
    let err = draw(&path, &one_panel("t", &panels)).unwrap_err();
    assert!(matches!(err, RunError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot write: ", path.display())),
        "{err}"
    );
}
