//! Image data: IDX files, class folders, augmentation, and the bad input each must reject with
//! a message naming the file.

use ferroformer::data::images::{augment, read_class_folders, read_dataset, read_idx, ImageSplit};
use ferroformer::rng::Rng;
use std::io::Write;
use std::path::Path;

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_png(path: &Path, w: u32, h: u32, grey: bool) {
    if grey {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 7 + y * 3) as u8]))
            .save(path)
            .unwrap();
    } else {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 100]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn idx_files_read_gzip_or_raw_and_bad_ones_are_named() {
    let d = tempfile::tempdir().unwrap();
    // Two 2x3 images, labels 1 and 0.
    let pixels: Vec<u8> = (0..12).collect();
    std::fs::write(
        d.path().join("train-images-idx3-ubyte.gz"),
        gz(&idx_bytes(&[2, 2, 3], &pixels)),
    )
    .unwrap();
    std::fs::write(
        d.path().join("train-labels-idx1-ubyte"),
        idx_bytes(&[2], &[1, 0]),
    )
    .unwrap();
    let names = vec!["zero".to_string(), "one".to_string()];
    let set = read_dataset(d.path(), ImageSplit::Train, None, &names).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (2, 1, 2, 3)
    );
    assert_eq!(set.image(1), &pixels[6..]);
    assert_eq!(set.labels, vec![1, 0]);
    assert_eq!(set.classes, names);
    // Grey repeated as RGB for a 3-channel model.
    let rgb = read_dataset(d.path(), ImageSplit::Train, Some(3), &[]).unwrap();
    assert_eq!(rgb.image(0)[..6], rgb.image(0)[6..12]);
    assert_eq!(rgb.classes, vec!["0", "1"]);

    let bad = d.path().join("bad.idx");
    std::fs::write(&bad, b"\x12\x34\x08\x01\0\0\0\x01\x05").unwrap();
    let e = read_idx(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.idx") && e.contains("magic"), "{e}");
    std::fs::write(&bad, idx_bytes(&[3, 2, 2], &[0; 7])).unwrap();
    let e = read_idx(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.idx") && e.contains("truncated"), "{e}");
    std::fs::write(&bad, &gz(&idx_bytes(&[1], &[0]))[..10]).unwrap();
    let e = read_idx(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.idx") && e.contains("gzip"), "{e}");
    // More labels than names.
    let e = read_dataset(d.path(), ImageSplit::Train, None, &names[..1])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("label 1"),
        "{e}"
    );
    // Label count not matching the images.
    std::fs::write(
        d.path().join("train-labels-idx1-ubyte"),
        idx_bytes(&[3], &[1, 0, 1]),
    )
    .unwrap();
    let e = read_dataset(d.path(), ImageSplit::Train, None, &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("3 labels"),
        "{e}"
    );
}

#[test]
fn class_folders_and_their_bad_input() {
    let d = tempfile::tempdir().unwrap();
    for (class, n) in [("cat", 2), ("dog", 3)] {
        std::fs::create_dir(d.path().join(class)).unwrap();
        for i in 0..n {
            write_png(&d.path().join(format!("{class}/{i}.png")), 5, 4, false);
        }
    }
    let set = read_class_folders(d.path(), None).unwrap();
    assert_eq!(set.classes, vec!["cat", "dog"]);
    assert_eq!(set.labels, vec![0, 0, 1, 1, 1]);
    assert_eq!((set.channels, set.height, set.width), (3, 4, 5));
    // Channel-major: the red plane is x, the green plane y.
    assert_eq!(&set.image(0)[..5], &[0, 1, 2, 3, 4]);
    assert_eq!(&set.image(0)[20..25], &[0, 0, 0, 0, 0]);
    // Made grey as PIL's convert("L").
    let grey = read_class_folders(d.path(), Some(1)).unwrap();
    let want = ((3u32 * 19595 + 2 * 38470 + 100 * 7471 + 0x8000) >> 16) as u8;
    assert_eq!(grey.image(0)[2 * 5 + 3], want);

    write_png(&d.path().join("dog/odd.png"), 6, 4, false);
    let e = read_class_folders(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("odd.png") && e.contains("6x4"), "{e}");
    std::fs::remove_file(d.path().join("dog/odd.png")).unwrap();

    std::fs::write(
        d.path().join("dog/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let e = read_class_folders(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("broken.png") && e.contains("cannot read"), "{e}");
    std::fs::remove_file(d.path().join("dog/broken.png")).unwrap();

    std::fs::create_dir(d.path().join("emu")).unwrap();
    std::fs::write(d.path().join("emu/notes.txt"), "no images here").unwrap();
    let e = read_class_folders(d.path(), None).unwrap_err().to_string();
    assert!(e.contains("emu") && e.contains("no PNG or JPEG"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = read_class_folders(empty.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class sub-folders"), "{e}");
}

#[test]
fn augmentation_shifts_and_mirrors() {
    let (c, h, w) = (1, 3, 4);
    let img: Vec<u8> = (1..=12).collect();
    let mut rng = Rng::new(0);
    assert_eq!(augment(&img, (c, h, w), 0, 0.0, &mut rng), img);
    let mirrored = augment(&img, (c, h, w), 0, 1.0, &mut rng);
    assert_eq!(mirrored, vec![4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9]);
    // With padding 1, every output is the image moved by at most one pixel, zeros entering.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let a = augment(&img, (c, h, w), 1, 0.0, &mut rng);
        let shift = (-1i32..=1)
            .flat_map(|dy| (-1i32..=1).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..h as i32).all(|y| {
                    (0..w as i32).all(|x| {
                        let (sy, sx) = (y + dy, x + dx);
                        let want = if sy < 0 || sx < 0 || sy >= h as i32 || sx >= w as i32 {
                            0
                        } else {
                            img[(sy * w as i32 + sx) as usize]
                        };
                        a[(y * w as i32 + x) as usize] == want
                    })
                })
            })
            .expect("a shifted copy");
        seen.insert(shift);
    }
    assert_eq!(seen.len(), 9, "all nine shifts occur: {seen:?}");
}

/// The held-out split is a seeded shuffle that bench/vit_torch.py reproduces in Python: its
/// known answer for Fashion-MNIST's 60,000 training images.
#[test]
fn validation_split_known_answer() {
    let (keep, held) = ferroformer::data::images::split_indices(60000, 0.0833333333, 1234);
    assert_eq!((keep.len(), held.len()), (55000, 5000));
    assert_eq!(&held[..8], &[2, 3, 44, 72, 102, 111, 130, 148]);
    assert_eq!(&held[4996..], &[59972, 59973, 59978, 59991]);
    assert_eq!(held.iter().sum::<usize>(), 149884524);
}
