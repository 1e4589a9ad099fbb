//! Aligned text tables, coloured only when stdout is a terminal, and JSON for
//! machines. Every command prints through here.

use serde::Serialize;
use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
    Warn,
    Dim,
}

impl Tone {
    fn code(self) -> &'static str {
        match self {
            Tone::Plain => "",
            Tone::Good => "\x1b[32m",
            Tone::Bad => "\x1b[31;1m",
            Tone::Warn => "\x1b[33m",
            Tone::Dim => "\x1b[2m",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl<T: Into<String>> From<T> for Cell {
    fn from(t: T) -> Cell {
        Cell {
            text: t.into(),
            tone: Tone::Plain,
        }
    }
}

pub fn cell(text: impl Into<String>, tone: Tone) -> Cell {
    Cell {
        text: text.into(),
        tone,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn render(&self, colour: bool) -> String {
        let n = self.headers.len();
        let mut width = vec![0usize; n];
        for (i, h) in self.headers.iter().enumerate() {
            width[i] = h.chars().count();
        }
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.text.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, Tone)>, out: &mut String| {
            let last = cells.len().saturating_sub(1);
            for (i, (text, tone)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    width[i] - text.chars().count() + 2
                };
                if colour && tone != Tone::Plain {
                    out.push_str(tone.code());
                    out.push_str(&text);
                    out.push_str("\x1b[0m");
                } else {
                    out.push_str(&text);
                }
                out.extend(std::iter::repeat_n(' ', pad));
            }
            out.push('\n');
        };
        line(
            self.headers
                .iter()
                .map(|h| (h.to_uppercase(), Tone::Dim))
                .collect(),
            &mut out,
        );
        for r in &self.rows {
            line(
                r.iter().map(|c| (c.text.clone(), c.tone)).collect(),
                &mut out,
            );
        }
        out
    }
}

/// How to print: JSON or text, and whether text may carry colour.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub json: bool,
    pub colour: bool,
}

impl Style {
    pub fn detect(json: bool) -> Style {
        Style {
            json,
            colour: !json
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn paint(&self, text: &str, tone: Tone) -> String {
        if self.colour && tone != Tone::Plain {
            format!("{}{text}\x1b[0m", tone.code())
        } else {
            text.to_string()
        }
    }
}

pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("report serializes") + "\n"
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 1234567 -> "1,234,567".
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_colour() {
        let mut t = Table::new(&["key", "value"]);
        t.row(vec!["a".into(), cell("1", Tone::Good)]);
        t.row(vec!["longer".into(), "2".into()]);
        assert_eq!(t.render(false), "KEY     VALUE\na       1\nlonger  2\n");
        assert!(!t.render(false).contains('\x1b'));
    }

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(2867), "2.8 KiB");
    }
}
