//! Text output helpers: tables, escaping, numbers.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;
use weir_client::Event;

/// Left-aligned columns separated by two spaces; the header is uppercase as given.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<w$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Bytes as text for one tab-separated field: lossy UTF-8, with `\t`, `\n` and `\r` escaped so
/// one message stays on one line.
pub fn field(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `offset\ttimestamp_ms\tkey\tvalue`.
/// `offset TAB timestamp_ms TAB key TAB value`; a programmable topic's delete event has the
/// value `<deleted>`.
pub fn event_line(event: &Event) -> String {
    let value = if event.tombstone {
        "<deleted>".to_owned()
    } else {
        field(&event.value)
    };
    format!(
        "{}\t{}\t{}\t{}",
        event.offset,
        event.timestamp_ms,
        event.key.as_deref().map(field).unwrap_or_default(),
        value
    )
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 93_000 ms → "1m 33s".
pub fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{}.{:01}s", s, ms % 1000 / 100),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn rate(count: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    thousands((count as f64 / secs).round() as u64)
}

pub fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Writes a line to stdout and flushes (a listener's output should appear as it arrives).
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// `weir listen ... | head` closes the pipe: that is a normal way to stop.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::{Offset, TimestampMs};

    #[test]
    fn table_aligns_columns_and_trims_trailing_spaces() {
        let t = table(
            &["NAME", "NEXT"],
            &[
                vec!["orders".into(), "10".into()],
                vec!["x".into(), "7".into()],
            ],
        );
        assert_eq!(t, "NAME    NEXT\norders  10\nx       7\n");
    }

    #[test]
    fn event_line_is_tab_separated_with_escaped_control_characters() {
        let e = Event {
            offset: Offset(3),
            timestamp_ms: TimestampMs(17),
            key: Some(b"k\t1".to_vec()),
            value: b"line1\nline2 \xff".to_vec(),
            tombstone: false,
        };
        assert_eq!(event_line(&e), "3\t17\tk\\t1\tline1\\nline2 \u{fffd}");
        let e = Event { key: None, ..e };
        assert!(event_line(&e).starts_with("3\t17\t\t"));
        let e = Event {
            tombstone: true,
            ..e
        };
        assert!(event_line(&e).ends_with("\t<deleted>"));
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn uptime_is_compact() {
        assert_eq!(uptime(1_500), "1.5s");
        assert_eq!(uptime(93_000), "1m 33s");
        assert_eq!(uptime(3_600_000 * 5 + 60_000), "5h 1m");
        assert_eq!(uptime(86_400_000 * 2), "2d 0h");
    }
}
