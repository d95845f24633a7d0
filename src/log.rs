//! Levelled logging to stderr (`--log-level`): one global level, read with one
//! relaxed load, and lines in the same `corelb: ...` shape at every level,
//! after a time and the level (or, into the journal, a priority prefix).

use std::sync::atomic::{AtomicU8, Ordering};

/// How much is logged, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub const NAMES: &'static str = "error, warn, info, debug";

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    pub fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// The level in force.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => Level::Error,
        1 => Level::Warn,
        2 => Level::Info,
        _ => Level::Debug,
    }
}

/// Log `level` and everything more severe from now on (process-wide).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Is a line of `level` written?
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// `log!(Level::Warn, "corelb: ...", args)`: one line on stderr when the level
/// allows it (see `write`).
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}

/// Where stderr goes, decided once: the journal (systemd sets `JOURNAL_STREAM`
/// to stderr's device and inode) takes a `<N>` priority prefix, which it turns
/// into the line's priority (`journalctl -p warning`) and stamps itself;
/// anything else gets an RFC 3339 time in UTC with milliseconds, and the level.
fn to_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
            v.split_once(':')
                .map(|(d, i)| (d.to_string(), i.to_string()))
        }) else {
            return false;
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one stat struct through the pointer, which points
        // at a live local.
        if unsafe { libc::fstat(2, &mut st) } != 0 {
            return false;
        }
        dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
    })
}

/// Write one log line of `level`.
pub fn write(level: Level, line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = if to_journal() {
        // syslog priorities: err 3, warning 4, info 6, debug 7.
        let n = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        };
        format!("<{n}>{line}\n")
    } else {
        format!(
            "{} {:<5} {line}\n",
            rfc3339(std::time::SystemTime::now()),
            level.name()
        )
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `2026-12-07T20:04:20.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, hour, minute, second) = crate::access::civil(since.as_secs());
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_in_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1796673825` says Mon Dec  7 20:03:45 UTC 2026.
        assert_eq!(at(1_796_673_825, 7), "2026-12-07T20:03:45.007Z");
        // A leap day.
        assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
    }

    #[test]
    fn levels_parse_and_order() {
        for name in Level::NAMES.split(", ") {
            assert_eq!(Level::parse(name).map(Level::name), Some(name));
        }
        assert_eq!(Level::parse("trace"), None);
        assert!(Level::Error < Level::Debug);
    }
}
