//! `type: "still"` over HTTP: every format decodes to the right size and frame.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn still_payload(composition: &str, format: &str, extra: Value) -> Value {
    let mut p = common::still_payload(&format!("{}/site", fixture_server()), composition);
    p["imageFormat"] = json!(format);
    p["outputBucket"] = json!("stills");
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// Renders a still and returns the stored file's bytes and the response.
fn still(service: &Service, payload: &Value) -> (Vec<u8>, Value) {
    let read = post_like_client(&service.url, payload);
    assert!(read.progress.is_empty(), "stills stream no progress");
    let response = read
        .response
        .unwrap_or_else(|| panic!("no response: {:?}", read.error));
    let uri = response["cloudStorageUri"].as_str().unwrap();
    let key = uri.trim_start_matches("gs://stills/");
    (
        std::fs::read(service.object("stills", key)).unwrap(),
        response,
    )
}

fn frame_of(img: &image::RgbaImage) -> u64 {
    bar_code(img.width() as usize, img.height() as usize, |x, y| {
        let p = img.get_pixel(x as u32, y as u32).0;
        [p[0], p[1], p[2]]
    })
}

#[test]
fn every_still_format_decodes_to_the_right_frame_and_size() {
    let service = Service::start(&[]);

    let (png, response) = still(
        &service,
        &still_payload(
            "Stills",
            "png",
            json!({"frame": 7, "renderIdOverride": "still0001"}),
        ),
    );
    assert_eq!(
        response["cloudStorageUri"],
        "gs://stills/renders/still0001/out.png"
    );
    assert_eq!(response["type"], "success");
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .unwrap()
        .to_rgba8();
    assert_eq!(img.dimensions(), (400, 300));
    assert_eq!(frame_of(&img), 7);
    assert_eq!(
        img.get_pixel(5, 5).0,
        [0, 0, 255, 255],
        "odd frame: blue square"
    );

    let (jpeg, response) = still(
        &service,
        &still_payload("Stills", "jpeg", json!({"frame": 4, "jpegQuality": 90})),
    );
    assert!(
        response["cloudStorageUri"]
            .as_str()
            .unwrap()
            .ends_with("/out.jpeg")
    );
    let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .unwrap()
        .to_rgba8();
    assert_eq!((img.dimensions(), frame_of(&img)), ((400, 300), 4));

    let (webp, _) = still(
        &service,
        &still_payload("Stills", "webp", json!({"frame": -1})),
    );
    let img = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP)
        .unwrap()
        .to_rgba8();
    assert_eq!(
        (img.dimensions(), frame_of(&img)),
        ((400, 300), 29),
        "frame -1 is the last"
    );

    let (pdf, response) = still(
        &service,
        &still_payload("Stills", "pdf", json!({"frame": 12, "outName": "page.pdf"})),
    );
    assert!(
        response["cloudStorageUri"]
            .as_str()
            .unwrap()
            .ends_with("/page.pdf")
    );
    assert!(pdf.starts_with(b"%PDF"));
    let dir = tempfile::tempdir().unwrap();
    let pdf_path = dir.path().join("s.pdf");
    std::fs::write(&pdf_path, &pdf).unwrap();
    let status = Command::new("pdftoppm")
        .args(["-r", "96", "-png", "-singlefile"])
        .arg(&pdf_path)
        .arg(dir.path().join("page"))
        .status()
        .unwrap();
    assert!(status.success());
    let page = image::open(dir.path().join("page.png")).unwrap().to_rgba8();
    assert_eq!(
        page.dimensions(),
        (400, 300),
        "the PDF page is the composition's size"
    );
    assert_eq!(frame_of(&page), 12);

    let (scaled, _) = still(
        &service,
        &still_payload("Stills", "png", json!({"frame": 3, "scale": 2})),
    );
    let img = image::load_from_memory(&scaled).unwrap().to_rgba8();
    assert_eq!((img.dimensions(), frame_of(&img)), ((800, 600), 3));
}

#[test]
fn transparent_stills_keep_their_alpha() {
    let service = Service::start(&[]);
    for format in ["png", "webp"] {
        let (bytes, _) = still(
            &service,
            &still_payload("FramesAlpha", format, json!({"frame": 9})),
        );
        let img = image::load_from_memory(&bytes).unwrap().to_rgba8();
        assert_eq!(frame_of(&img), 9, "{format}");
        assert_eq!(
            img.get_pixel(100, 150).0[3],
            0,
            "{format}: the bottom half is transparent"
        );
        let corner = img.get_pixel(300, 160).0;
        assert!(
            (corner[3] as i32 - 128).abs() < 10,
            "{format}: half-opaque red square, got {corner:?}"
        );
    }
}

#[test]
fn still_errors_come_back_as_error_objects() {
    let service = Service::start(&[]);
    let read = post_like_client(
        &service.url,
        &still_payload("Stills", "png", json!({"frame": 30})),
    );
    let e = read.error.expect("frame out of range");
    assert!(e["message"].as_str().unwrap().contains("frame 30"), "{e}");

    let read = post_like_client(&service.url, &still_payload("Stills", "gif", json!({})));
    assert!(
        read.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("imageFormat")
    );

    let read = post_like_client(
        &service.url,
        &still_payload(
            "Throws",
            "png",
            json!({"frame": 5, "renderIdOverride": "stillfail1"}),
        ),
    );
    let error = read.error.expect("the page's exception");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fixture exploded at frame 5"),
        "{error}"
    );
    // A failed still leaves error.txt where its output would have been, and no output.
    let txt: Value = serde_json::from_slice(
        &std::fs::read(service.object("stills", "renders/stillfail1/error.txt"))
            .expect("error.txt"),
    )
    .unwrap();
    assert_eq!(
        txt,
        json!({"name": error["name"], "message": error["message"], "stack": error["stack"], "type": "renderer"})
    );
    assert!(
        !service
            .object("stills", "renders/stillfail1/out.png")
            .exists()
    );
}
