//! Screenshots → frames in the encoder's pixel format.
//!
//! This runs on the decode tasks, many frames at once, so the encoder thread only encodes:
//! swscale is single-threaded per context, and at 1080p decode + convert cost about a third of
//! what x264 spends on a frame. Each task borrows a workspace (decode buffer + converter) from
//! a small pool, so buffers and swscale contexts are reused instead of rebuilt per frame; the
//! pool never holds more workspaces than there were frames in flight at once.

use std::io::Cursor;
use std::ptr;
use std::sync::Mutex;

use ff::format::Pixel;
use ffmpeg_next as ff;
use image::ImageDecoder;
use libc::c_int;

use super::settings::VideoSettings;
use super::{EncodeError, libav};
use crate::options::ColorSpace;

/// A frame ready for [`super::VideoEncoder::push`].
pub struct PreparedFrame(pub(crate) ff::frame::Video);

impl PreparedFrame {
    pub fn width(&self) -> u32 {
        self.0.width()
    }

    pub fn height(&self) -> u32 {
        self.0.height()
    }
}

/// Decodes screenshots and converts them for one render's encoder. Shared by the decode tasks.
pub struct FramePreparer {
    width: u32,
    height: u32,
    pixel: Pixel,
    color: ColorSpace,
    spare: Mutex<Vec<Workspace>>,
}

#[derive(Default)]
struct Workspace {
    pixels: Vec<u8>,
    converter: Option<Converter>,
}

/// Packed 8-bit RGB or RGBA pixels, rows without padding.
#[derive(Clone, Copy)]
struct Packed<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    pixel: Pixel,
}

impl FramePreparer {
    pub fn new(settings: &VideoSettings) -> FramePreparer {
        FramePreparer {
            width: settings.width,
            height: settings.height,
            pixel: settings.prepared_pixel(),
            color: settings.color_space,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Decodes a JPEG or PNG screenshot and converts it.
    pub fn prepare(&self, image: &[u8]) -> Result<PreparedFrame, EncodeError> {
        self.with_workspace(|ws| {
            let (width, height, pixel) = decode_into(image, &mut ws.pixels)?;
            let packed = Packed {
                data: &ws.pixels,
                width,
                height,
                pixel,
            };
            self.convert(&mut ws.converter, packed)
        })
    }

    /// Converts raw packed RGB (`alpha == false`) or RGBA pixels.
    pub fn prepare_raw(
        &self,
        pixels: &[u8],
        width: u32,
        height: u32,
        alpha: bool,
    ) -> Result<PreparedFrame, EncodeError> {
        let (pixel, bpp) = if alpha {
            (Pixel::RGBA, 4)
        } else {
            (Pixel::RGB24, 3)
        };
        if pixels.len() != width as usize * height as usize * bpp {
            return Err(EncodeError::Decode(format!(
                "{} bytes are not a {width}x{height} {pixel:?} image",
                pixels.len()
            )));
        }
        let packed = Packed {
            data: pixels,
            width,
            height,
            pixel,
        };
        self.with_workspace(|ws| self.convert(&mut ws.converter, packed))
    }

    fn with_workspace<T>(&self, f: impl FnOnce(&mut Workspace) -> T) -> T {
        let taken = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ws = taken.unwrap_or_default();
        let result = f(&mut ws);
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ws);
        result
    }

    fn convert(
        &self,
        converter: &mut Option<Converter>,
        src: Packed<'_>,
    ) -> Result<PreparedFrame, EncodeError> {
        let fits = converter
            .as_ref()
            .is_some_and(|c| c.input() == (src.pixel, src.width, src.height));
        if !fits {
            *converter = Some(self.converter_for(&src)?);
        }
        let frame = match converter.as_mut().expect("converter was just set") {
            Converter::Scale(s) => s.run(&src, self.pixel, self.width, self.height)?,
            Converter::Zimg(z) => z.run(&src)?,
        };
        Ok(PreparedFrame(frame))
    }

    fn converter_for(&self, src: &Packed<'_>) -> Result<Converter, EncodeError> {
        let rgb_out = matches!(self.pixel, Pixel::RGB24 | Pixel::RGBA);
        // swscale cannot do the constant-luminance BT.2020 matrix (it needs linear light);
        // zimg can.
        if self.color == ColorSpace::Bt2020Cl && !rgb_out {
            return Ok(Converter::Zimg(Zimg::new(
                src,
                self.pixel,
                self.width,
                self.height,
            )?));
        }
        let color = if rgb_out {
            ColorSpace::Default
        } else {
            self.color
        };
        Ok(Converter::Scale(Scaler::new(
            src,
            self.pixel,
            self.width,
            self.height,
            color,
        )?))
    }
}

/// Decodes into `buf` (resized, reused), returning the size and packed pixel format.
fn decode_into(image: &[u8], buf: &mut Vec<u8>) -> Result<(u32, u32, Pixel), EncodeError> {
    let err = |e: String| EncodeError::Decode(e);
    match image::guess_format(image).map_err(|e| err(e.to_string()))? {
        image::ImageFormat::Jpeg => {
            use zune_core::bytestream::ZCursor;
            use zune_core::colorspace::ColorSpace as Zc;
            let options = zune_core::options::DecoderOptions::default()
                .set_strict_mode(false)
                .set_max_width(1 << 16)
                .set_max_height(1 << 16)
                .jpeg_set_out_colorspace(Zc::RGB);
            let mut decoder =
                zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(image), options);
            decoder
                .decode_headers()
                .map_err(|e| err(format!("{e:?}")))?;
            let (w, h) = decoder.dimensions().expect("headers were decoded");
            buf.resize(w * h * 3, 0);
            decoder
                .decode_into(buf)
                .map_err(|e| err(format!("{e:?}")))?;
            Ok((w as u32, h as u32, Pixel::RGB24))
        }
        image::ImageFormat::Png => {
            let decoder = image::codecs::png::PngDecoder::new(Cursor::new(image))
                .map_err(|e| err(e.to_string()))?;
            let (w, h) = decoder.dimensions();
            let pixel = match decoder.color_type() {
                image::ColorType::Rgb8 => Pixel::RGB24,
                image::ColorType::Rgba8 => Pixel::RGBA,
                _ => {
                    // Grey or 16-bit PNGs: not what Chromium writes, but still pictures.
                    let rgba = image::DynamicImage::from_decoder(decoder)
                        .map_err(|e| err(e.to_string()))?
                        .into_rgba8();
                    buf.clear();
                    buf.extend_from_slice(rgba.as_raw());
                    return Ok((w, h, Pixel::RGBA));
                }
            };
            buf.resize(decoder.total_bytes() as usize, 0);
            decoder.read_image(buf).map_err(|e| err(e.to_string()))?;
            Ok((w, h, pixel))
        }
        other => Err(err(format!("{other:?} frames are not supported"))),
    }
}

