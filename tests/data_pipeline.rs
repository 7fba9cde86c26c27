//! The image pipeline turns every kind of bad input into a counted skip or a clear error.

use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
use seqgan::data::{Dataset, Loader, LoaderSpec};
use std::path::Path;

fn write_good(dir: &Path) {
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    ImageBuffer::from_fn(40, 30, |x, y| Rgb([x as u8 * 5, y as u8 * 7, 99]))
        .save(dir.join("a/rgb.png"))
        .unwrap();
    ImageBuffer::from_fn(24, 24, |x, _| Luma([x as u8 * 9]))
        .save(dir.join("a/grey.png"))
        .unwrap();
    ImageBuffer::from_fn(24, 24, |x, _| LumaA([x as u8, 200]))
        .save(dir.join("a/grey_alpha.png"))
        .unwrap();
    ImageBuffer::from_fn(24, 24, |x, y| Rgba([x as u8, y as u8, 0, 128]))
        .save(dir.join("b/rgba.png"))
        .unwrap();
    ImageBuffer::from_fn(24, 24, |x, y| {
        Rgb([x as u16 * 2000, y as u16 * 1000, 65535])
    })
    .save(dir.join("b/rgb16.png"))
    .unwrap();
    ImageBuffer::from_fn(24, 24, |x, _| Rgb([x as u8 * 3, 10, 20]))
        .save(dir.join("b/img.bmp"))
        .unwrap();
    ImageBuffer::from_fn(24, 24, |x, _| Rgb([x as u8 * 3, 10, 20]))
        .save(dir.join("b/photo.JPG"))
        .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cmyk.jpg"),
        dir.join("b/cmyk.jpg"),
    )
    .unwrap();
    // An 8-bit palette PNG, written by hand: 2x2, 2-colour palette.
    std::fs::write(dir.join("b/palette.png"), palette_png()).unwrap();
    // Not an image at all: ignored by extension.
    std::fs::write(dir.join("a/notes.txt"), "hello").unwrap();
}

fn palette_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 0, 0, 0, 0, 255]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1, 1, 0]).unwrap();
    }
    out
}

#[test]
fn every_format_becomes_rgb() {
    let dir = tempfile::tempdir().unwrap();
    write_good(dir.path());
    let ds = Dataset::open(dir.path().to_str().unwrap(), 0).unwrap();
    assert_eq!(ds.class_names(), vec!["a", "b"]);
    assert_eq!(ds.len(), 3 + 6);
    let batches: Vec<_> = Loader::new(ds.clone(), LoaderSpec::sequential(16, 4).workers(2, 1))
        .unwrap()
        .collect();
    let n: usize = batches.iter().map(|b| b.len()).sum();
    assert_eq!(n, 9, "all readable");
    assert!(ds.skipped().is_empty(), "{:?}", ds.skipped());
    assert_eq!(batches[0].labels[0], 0);
    assert_eq!(batches[2].labels[0], 1);
    for b in &batches {
        assert!(b.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn unreadable_files_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_good(dir.path());
    let good = std::fs::read(dir.path().join("a/rgb.png")).unwrap();
    std::fs::write(dir.path().join("a/truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.path().join("a/garbage.jpg"), b"definitely not a jpeg").unwrap();
    std::fs::write(dir.path().join("b/empty.webp"), b"").unwrap();
    let ds = Dataset::open(dir.path().to_str().unwrap(), 0).unwrap();
    assert_eq!(ds.len(), 12);
    // Training order: bad files are replaced by readable ones, batches stay full.
    let mut loader =
        Loader::new(ds.clone(), LoaderSpec::train(16, 4, 1, true).workers(2, 1)).unwrap();
    for _ in 0..6 {
        assert_eq!(loader.next_batch().unwrap().len(), 4);
    }
    drop(loader);
    let skipped = ds.skipped();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    let names: Vec<_> = skipped
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"truncated.png".to_string()));
    assert!(names.contains(&"garbage.jpg".to_string()));
    assert!(names.contains(&"empty.webp".to_string()));
    // Evaluation order: skipped, not substituted.
    let n: usize = Loader::new(ds, LoaderSpec::sequential(16, 5).workers(1, 1))
        .unwrap()
        .map(|b| b.len())
        .sum();
    assert_eq!(n, 9);
}

#[test]
fn missing_or_empty_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Dataset::open(missing.to_str().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("nope"),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("empty/cls")).unwrap();
    let err = Dataset::open(dir.path().join("empty").to_str().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images"), "{err}");
    let file = dir.path().join("file.png");
    std::fs::write(&file, b"x").unwrap();
    let err = Dataset::open(file.to_str().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a folder"), "{err}");
    let err = Dataset::open("builtin:mnist", 0).unwrap_err().to_string();
    assert!(err.contains("builtin:shapes"), "{err}");
}

/// A flat folder is one class where that is asked for (evaluation sets, single-class data),
/// and an error where labels matter (every image would silently get label 0).
#[test]
fn flat_folder_is_one_class_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    ImageBuffer::from_fn(8, 8, |_, _| Rgb([1u8, 2, 3]))
        .save(dir.path().join("x.png"))
        .unwrap();
    let ds = Dataset::open_images(dir.path().to_str().unwrap(), 0).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.class_names().len(), 1);
    let err = Dataset::open(dir.path().to_str().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("single_class"), "{err}");
}

#[test]
fn builtin_shapes_has_ten_classes_at_any_resolution() {
    let ds = Dataset::open("builtin:shapes", 50).unwrap();
    assert_eq!(ds.class_names().len(), 10);
    let b = Loader::new(ds, LoaderSpec::sequential(48, 10).workers(1, 1))
        .unwrap()
        .next_batch()
        .unwrap();
    assert_eq!(b.labels, (0..10).collect::<Vec<_>>());
    assert_eq!(b.images.len(), 10 * 3 * 48 * 48);
}
