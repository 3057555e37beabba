//! The OffthreadVideo frame server: `GET /proxy?src=&time=&transparent=&toneMapped=` on the
//! render's loopback port answers the video frame at that time as an image.
//!
//! Pages render `<OffthreadVideo>` as an `<img>` pointing here. Renders ask for increasing
//! times, so each source keeps its decoder open and decodes forward; it only seeks when
//! asked to go back or far ahead. Answers are cached up to `offthreadVideoCacheSizeInBytes`.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ffmpeg_next as ff;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::fetch::Fetcher;

/// Default budget of the answer cache.
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// Decoding further than this instead of seeking costs more than the seek.
const MAX_FORWARD_DECODE_SECONDS: f64 = 2.0;

#[derive(Debug, Deserialize)]
pub struct ProxyQuery {
    src: Option<String>,
    time: Option<String>,
    transparent: Option<String>,
    #[serde(rename = "toneMapped")]
    tone_mapped: Option<String>,
}

pub struct FrameServer {
    fetcher: Arc<Fetcher>,
    threads: usize,
    sources: Mutex<HashMap<String, Arc<Mutex<Option<Source>>>>>,
    cache: Mutex<AnswerCache>,
}

impl FrameServer {
    pub fn new(
        fetcher: Arc<Fetcher>,
        cache_bytes: Option<u64>,
        threads: Option<u32>,
    ) -> FrameServer {
        FrameServer {
            fetcher,
            threads: threads.map(|t| t.max(1) as usize).unwrap_or(0),
            sources: Mutex::new(HashMap::new()),
            cache: Mutex::new(AnswerCache::new(cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES))),
        }
    }

    async fn frame(&self, src: &str, time: f64, transparent: bool) -> Result<Vec<u8>, String> {
        let key = (src.to_string(), (time * 1e6).round() as i64, transparent);
        if let Some(hit) = self.cache.lock().await.get(&key) {
            return Ok(hit);
        }
        let path = self.fetcher.get(src).await.map_err(|e| e.to_string())?;
        let slot = self
            .sources
            .lock()
            .await
            .entry(src.to_string())
            .or_default()
            .clone();
        let threads = self.threads;
        let mut guard = slot.lock_owned().await;
        let (image, opened) = tokio::task::spawn_blocking(move || {
            let mut opened = None;
            if guard.is_none() {
                let source = Source::open(path, threads)?;
                opened = Some(source.decoder.threading().count);
                *guard = Some(source);
            }
            let source = guard.as_mut().expect("just opened");
            Ok::<_, String>((source.image_at(time, transparent)?, opened))
        })
        .await
        .map_err(|e| format!("the decode task failed: {e}"))??;
        let mut cache = self.cache.lock().await;
        if let Some(decoder_threads) = opened {
            // What libav really got (0 asks it to choose), and the payload's cache budget.
            tracing::info!(
                decoder_threads,
                cache_budget_bytes = cache.budget,
                "OffthreadVideo source opened"
            );
        }
        cache.put(key, image.clone());
        Ok(image)
    }
}

/// `/proxy` on the render's loopback server.
pub async fn proxy(
    State(server): State<Arc<FrameServer>>,
    Query(q): Query<ProxyQuery>,
) -> Response {
    let (Some(src), Some(time), Some(_)) = (q.src, q.time, q.tone_mapped) else {
        return error_response("src, time and toneMapped are required".into());
    };
    let Ok(time) = time.parse::<f64>() else {
        return error_response(format!("time must be a number, got {time}"));
    };
    let transparent = match q.transparent.as_deref() {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => {
            return error_response(format!("transparent must be true or false, got {other}"));
        }
    };
    match server.frame(&src, time.max(0.0), transparent).await {
        Ok(bytes) => {
            let mut headers = cors_headers();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if transparent {
                    "image/png"
                } else {
                    "image/bmp"
                }),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-store, must-revalidate"),
            );
            (StatusCode::OK, headers, bytes).into_response()
        }
        Err(e) => error_response(e),
    }
}

/// Preflights, including Chrome's Private Network Access ones from https pages.
pub async fn preflight(request_headers: HeaderMap) -> Response {
    let mut headers = cors_headers();
    if request_headers.contains_key("access-control-request-private-network") {
        headers.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, OPTIONS"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("*"),
    );
    (StatusCode::OK, headers).into_response()
}

fn cors_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h
}

fn error_response(message: String) -> Response {
    tracing::warn!("OffthreadVideo frame request failed: {message}");
    let body = serde_json::json!({ "error": message }).to_string();
    let mut headers = cors_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::INTERNAL_SERVER_ERROR, headers, body).into_response()
}

type CacheKey = (String, i64, bool);

/// Least-recently-inserted eviction within a byte budget; renders walk forward in time, so
/// the oldest answers are the ones never asked for again.
struct AnswerCache {
    budget: u64,
    used: u64,
    order: VecDeque<CacheKey>,
    map: HashMap<CacheKey, Vec<u8>>,
}

impl AnswerCache {
    fn new(budget: u64) -> AnswerCache {
        AnswerCache {
            budget,
            used: 0,
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: CacheKey, value: Vec<u8>) {
        let size = value.len() as u64;
        if size > self.budget || self.map.contains_key(&key) {
            return;
        }
        while self.used + size > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.used -= v.len() as u64;
            }
        }
        self.used += size;
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }
}