enum Converter {
    Scale(Scaler),
    Zimg(Zimg),
}

impl Converter {
    fn input(&self) -> (Pixel, u32, u32) {
        match self {
            Converter::Scale(s) => s.input,
            Converter::Zimg(z) => z.input,
        }
    }
}

struct Scaler {
    ctx: ff::software::scaling::Context,
    input: (Pixel, u32, u32),
}

// SAFETY: a swscale context is plain memory owned by this value; it is only used by the one
// task that currently holds its workspace.
unsafe impl Send for Scaler {}

impl Scaler {
    fn new(
        src: &Packed<'_>,
        pixel: Pixel,
        width: u32,
        height: u32,
        color: ColorSpace,
    ) -> Result<Scaler, EncodeError> {
        let mut ctx = ff::software::scaling::Context::get(
            src.pixel,
            src.width,
            src.height,
            pixel,
            width,
            height,
            ff::software::scaling::Flags::BILINEAR,
        )
        .map_err(libav("creating the pixel converter"))?;
        // Without this swscale writes BT.601 (what the renderer's ffmpeg writes by default);
        // an asked-for colour space gets its own matrix, into limited range.
        let matrix = match color {
            ColorSpace::Default => None,
            ColorSpace::Bt709 => Some(ff::ffi::AVColorSpace::AVCOL_SPC_BT709),
            ColorSpace::Bt2020Ncl | ColorSpace::Bt2020Cl => {
                Some(ff::ffi::AVColorSpace::AVCOL_SPC_BT2020_NCL)
            }
        };
        if let Some(matrix) = matrix {
            // SAFETY: the context is valid; sws_getCoefficients returns static tables.
            let status = unsafe {
                let rgb = ff::ffi::sws_getCoefficients(ff::ffi::SWS_CS_DEFAULT as c_int);
                let table = ff::ffi::sws_getCoefficients(matrix as c_int);
                ff::ffi::sws_setColorspaceDetails(
                    ctx.as_mut_ptr(),
                    rgb,
                    1,
                    table,
                    0,
                    0,
                    1 << 16,
                    1 << 16,
                )
            };
            if status < 0 {
                return Err(EncodeError::Libav {
                    during: "setting the colour matrix",
                    source: ff::Error::from(status),
                });
            }
        }
        Ok(Scaler {
            ctx,
            input: (src.pixel, src.width, src.height),
        })
    }

