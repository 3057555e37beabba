//! Logs: JSON lines Cloud Logging understands, or plain text in a terminal.
//!
//! Cloud Logging reads `severity`, `message` and `logging.googleapis.com/trace` from each
//! line a container prints. The trace id comes from the `X-Cloud-Trace-Context` header of the
//! request the log line belongs to: the request span records it as `trace_id`.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The project the trace ids belong to (Cloud Run sets it in the environment of most
/// runtimes; operators can set it explicitly).
const PROJECT_ENVS: &[&str] = &["GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GCP_PROJECT"];

pub fn init() {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,chromiumoxide=off,tungstenite=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        let project = PROJECT_ENVS
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        builder
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging { project })
            .init();
    }
}

/// Extracts the trace id from `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`.
pub fn trace_id_from_header(value: &str) -> Option<String> {
    let id = value.split('/').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

struct CloudLogging {
    project: Option<String>,
}

#[derive(Default)]
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("severity".into(), severity(meta.level()).into());
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or(Value::from(""));
        line.insert("message".into(), message);
        line.insert("target".into(), meta.target().into());
        // Span fields (outermost first, inner ones win), e.g. render_id and trace_id.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted)
                {
                    for (k, v) in map {
                        fields.0.insert(k, v);
                    }
                }
            }
        }
        if let Some(Value::String(trace)) = fields.0.remove("trace_id") {
            let value = match &self.project {
                Some(p) => format!("projects/{p}/traces/{trace}"),
                None => trace,
            };
            line.insert("logging.googleapis.com/trace".into(), value.into());
        }
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn trace_context_header() {
        assert_eq!(
            trace_id_from_header("105445aa7843bc8bf206b12000100000/1;o=1").as_deref(),
            Some("105445aa7843bc8bf206b12000100000")
        );
        assert_eq!(trace_id_from_header("nothex/1"), None);
        assert_eq!(trace_id_from_header(""), None);
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_severity_message_fields_and_trace() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging {
                project: Some("proj".into()),
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = "abc123", render_id = "r1");
            let _g = span.enter();
            tracing::warn!(frames = 3, "rendering {}", "now");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "rendering now");
        assert_eq!(line["frames"], 3);
        assert_eq!(line["render_id"], "r1");
        assert_eq!(
            line["logging.googleapis.com/trace"],
            "projects/proj/traces/abc123"
        );
    }
}