/// An open video with its decoder, positioned after the last frame it returned.
struct Source {
    input: ff::format::context::Input,
    decoder: ff::decoder::Video,
    stream: usize,
    time_base: f64,
    /// The last decoded frame and its time, which serves requests until the next frame's time.
    current: Option<(f64, ff::frame::Video)>,
    pending: Option<(f64, ff::frame::Video)>,
    eof: bool,
}

// SAFETY: libav contexts are owned by this value alone and used by one thread at a time
// (the per-source mutex); libav does not tie them to the thread that created them.
unsafe impl Send for Source {}

impl Source {
    fn open(path: PathBuf, threads: usize) -> Result<Source, String> {
        crate::libav::init();
        let input = ff::format::input(&path).map_err(|e| format!("cannot open the video: {e}"))?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| "the source has no video stream".to_string())?;
        let index = stream.index();
        let tb = stream.time_base();
        let mut context = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| e.to_string())?;
        context.set_threading(ff::codec::threading::Config {
            kind: ff::codec::threading::Type::Frame,
            count: threads,
            ..Default::default()
        });
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| format!("cannot decode the video: {e}"))?;
        Ok(Source {
            input,
            decoder,
            stream: index,
            time_base: tb.numerator() as f64 / tb.denominator() as f64,
            current: None,
            pending: None,
            eof: false,
        })
    }

    fn seek(&mut self, time: f64) -> Result<(), String> {
        let ts = (time * ff::ffi::AV_TIME_BASE as f64) as i64;
        self.input
            .seek(ts, ..ts + 1)
            .map_err(|e| format!("seek failed: {e}"))?;
        self.decoder.flush();
        self.current = None;
        self.pending = None;
        self.eof = false;
        Ok(())
    }

    /// The next decoded frame and its presentation time, or `None` at the end.
    fn next_frame(&mut self) -> Result<Option<(f64, ff::frame::Video)>, String> {
        loop {
            let mut frame = ff::frame::Video::empty();
            if self.decoder.receive_frame(&mut frame).is_ok() {
                let pts = frame.timestamp().or(frame.pts()).unwrap_or(0);
                return Ok(Some((pts as f64 * self.time_base, frame)));
            }
            if self.eof {
                return Ok(None);
            }
            let mut sent = false;
            for (s, packet) in self.input.packets() {
                if s.index() == self.stream {
                    let _ = self.decoder.send_packet(&packet);
                    sent = true;
                    break;
                }
            }
            if !sent {
                self.eof = true;
                let _ = self.decoder.send_eof();
            }
        }
    }

    /// The frame on screen at `time`: the last one whose time is not after it.
    fn frame_at(&mut self, time: f64) -> Result<&ff::frame::Video, String> {
        let behind = self.current.as_ref().is_some_and(|(t, _)| *t > time + 1e-6);
        let far = self
            .current
            .as_ref()
            .is_none_or(|(t, _)| time - *t > MAX_FORWARD_DECODE_SECONDS);
        if behind || (far && self.pending.is_none()) {
            self.seek(time)?;
        }
        loop {
            let next = match self.pending.take() {
                Some(p) => Some(p),
                None => self.next_frame()?,
            };
            match next {
                Some((t, frame)) if t <= time + 1e-6 || self.current.is_none() => {
                    self.current = Some((t, frame));
                }
                Some(later) => {
                    self.pending = Some(later);
                    break;
                }
                None => break,
            }
        }
        self.current
            .as_ref()
            .map(|(_, f)| f)
            .ok_or_else(|| "the video has no frame at that time".to_string())
    }

    fn image_at(&mut self, time: f64, transparent: bool) -> Result<Vec<u8>, String> {
        let frame = self.frame_at(time)?;
        let (w, h) = (frame.width(), frame.height());
        let target = if transparent {
            ff::format::Pixel::RGBA
        } else {
            ff::format::Pixel::RGB24
        };
        let mut scaler = ff::software::scaling::Context::get(
            frame.format(),
            w,
            h,
            target,
            w,
            h,
            ff::software::scaling::Flags::BILINEAR,
        )
        .map_err(|e| e.to_string())?;
        let mut rgb = ff::frame::Video::empty();
        scaler.run(frame, &mut rgb).map_err(|e| e.to_string())?;
        let bpp = if transparent { 4 } else { 3 };
        let stride = rgb.stride(0);
        let mut packed = Vec::with_capacity((w * h) as usize * bpp);
        for y in 0..h as usize {
            packed.extend_from_slice(&rgb.data(0)[y * stride..y * stride + w as usize * bpp]);
        }
        let mut out = Cursor::new(Vec::new());
        if transparent {
            image::RgbaImage::from_raw(w, h, packed)
                .expect("sized")
                .write_to(&mut out, image::ImageFormat::Png)
        } else {
            image::RgbImage::from_raw(w, h, packed)
                .expect("sized")
                .write_to(&mut out, image::ImageFormat::Bmp)
        }
        .map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_within_its_budget() {
        let mut c = AnswerCache::new(10);
        c.put(("a".into(), 0, false), vec![0; 4]);
        c.put(("a".into(), 1, false), vec![0; 4]);
        c.put(("a".into(), 2, false), vec![0; 4]);
        assert!(c.get(&("a".into(), 0, false)).is_none(), "the oldest went");
        assert!(c.get(&("a".into(), 2, false)).is_some());
        assert!(c.used <= 10);
        c.put(("b".into(), 0, false), vec![0; 11]);
        assert!(c.get(&("b".into(), 0, false)).is_none(), "too big to keep");
    }
}
