//! Image transforms: any decoded image -> RGB8 -> resize shorter side -> crop (random or centre)
//! -> optional horizontal flip -> CHW float in [-1, 1].

use image::{DynamicImage, RgbImage, imageops};
use rand::Rng;

/// How to crop to the square training resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crop {
    /// Random crop + optional flip (training).
    Random { hflip: bool },
    /// Centre crop, no flip (evaluation).
    Centre,
}

/// Converts any decoded image (grey, RGBA, 16-bit, palette, CMYK-decoded) to RGB8.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    img.into_rgb8()
}

/// Aspect ratios above this are cropped to a square before resizing (see [`resize_crop`]).
pub const MAX_RESIZE_ASPECT: u32 = 2;

/// Resizes so the shorter side is `res`, then crops `res x res`. An image longer than
/// [`MAX_RESIZE_ASPECT`] times its shorter side is first cropped (at the same random or centre
/// position) to a square of its shorter side and that square resized, so a 1 x 200000 image
/// never becomes a 32 x 6400000 intermediate.
pub fn resize_crop(img: &RgbImage, res: usize, crop: Crop, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let res32 = res as u32;
    let short = w.min(h);
    if w.max(h) > MAX_RESIZE_ASPECT * short {
        let (x, y, flip) = crop_position(w, h, short, crop, rng);
        let square = imageops::crop_imm(img, x, y, short, short).to_image();
        let mut out = if short == res32 {
            square
        } else {
            imageops::resize(&square, res32, res32, imageops::FilterType::Triangle)
        };
        if flip {
            imageops::flip_horizontal_in_place(&mut out);
        }
        return out;
    }
    let resized;
    let src = if w.min(h) == res32 {
        img
    } else {
        let scale = res as f64 / w.min(h) as f64;
        let nw = ((w as f64 * scale).round() as u32).max(res32);
        let nh = ((h as f64 * scale).round() as u32).max(res32);
        resized = imageops::resize(img, nw, nh, imageops::FilterType::Triangle);
        &resized
    };
    let (w, h) = src.dimensions();
    let (x, y, flip) = crop_position(w, h, res32, crop, rng);
    let mut out = imageops::crop_imm(src, x, y, res32, res32).to_image();
    if flip {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// Where a `side x side` crop of a `w x h` image starts, and whether it is flipped.
fn crop_position(w: u32, h: u32, side: u32, crop: Crop, rng: &mut impl Rng) -> (u32, u32, bool) {
    match crop {
        Crop::Centre => ((w - side) / 2, (h - side) / 2, false),
        Crop::Random { hflip } => (
            rng.random_range(0..=w - side),
            rng.random_range(0..=h - side),
            hflip && rng.random_bool(0.5),
        ),
    }
}

/// Appends the image as CHW floats in [-1, 1] (`v / 127.5 - 1`).
pub fn push_chw(img: &RgbImage, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let raw = img.as_raw();
    let plane = (w * h) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[start + c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shorter_side_and_centre_crop() {
        let mut img = RgbImage::new(40, 20);
        img.put_pixel(20, 10, image::Rgb([255, 0, 0]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let out = resize_crop(&img, 20, Crop::Centre, &mut rng);
        assert_eq!(out.dimensions(), (20, 20));
        assert_eq!(out.get_pixel(10, 10).0, [255, 0, 0]);
        let out = resize_crop(&img, 10, Crop::Random { hflip: true }, &mut rng);
        assert_eq!(out.dimensions(), (10, 10));
    }

    #[test]
    fn chw_range() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 255, 0]));
        let mut v = Vec::new();
        push_chw(&img, &mut v);
        assert_eq!(v, vec![-1.0, -1.0, 1.0, -1.0, -1.0, -1.0]);
    }
}
