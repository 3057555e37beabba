//! Screenshots → frames in the encoder's pixel format.
//!
//! This runs on the decode tasks, many frames at once, so the encoder thread only encodes:
//! swscale is single-threaded per context, and at 1080p decode + convert cost a tenth of what
//! x264 spends on a frame. Each task borrows a workspace (decoders, buffer, converter) from a
//! small pool, so buffers and contexts are reused instead of rebuilt per frame; the pool never
//! holds more workspaces than there were frames in flight at once.
//!
//! JPEGs bound for a YUV encoder in the default colour space are decoded by libav's mjpeg
//! decoder, whose output already is (full-range BT.601) YUV: swscale then only rescales the
//! range, which is what the renderer's ffmpeg does with the same screenshots, pixel for pixel,
//! and half the work of going through RGB. Everything else (PNG, gif, another colour matrix)
//! is decoded to packed RGB(A) by zune-jpeg or png, and converted from there.

use std::io::Cursor;
use std::ptr;
use std::sync::Mutex;

use ff::format::Pixel;
use ffmpeg_next as ff;
use image::ImageDecoder;
use libc::c_int;

use super::filter::VideoFilter;
use super::settings::VideoSettings;
use super::{EncodeError, init, libav};
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

    /// Plane `index` (Y, U, V, A), [`PreparedFrame::stride`] bytes a row.
    pub fn plane(&self, index: usize) -> &[u8] {
        self.0.data(index)
    }

    pub fn stride(&self, index: usize) -> usize {
        self.0.stride(index)
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
    mjpeg: Option<Mjpeg>,
    converter: Option<Converter>,
}

