//! PNG grids on hand-made tensors: the layout of tiles and padding, RGB, clamping and the
//! range, shapes the grid refuses, and the all-or-nothing write.

use kiln_data::grid::{GridImage, PADDING_GRAY};
use kiln_data::{save_grid, Grid, Scale};
use kiln_tensor::{Device, Tensor};

fn grid(columns: usize, padding: usize, range: Scale) -> Grid {
    Grid {
        columns,
        padding,
        range,
    }
}

#[test]
fn tiles_fill_rows_left_to_right_with_padding_between() {
    // Three 1x2 gray images in [0, 1], two per row: 2 rows, a gray empty cell at the end.
    let images = Tensor::from_vec(
        vec![0.0f32, 1.0, 0.5, 0.25, 2.0, -1.0],
        [3, 1, 1, 2],
        Device::Cpu,
    )
    .unwrap();
    let image = grid(2, 1, Scale::ZeroToOne).render(&images).unwrap();
    let g = PADDING_GRAY;
    #[rustfmt::skip]
    let expected = vec![
        g, g,   g,  g, g,  g,  g,
        g, 0, 255,  g, 128, 64, g,
        g, g,   g,  g, g,  g,  g,
        g, 255, 0,  g, g,  g,  g,
        g, g,   g,  g, g,  g,  g,
    ];
    assert_eq!(
        image,
        GridImage {
            width: 7,
            height: 5,
            channels: 1,
            pixels: expected
        }
    );
}

#[test]
fn rgb_in_minus_one_to_one_and_fewer_images_than_columns() {
    // One 1x1 RGB image: red -1 (black), green 0 (mid), blue 1 (full), NaN-free.
    let images = Tensor::from_vec(vec![-1.0f64, 0.0, 1.0], [1, 3, 1, 1], Device::Cpu).unwrap();
    let image = grid(8, 0, Scale::MinusOneToOne).render(&images).unwrap();
    assert_eq!((image.width, image.height, image.channels), (1, 1, 3));
    assert_eq!(image.pixels, [0, 128, 255]);
    // NaN draws as black rather than failing.
    let nan = Tensor::from_vec(vec![f32::NAN], [1, 1, 1, 1], Device::Cpu).unwrap();
    assert_eq!(
        grid(1, 0, Scale::ZeroToOne).render(&nan).unwrap().pixels,
        [0]
    );
}

#[test]
fn refused_shapes_and_arguments_say_why() {
    let cases = [
        (
            Tensor::zeros([2, 2, 4, 4], kiln_tensor::DType::F32, Device::Cpu),
            8,
            "[2, 2, 4, 4]",
        ),
        (
            Tensor::zeros([16], kiln_tensor::DType::F32, Device::Cpu),
            8,
            "[16]",
        ),
        (
            Tensor::zeros([0, 1, 4, 4], kiln_tensor::DType::F32, Device::Cpu),
            8,
            "no pixels",
        ),
        (
            Tensor::zeros([1, 1, 4, 4], kiln_tensor::DType::U32, Device::Cpu),
            8,
            "u32",
        ),
        (
            Tensor::zeros([1, 1, 4, 4], kiln_tensor::DType::F32, Device::Cpu),
            0,
            "columns",
        ),
    ];
    for (images, columns, expected) in cases {
        let message = grid(columns, 2, Scale::ZeroToOne)
            .render(&images.unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("grid: ") && message.contains(expected),
            "{message}"
        );
    }
    let huge = Tensor::zeros([1, 1, 1, 1], kiln_tensor::DType::U8, Device::Cpu).unwrap();
    let message = grid(1, 1 << 20, Scale::ZeroToOne)
        .render(&huge)
        .unwrap_err()
        .to_string();
    assert!(message.contains("larger than"), "{message}");
}

#[test]
fn a_failed_save_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let images = Tensor::zeros([4, 1, 8, 8], kiln_tensor::DType::F32, Device::Cpu).unwrap();
    let path = dir.path().join("grid.png");
    save_grid(&images, &path, Scale::MinusOneToOne, 2, 1).unwrap();
    assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    // Into a directory that does not exist: an error naming the path; no file appears.
    let missing = dir.path().join("no/such/dir/grid.png");
    let message = save_grid(&images, &missing, Scale::MinusOneToOne, 2, 1)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!("{}: cannot write: ", missing.display())),
        "{message}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["grid.png"]);
}
