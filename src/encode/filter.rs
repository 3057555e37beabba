//! libavfilter graphs with one video input and one output, for what swscale cannot do: the
//! gif palette and zimg's constant-luminance matrix.

use ff::format::Pixel;
use ffmpeg_next as ff;

use super::{EncodeError, libav};

pub(crate) struct VideoFilter {
    graph: ff::filter::Graph,
    during: &'static str,
}

// SAFETY: the graph is owned by this value and used by one thread at a time.
unsafe impl Send for VideoFilter {}

impl VideoFilter {
    /// `spec` is a filter chain from `[in]` frames of `input` (format, width, height) to
    /// `[out]` frames of `output` format; `during` names the graph in errors.
    pub fn new(
        input: (Pixel, u32, u32),
        time_base: ff::Rational,
        output: Pixel,
        spec: &str,
        during: &'static str,
    ) -> Result<VideoFilter, EncodeError> {
        let failed = libav(during);
        let find = |name: &str| {
            ff::filter::find(name).ok_or_else(|| EncodeError::MissingEncoder(name.into()))
        };
        let mut graph = ff::filter::Graph::new();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect=1/1",
            input.1,
            input.2,
            ff::ffi::AVPixelFormat::from(input.0) as i32,
            time_base.numerator(),
            time_base.denominator()
        );
        graph.add(&find("buffer")?, "in", &args).map_err(&failed)?;
        let mut sink = graph
            .add(&find("buffersink")?, "out", "")
            .map_err(&failed)?;
        sink.set_pixel_format(output);
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(spec))
            .map_err(&failed)?;
        graph.validate().map_err(failed)?;
        Ok(VideoFilter { graph, during })
    }

    /// Feeds a frame, or the end of the stream.
    pub fn push(&mut self, frame: Option<&ff::frame::Video>) -> Result<(), EncodeError> {
        let mut ctx = self.graph.get("in").expect("the graph has an input");
        let mut source = ctx.source();
        match frame {
            Some(f) => source.add(f),
            None => source.flush(),
        }
        .map_err(libav(self.during))
    }

    /// The next filtered frame, if one is ready.
    pub fn pull(&mut self, out: &mut ff::frame::Video) -> Result<bool, EncodeError> {
        let mut ctx = self.graph.get("out").expect("the graph has an output");
        match ctx.sink().frame(out) {
            Ok(()) => Ok(true),
            Err(ff::Error::Eof) => Ok(false),
            Err(ff::Error::Other { errno }) if errno == libc::EAGAIN => Ok(false),
            Err(e) => Err(EncodeError::Libav {
                during: self.during,
                source: e,
            }),
        }
    }
}