/// What a converter reads: packed pixels in a buffer, or a decoded libav frame.
#[derive(Clone, Copy)]
enum Source<'a> {
    Packed(Packed<'a>),
    Frame(&'a ff::frame::Video),
}

impl Source<'_> {
    fn key(&self) -> (Pixel, u32, u32) {
        match self {
            Source::Packed(p) => (p.pixel, p.width, p.height),
            Source::Frame(f) => (f.format(), f.width(), f.height()),
        }
    }

    /// Whether a source format is full range. JPEG's YUV comes as the `yuvj` formats, which
    /// are deprecated, but swscale picks its range conversion from them when the context is
    /// made: telling it later would leave the plain copy it chose for yuv → yuv in place.
    fn full_range(pixel: Pixel) -> bool {
        matches!(
            pixel,
            Pixel::YUVJ420P
                | Pixel::YUVJ422P
                | Pixel::YUVJ444P
                | Pixel::YUVJ440P
                | Pixel::RGB24
                | Pixel::RGBA
        )
    }

    /// Plane pointers and strides, as swscale reads them.
    fn planes(&self) -> ([*const u8; 4], [c_int; 4]) {
        match self {
            Source::Packed(p) => {
                let bpp = if p.pixel == Pixel::RGBA { 4 } else { 3 };
                let stride = p.width as usize * bpp;
                assert!(p.data.len() >= stride * p.height as usize);
                let null = ptr::null();
                (
                    [p.data.as_ptr(), null, null, null],
                    [stride as c_int, 0, 0, 0],
                )
            }
            Source::Frame(f) => {
                // SAFETY: reading the plane table of a frame we borrow.
                let raw = unsafe { &*f.as_ptr() };
                let mut data = [ptr::null(); 4];
                let mut stride = [0; 4];
                for i in 0..4 {
                    data[i] = raw.data[i] as *const u8;
                    stride[i] = raw.linesize[i];
                }
                (data, stride)
            }
        }
    }
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
        init();
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
            if self.jpeg_as_yuv() && image.starts_with(&[0xff, 0xd8]) {
                let mjpeg = match &mut ws.mjpeg {
                    Some(m) => m,
                    empty => empty.insert(Mjpeg::new()?),
                };
                let frame = mjpeg.decode(image)?;
                return self.convert(&mut ws.converter, Source::Frame(frame));
            }
            let (width, height, pixel) = decode_into(image, &mut ws.pixels)?;
            let packed = Packed {
                data: &ws.pixels,
                width,
                height,
                pixel,
            };
            self.convert(&mut ws.converter, Source::Packed(packed))
        })
    }

    fn jpeg_as_yuv(&self) -> bool {
        self.color == ColorSpace::Default && !matches!(self.pixel, Pixel::RGB24 | Pixel::RGBA)
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
        self.with_workspace(|ws| self.convert(&mut ws.converter, Source::Packed(packed)))
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
        src: Source<'_>,
    ) -> Result<PreparedFrame, EncodeError> {
        let fits = converter.as_ref().is_some_and(|c| c.input() == src.key());
        if !fits {
            *converter = Some(self.converter_for(src.key())?);
        }
        let frame = match converter.as_mut().expect("converter was just set") {
            Converter::Scale(s) => s.run(&src, self.pixel, self.width, self.height)?,
            Converter::Zimg(z) => z.run(&src)?,
        };
        Ok(PreparedFrame(frame))
    }

    fn converter_for(&self, src: (Pixel, u32, u32)) -> Result<Converter, EncodeError> {
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
/// libav's JPEG decoder, single-threaded: the decode tasks are the parallelism.
struct Mjpeg {
    decoder: ff::decoder::Video,
    frame: ff::frame::Video,
}

impl Mjpeg {
    fn new() -> Result<Mjpeg, EncodeError> {
        let codec = ff::decoder::find(ff::codec::Id::MJPEG)
            .ok_or_else(|| EncodeError::MissingEncoder("mjpeg (decoder)".into()))?;
        let decoder = ff::codec::context::Context::new_with_codec(codec)
            .decoder()
            .video()
            .map_err(libav("opening the JPEG decoder"))?;
        Ok(Mjpeg {
            decoder,
            frame: ff::frame::Video::empty(),
        })
    }

    fn decode(&mut self, image: &[u8]) -> Result<&ff::frame::Video, EncodeError> {
        // A copy, because the decoder reads past the end into the padding a packet has.
        let packet = ff::Packet::copy(image);
        self.decoder
            .send_packet(&packet)
            .map_err(|e| EncodeError::Decode(format!("JPEG: {e}")))?;
        self.decoder
            .receive_frame(&mut self.frame)
            .map_err(|e| EncodeError::Decode(format!("JPEG: {e}")))?;
        Ok(&self.frame)
    }
}

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
        src: (Pixel, u32, u32),
        pixel: Pixel,
        width: u32,
        height: u32,
        color: ColorSpace,
    ) -> Result<Scaler, EncodeError> {
        let mut ctx = ff::software::scaling::Context::get(
            src.0,
            src.1,
            src.2,
            pixel,
            width,
            height,
            ff::software::scaling::Flags::BILINEAR,
        )
        .map_err(libav("creating the pixel converter"))?;
        // The default is BT.601, what the renderer's ffmpeg writes; an asked-for colour space
        // gets its own matrix. YUV output is limited range. JPEG's YUV is BT.601.
        let matrix = match color {
            ColorSpace::Default => ff::ffi::SWS_CS_DEFAULT as c_int,
            ColorSpace::Bt709 => ff::ffi::AVColorSpace::AVCOL_SPC_BT709 as c_int,
            ColorSpace::Bt2020Ncl | ColorSpace::Bt2020Cl => {
                ff::ffi::AVColorSpace::AVCOL_SPC_BT2020_NCL as c_int
            }
        };
        let dst_full_range = matches!(pixel, Pixel::RGB24 | Pixel::RGBA);
        // SAFETY: the context is valid; sws_getCoefficients returns static tables.
        let status = unsafe {
            ff::ffi::sws_setColorspaceDetails(
                ctx.as_mut_ptr(),
                ff::ffi::sws_getCoefficients(ff::ffi::SWS_CS_DEFAULT as c_int),
                Source::full_range(src.0) as c_int,
                ff::ffi::sws_getCoefficients(matrix),
                dst_full_range as c_int,
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
        Ok(Scaler { ctx, input: src })
    }

    /// Converts straight from the decode buffer or frame: no intermediate copy.
    fn run(
        &mut self,
        src: &Source<'_>,
        pixel: Pixel,
        width: u32,
        height: u32,
    ) -> Result<ff::frame::Video, EncodeError> {
        let (src_data, src_stride) = src.planes();
        let mut out = ff::frame::Video::new(pixel, width, height);
        // SAFETY: the planes describe a whole image of the context's input format and size
        // (`Source::planes` checks packed buffers); the output frame was allocated for the
        // context's output format and size.
        let rows = unsafe {
            let dst = out.as_mut_ptr();
            ff::ffi::sws_scale(
                self.ctx.as_mut_ptr(),
                src_data.as_ptr(),
                src_stride.as_ptr(),
                0,
                self.input.2 as c_int,
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
    filter: VideoFilter,
    input: (Pixel, u32, u32),
}

impl Zimg {
    fn new(
        src: (Pixel, u32, u32),
        pixel: Pixel,
        width: u32,
        height: u32,
    ) -> Result<Zimg, EncodeError> {
        ff::filter::find("zscale").ok_or_else(|| EncodeError::MissingEncoder("zscale".into()))?;
        // The CL matrix works on linear light, so zimg needs the transfer; BT.709's and
        // BT.2020's curves are the same, so this converts the matrix and range only.
        let spec = format!(
            "zscale=w={width}:h={height}:matrix=2020_cl:transfer=2020_10:tin=709:rangein=full:range=limited"
        );
        let filter = VideoFilter::new(
            src,
            ff::Rational::new(1, 1),
            pixel,
            &spec,
            "converting with zscale",
        )?;
        Ok(Zimg { filter, input: src })
    }

    fn run(&mut self, src: &Source<'_>) -> Result<ff::frame::Video, EncodeError> {
        let copied;
        let input = match src {
            Source::Frame(f) => *f,
            Source::Packed(p) => {
                let mut frame = ff::frame::Video::new(p.pixel, p.width, p.height);
                copy_packed(p, &mut frame);
                copied = frame;
                &copied
            }
        };
        self.filter.push(Some(input))?;
        let mut out = ff::frame::Video::empty();
        if !self.filter.pull(&mut out)? {
            return Err(EncodeError::Decode("zscale kept the frame".into()));
        }
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
