//! The one initialisation of libav, for every module that calls it (`encode`, `audio`,
//! `offthread`): registration once per process, and libav's own logging down to errors.

use std::sync::Once;

use ffmpeg_next as ff;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        ff::init().expect("libav initialises");
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}
