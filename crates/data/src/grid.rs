//! Image grids: a batch of images [N, C, H, W] tiled into one PNG, row by row, with padding
//! between tiles (what training writes every epoch and `kiln data show` prints). Not a general
//! image library: 8-bit grayscale or RGB, nothing else.

use std::path::Path;

use kiln_tensor::{DType, Tensor};

use crate::error::{DataError, Result};
use crate::loader::Scale;

/// The gray of the padding between tiles (and of empty cells in the last row): mid-gray, so
/// tiles with black backgrounds (MNIST) stay apart and white ones too.
pub const PADDING_GRAY: u8 = 128;

/// The largest grid drawn, in bytes of pixels (keeps a mistaken shape from taking all memory).
const MAX_GRID_BYTES: u64 = 1 << 30;

/// How to lay images out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    /// Tiles per row (fewer if there are fewer images).
    pub columns: usize,
    /// Pixels of padding around and between tiles.
    pub padding: usize,
    /// The range float images are in: values outside it are clamped. u8 images are drawn as
    /// they are (0 black, 255 white).
    pub range: Scale,
}

impl Default for Grid {
    fn default() -> Self {
        Grid {
            columns: 8,
            padding: 2,
            range: Scale::MinusOneToOne,
        }
    }
}

/// An 8-bit image: `channels` (1 gray, 3 RGB) interleaved values per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Grid {
    /// Tiles `images` — [N, 1, H, W] or [N, 3, H, W] (or [N, H, W], as one channel), float in
    /// `self.range` or u8 — into one image.
    pub fn render(&self, images: &Tensor) -> Result<GridImage> {
        let invalid = |message: String| Err(DataError::invalid("grid", message));
        let (count, channels, height, width) = match *images.dims() {
            [n, c @ (1 | 3), h, w] => (n, c, h, w),
            [n, h, w] => (n, 1, h, w),
            _ => {
                return invalid(format!(
                    "expected images of [N, 1, H, W] or [N, 3, H, W], got shape {}",
                    images.shape()
                ))
            }
        };
        if count == 0 || height == 0 || width == 0 {
            return invalid(format!("no pixels to draw in shape {}", images.shape()));
        }
        if self.columns == 0 {
            return invalid("columns must be at least 1".to_string());
        }
        let columns = self.columns.min(count);
        let rows = count.div_ceil(columns);
        let padding = self.padding;
        let extent = |tiles: usize, size: usize| {
            tiles
                .checked_mul(size.checked_add(padding)?)?
                .checked_add(padding)
        };
        let size = extent(columns, width).zip(extent(rows, height));
        let bytes = size.and_then(|(w, h)| w.checked_mul(h)?.checked_mul(channels));
        let (grid_width, grid_height) = match (size, bytes) {
            (Some(size), Some(bytes)) if bytes as u64 <= MAX_GRID_BYTES => size,
            _ => {
                return invalid(format!(
                    "a grid of {rows} x {columns} tiles of {height}x{width} with padding \
                     {padding} is larger than {MAX_GRID_BYTES} bytes"
                ))
            }
        };

        let values = self.to_pixels(images)?; // [N, C, H, W] u8, row-major
        let mut pixels = vec![PADDING_GRAY; grid_width * grid_height * channels];
        for (n, tile) in values.chunks_exact(channels * height * width).enumerate() {
            let x0 = padding + (n % columns) * (width + padding);
            let y0 = padding + (n / columns) * (height + padding);
            for (c, plane) in tile.chunks_exact(height * width).enumerate() {
                for (y, row) in plane.chunks_exact(width).enumerate() {
                    let start = ((y0 + y) * grid_width + x0) * channels + c;
                    for (x, &value) in row.iter().enumerate() {
                        pixels[start + x * channels] = value;
                    }
                }
            }
        }
        Ok(GridImage {
            width: grid_width,
            height: grid_height,
            channels,
            pixels,
        })
    }

    /// Renders `images` and writes them to `path` as a PNG. The file appears whole or not at
    /// all (written under a temporary name, then renamed).
    pub fn save(&self, images: &Tensor, path: impl AsRef<Path>) -> Result<()> {
        let image = self.render(images)?;
        crate::write_atomically(path.as_ref(), |out| {
            let (width, height) = (image.width as u32, image.height as u32);
            let mut encoder = png::Encoder::new(out, width, height);
            encoder.set_color(match image.channels {
                1 => png::ColorType::Grayscale,
                _ => png::ColorType::Rgb,
            });
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
            writer
                .write_image_data(&image.pixels)
                .map_err(std::io::Error::other)?;
            writer.finish().map_err(std::io::Error::other)
        })
    }

    /// The tensor's values as 8-bit pixels, in its own (row-major) order.
    fn to_pixels(&self, images: &Tensor) -> Result<Vec<u8>> {
        if images.dtype() == DType::U8 {
            return Ok(images.to_vec::<u8>()?);
        }
        if !images.dtype().is_float() {
            return Err(DataError::invalid(
                "grid",
                format!(
                    "cannot draw {} images: expected u8 or floats",
                    images.dtype()
                ),
            ));
        }
        let (scale, offset) = match self.range {
            Scale::ZeroToOne => (255.0, 0.0),
            Scale::MinusOneToOne => (127.5, 1.0),
        };
        let values = images.to_dtype(DType::F32)?.to_vec::<f32>()?;
        // NaN becomes 0: `as` saturates and maps NaN to zero.
        Ok(values
            .into_iter()
            .map(|v| ((v + offset) * scale).round().clamp(0.0, 255.0) as u8)
            .collect())
    }
}

/// Writes `images` as a PNG grid of `columns` tiles per row with `padding` pixels between them;
/// float values are read in `range`. See [`Grid`].
pub fn save_grid(
    images: &Tensor,
    path: impl AsRef<Path>,
    range: Scale,
    columns: usize,
    padding: usize,
) -> Result<()> {
    Grid {
        columns,
        padding,
        range,
    }
    .save(images, path)
}