    /// Converts straight from the decode buffer: no intermediate frame, no copy.
    fn run(
        &mut self,
        src: &Packed<'_>,
        pixel: Pixel,
        width: u32,
        height: u32,
    ) -> Result<ff::frame::Video, EncodeError> {
        let bpp = if src.pixel == Pixel::RGBA { 4 } else { 3 };
        let stride = src.width as usize * bpp;
        assert!(src.data.len() >= stride * src.height as usize);
        let mut out = ff::frame::Video::new(pixel, width, height);
        let src_data: [*const u8; 4] = [src.data.as_ptr(), ptr::null(), ptr::null(), ptr::null()];
        let src_stride: [c_int; 4] = [stride as c_int, 0, 0, 0];
        // SAFETY: the source holds `height` rows of `stride` bytes (asserted above); the
        // output frame was allocated for the context's output format and size.
        let rows = unsafe {
            let dst = out.as_mut_ptr();
            ff::ffi::sws_scale(
                self.ctx.as_mut_ptr(),
                src_data.as_ptr(),
                src_stride.as_ptr(),
                0,
                src.height as c_int,
                (*dst).data.as_ptr(),
                (*dst).linesize.as_ptr(),
            )
        };
        if rows <= 0 {
            return Err(EncodeError::Libav {
                during: "converting pixels",
                source: ff::Error::from(rows.min(-1)),
            });
        }
        Ok(out)
    }
}

/// zimg (libavfilter's `zscale`) for the constant-luminance BT.2020 matrix.
struct Zimg {
    graph: ff::filter::Graph,
    input: (Pixel, u32, u32),
}

impl Zimg {
    fn new(src: &Packed<'_>, pixel: Pixel, width: u32, height: u32) -> Result<Zimg, EncodeError> {
        let failed = libav("building the zscale filter");
        let find = |name: &str| {
            ff::filter::find(name).ok_or_else(|| EncodeError::MissingEncoder(name.into()))
        };
        let mut graph = ff::filter::Graph::new();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base=1/1:pixel_aspect=1/1",
            src.width,
            src.height,
            ff::ffi::AVPixelFormat::from(src.pixel) as c_int
        );
        graph.add(&find("buffer")?, "in", &args).map_err(&failed)?;
        let mut sink = graph
            .add(&find("buffersink")?, "out", "")
            .map_err(&failed)?;
        sink.set_pixel_format(pixel);
        find("zscale")?;
        // The CL matrix works on linear light, so zimg needs the transfer; BT.709's and
        // BT.2020's curves are the same, so this converts the matrix and range only.
        let spec = format!(
            "zscale=w={width}:h={height}:matrix=2020_cl:transfer=2020_10:tin=709:rangein=full:range=limited"
        );
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(&failed)?;
        graph.validate().map_err(failed)?;
        Ok(Zimg {
            graph,
            input: (src.pixel, src.width, src.height),
        })
    }

    fn run(&mut self, src: &Packed<'_>) -> Result<ff::frame::Video, EncodeError> {
        let mut input = ff::frame::Video::new(src.pixel, src.width, src.height);
        copy_packed(src, &mut input);
        self.graph
            .get("in")
            .expect("the graph has an input")
            .source()
            .add(&input)
            .map_err(libav("feeding the zscale filter"))?;
        let mut out = ff::frame::Video::empty();
        self.graph
            .get("out")
            .expect("the graph has an output")
            .sink()
            .frame(&mut out)
            .map_err(libav("reading the zscale filter"))?;
        Ok(out)
    }
}

/// Copies packed rows into a frame whose rows may be padded.
fn copy_packed(src: &Packed<'_>, frame: &mut ff::frame::Video) {
    let bpp = if src.pixel == Pixel::RGBA { 4 } else { 3 };
    let row = src.width as usize * bpp;
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    for (y, line) in src
        .data
        .chunks_exact(row)
        .take(src.height as usize)
        .enumerate()
    {
        data[y * stride..y * stride + row].copy_from_slice(line);
    }
}
