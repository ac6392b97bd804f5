//! Writes the image sets behind the README's reference scores (`just eval-reference`):
//! 10,000 images of uniform noise and 10,000 blank (black) images, as u8 IDX files that
//! `kiln eval --samples` reads. The third reference, real MNIST training images, is the
//! committed data/mnist/train-images-idx3-ubyte.gz itself.
//!
//! Usage: cargo run --release --example reference_sets -- OUT_DIR

use kiln_data::{write_idx, Encoding, IdxArray, IdxData};
use kiln_tensor::Generator;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const IMAGES: usize = 10_000;

fn main() -> Result<()> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: reference_sets OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let pixels = IMAGES * 28 * 28;
    // Uniform over 0..=255 from the Philox stream of seed 0.
    let noise = Generator::new(0)
        .uniform_f32(pixels)
        .into_iter()
        .map(|u| (u * 256.0).min(255.0) as u8)
        .collect();
    for (name, data) in [("noise", noise), ("blank", vec![0u8; pixels])] {
        let path = out.join(format!("{name}.idx"));
        write_idx(
            &path,
            &IdxArray::new(vec![IMAGES, 28, 28], IdxData::U8(data))?,
            Encoding::Raw,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
