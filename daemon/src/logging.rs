//! Log lines as etcd writes them, so that what reads etcd's logs (log shippers, `jq`
//! one-liners, alert rules on messages) reads qetcd's.
//!
//! `--log-format json` (etcd's default, and so qetcd's): one JSON object per line with
//! etcd's keys `level` (lower case), `ts` (UTC, microseconds), `caller`
//! (`dir/file.rs:line`) and `msg`, then the event's fields. `--log-format console`:
//! the same four tab-separated, then the fields as one JSON object, as etcd's console
//! encoder writes them. Lines go to every `--log-outputs` target: stderr (`default`;
//! the journal picks it up under systemd), stdout, files (appended to), or
//! `systemd/journal` through journald's native socket, with each line's priority
//! (stderr when the journal cannot take a line). `--log-level` filters; `RUST_LOG`, if
//! set, refines it per module (e.g. `RUST_LOG=info,raft=debug`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LogLevel, LogOutput};

/// journald's native protocol socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log output {path}: {source}")]
    OpenOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open a socket to systemd's journal: {0}")]
    Journal(std::io::Error),
}

/// Installs the process's log subscriber.
pub fn init(level: LogLevel, format: LogFormat, outputs: &[LogOutput]) -> Result<(), LoggingError> {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error | LogLevel::Panic | LogLevel::Fatal => "error",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let sinks = outputs
        .iter()
        .map(Sink::open)
        .collect::<Result<Vec<_>, _>>()?;
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(EtcdLines { format, sinks })
        .try_init();
    Ok(())
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<std::fs::File>),
    Journal(UnixDatagram),
}

impl Sink {
    fn open(output: &LogOutput) -> Result<Sink, LoggingError> {
        Ok(match output {
            LogOutput::Stderr => Sink::Stderr,
            LogOutput::Stdout => Sink::Stdout,
            LogOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| LoggingError::OpenOutput {
                        path: path.clone(),
                        source,
                    })?;
                Sink::File(Mutex::new(file))
            }
            LogOutput::Journal => {
                Sink::Journal(UnixDatagram::unbound().map_err(LoggingError::Journal)?)
            }
        })
    }

    /// Writes one line (ending in a newline). A log line that cannot be written has
    /// nowhere to be reported, so failures are dropped (the journal's go to stderr).
    fn write(&self, level: &Level, line: &str) {
        match self {
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            Sink::File(file) => {
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                let _ = file.write_all(line.as_bytes());
            }
            Sink::Journal(socket) => {
                let entry = journal_entry(level, line.trim_end_matches('\n'));
                if socket.send_to(&entry, JOURNAL_SOCKET).is_err() {
                    let _ = std::io::stderr().lock().write_all(line.as_bytes());
                }
            }
        }
    }
}

/// syslog priorities, as journald files them.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A journald native-protocol datagram: `MESSAGE` (length-prefixed, as the protocol
/// requires for values that may hold newlines), `PRIORITY`, `SYSLOG_IDENTIFIER`.
fn journal_entry(level: &Level, message: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(message.len() + 64);
    entry.extend_from_slice(b"MESSAGE\n");
    entry.extend_from_slice(&(message.len() as u64).to_le_bytes());
    entry.extend_from_slice(message.as_bytes());
    entry.extend_from_slice(
        format!("\nPRIORITY={}\nSYSLOG_IDENTIFIER=qetcd\n", priority(level)).as_bytes(),
    );
    entry
}

/// The layer that formats events as etcd's lines.
struct EtcdLines {
    format: LogFormat,
    sinks: Vec<Sink>,
}

impl<S: Subscriber> Layer<S> for EtcdLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = level_name(meta.level());
        let ts = timestamp(std::time::SystemTime::now());
        let caller = caller(meta.file(), meta.line());
        let line = match self.format {
            LogFormat::Json => {
                // Written by hand rather than through a JSON map, to keep etcd's order:
                // level, ts, caller, msg, then the fields as the event gave them.
                let mut line = String::with_capacity(128);
                let _ = write!(
                    line,
                    "{{\"level\":{},\"ts\":{},\"caller\":{},\"msg\":{}",
                    json_string(level),
                    json_string(&ts),
                    json_string(&caller),
                    json_string(&fields.message)
                );
                for (k, v) in &fields.fields {
                    let _ = write!(line, ",{}:{v}", json_string(k));
                }
                line.push_str("}\n");
                line
            }
            LogFormat::Console => {
                let mut line = format!("{ts}\t{level}\t{caller}\t{}", fields.message);
                if !fields.fields.is_empty() {
                    let object: serde_json::Map<String, serde_json::Value> =
                        fields.fields.into_iter().collect();
                    let _ = write!(line, "\t{}", serde_json::Value::Object(object));
                }
                line.push('\n');
                line
            }
        };
        for sink in &self.sinks {
            sink.write(meta.level(), &line);
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        _ => "debug",
    }
}

/// zap's short caller: the file's directory and name, and the line.
fn caller(file: Option<&str>, line: Option<u32>) -> String {
    let Some(file) = file else {
        return "unknown".into();
    };
    let mut parts = file.rsplit('/');
    let name = parts.next().unwrap_or(file);
    let short = match parts.next() {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_string(),
    };
    match line {
        Some(l) => format!("{short}:{l}"),
        None => short,
    }
}

/// etcd's time format (`2006-01-02T15:04:05.000000Z0700`), in UTC.
fn timestamp(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An event's message and fields, as JSON values: numbers and booleans as such,
/// everything else as the text it displays as.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_etcds_format_in_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_709_251_199_123_456);
        assert_eq!(timestamp(t), "2024-02-29T23:59:59.123456Z");
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn callers_are_short() {
        assert_eq!(
            caller(Some("daemon/src/server/mod.rs"), Some(230)),
            "server/mod.rs:230"
        );
        assert_eq!(caller(Some("main.rs"), Some(3)), "main.rs:3");
    }

    #[test]
    fn journal_entries_carry_the_line_length_prefixed() {
        let entry = journal_entry(&Level::WARN, "a\nb");
        let mut expected = b"MESSAGE\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\nPRIORITY=4\nSYSLOG_IDENTIFIER=qetcd\n");
        assert_eq!(entry, expected);
    }
}
