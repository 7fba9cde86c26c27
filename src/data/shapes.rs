//! `builtin:shapes`: a deterministic, procedurally drawn dataset, so tests and the first demo
//! need no download. 10 classes = 5 shapes x 2 colour families; texture (solid, stripes,
//! checker), position, size, rotation and background vary per image. Image `i` is a pure
//! function of `(i, resolution)`.

use image::RgbImage;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Class names, in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "circle-warm",
    "circle-cool",
    "square-warm",
    "square-cool",
    "triangle-warm",
    "triangle-cool",
    "cross-warm",
    "cross-cool",
    "ring-warm",
    "ring-cool",
];

/// The built-in dataset of `len` images.
#[derive(Clone, Debug)]
pub struct Shapes {
    len: usize,
    offset: u64,
}

impl Shapes {
    /// `offset` selects a disjoint index range (e.g. a held-out split).
    pub fn new(len: usize, offset: u64) -> Self {
        Self { len, offset }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn label(&self, index: usize) -> usize {
        (index as u64 + self.offset) as usize % CLASS_NAMES.len()
    }
    /// Draws image `index` at `res x res`.
    pub fn draw(&self, index: usize, res: usize) -> RgbImage {
        let id = index as u64 + self.offset;
        let label = self.label(index);
        draw_shape(id, label / 2, label % 2 == 1, res)
    }
}

fn draw_shape(id: u64, shape: usize, cool: bool, res: usize) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    let hue: f32 = if cool {
        rng.random_range(0.50..0.72) // cyan..blue
    } else {
        rng.random_range(-0.04..0.12) // red..orange/yellow
    };
    let fg = hsv(
        hue.rem_euclid(1.0),
        rng.random_range(0.65..1.0),
        rng.random_range(0.7..1.0),
    );
    let fg2 = [fg[0] * 0.45, fg[1] * 0.45, fg[2] * 0.45];
    let bg_a = grey(rng.random_range(0.1..0.9));
    let bg_b = grey(rng.random_range(0.1..0.9));
    let texture = rng.random_range(0..3u8);
    let period: f32 = rng.random_range(0.08..0.2);
    let size: f32 = rng.random_range(0.22..0.4);
    let cx: f32 = rng.random_range(size..1.0 - size);
    let cy: f32 = rng.random_range(size..1.0 - size);
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let ss = 2; // 2x2 supersampling for smooth edges
    let mut img = RgbImage::new(res as u32, res as u32);
    for py in 0..res {
        for px in 0..res {
            let mut acc = [0f32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let x = (px as f32 + (sx as f32 + 0.5) / ss as f32) / res as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / ss as f32) / res as f32;
                    // Rotate into the shape's frame, normalised by its size.
                    let (dx, dy) = ((x - cx) / size, (y - cy) / size);
                    let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                    let inside = match shape {
                        0 => u * u + v * v <= 1.0,
                        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
                        2 => v <= 0.5 && v >= -1.0 + 1.732 * u.abs(),
                        3 => {
                            (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0)
                        }
                        _ => {
                            let r2 = u * u + v * v;
                            (0.36..=1.0).contains(&r2)
                        }
                    };
                    let c = if inside {
                        let t = match texture {
                            0 => false,
                            1 => ((u * size / period).floor() as i64) % 2 == 0,
                            _ => {
                                let a = (u * size / period).floor() as i64;
                                let b = (v * size / period).floor() as i64;
                                (a + b) % 2 == 0
                            }
                        };
                        if t { fg2 } else { fg }
                    } else {
                        let t = (x + y) * 0.5;
                        [
                            bg_a[0] * (1.0 - t) + bg_b[0] * t,
                            bg_a[1] * (1.0 - t) + bg_b[1] * t,
                            bg_a[2] * (1.0 - t) + bg_b[2] * t,
                        ]
                    };
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            let n = (ss * ss) as f32;
            img.put_pixel(
                px as u32,
                py as u32,
                image::Rgb(acc.map(|a| (a / n * 255.0).round().clamp(0.0, 255.0) as u8)),
            );
        }
    }
    img
}

fn grey(v: f32) -> [f32; 3] {
    [v, v * 0.97, v * 0.94]
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match i as i32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let s = Shapes::new(100, 0);
        assert_eq!(s.draw(7, 32), s.draw(7, 32));
        assert_ne!(s.draw(7, 32), s.draw(17, 32), "same class, different image");
        assert_eq!(s.label(7), 7);
        assert_eq!(s.label(17), 7);
        let big = s.draw(3, 97);
        assert_eq!(big.dimensions(), (97, 97));
        // Not a flat image.
        let px: Vec<_> = s.draw(3, 32).pixels().map(|p| p.0).collect();
        assert!(px.iter().any(|p| *p != px[0]));
    }
}
