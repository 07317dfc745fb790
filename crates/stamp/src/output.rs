//! Printing: aligned tables for people, JSON (`--output json`) for scripts.

use serde::Serialize;
use stamp_model::{SystemClock, WallClock};

use crate::Output;

/// Prints `rows` under `header` with columns aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `value` as JSON, or calls `human` to print it for people.
pub fn show<T: Serialize>(output: Output, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => human(value),
    }
    Ok(())
}

/// `2026-11-22T10:00:00.123Z` from Unix milliseconds.
pub fn timestamp(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `3h12m`, `4m05s`, `12s` since Unix milliseconds `since`.
pub fn age(since: u64) -> String {
    let secs = SystemClock.now().0.saturating_sub(since) / 1000;
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

pub fn mib(m: u32) -> String {
    if m >= 1024 && m.is_multiple_of(1024) {
        format!("{} GiB", m / 1024)
    } else if m >= 1024 {
        format!("{:.2} GiB", f64::from(m) / 1024.0)
    } else {
        format!("{m} MiB")
    }
}

pub fn cores(millicores: u32) -> String {
    if millicores.is_multiple_of(1000) {
        format!("{}", millicores / 1000)
    } else {
        format!("{:.2}", f64::from(millicores) / 1000.0)
    }
}
