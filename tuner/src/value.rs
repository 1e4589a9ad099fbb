//! What a profile wants for one key, and how that compares with what is there.
//! A wanted value is exact (`1`, `1024 65535`, `performance`) or a bound on each
//! whitespace-separated field (`>= 65535`, `<= * 16384 *`): `>=` only ever raises,
//! `<=` only ever lowers, `*` leaves a field alone.

use serde::Serialize;
use std::fmt;

/// The machine figures that some tokens depend on (`25%ram`, `hard`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Total RAM in pages of `page_size` bytes: what tcp_mem counts in.
    pub ram_pages: u64,
    /// The current hard limit of the rlimit being looked at, for `>= hard` on a soft limit.
    pub rlimit_hard: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("bound `{0}` has no fields: write e.g. `>= 65535`")]
    Empty(String),
    #[error("field `{field}` of `{value}` is not a number, `*`, `N%ram`, `hard` or `unlimited`")]
    BadField { value: String, field: String },
    #[error("`{wanted}` has {wanted_fields} fields but the current value `{current}` has {current_fields}: write one field per value field")]
    FieldCount {
        wanted: String,
        current: String,
        wanted_fields: usize,
        current_fields: usize,
    },
    #[error(
        "current value `{0}` is not numeric, so a `>=`/`<=` bound cannot apply: use an exact value"
    )]
    NotNumeric(String),
    #[error("`hard` only makes sense for a soft rlimit")]
    NoHard,
}

/// One field of a bound.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Any,
    Number(u64),
    /// Percent of total RAM, in pages.
    RamPercent(f64),
    /// The current hard rlimit.
    Hard,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    Exact(String),
    AtLeast(Vec<Field>),
    AtMost(Vec<Field>),
}

/// The comparison of a current value with a wanted one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Already right; nothing to write.
    Ok,
    /// Needs this value written.
    Change(String),
}

pub const UNLIMITED: u64 = u64::MAX;

impl Wanted {
    pub fn parse(raw: &str) -> Result<Wanted, ValueError> {
        let s = raw.trim();
        let (bound, rest) = if let Some(rest) = s.strip_prefix(">=") {
            (Some(true), rest)
        } else if let Some(rest) = s.strip_prefix("<=") {
            (Some(false), rest)
        } else {
            (None, s)
        };
        let Some(raise) = bound else {
            return Ok(Wanted::Exact(s.to_string()));
        };
        let fields: Vec<Field> = rest
            .split_whitespace()
            .map(|f| parse_field(s, f))
            .collect::<Result<_, _>>()?;
        if fields.is_empty() {
            return Err(ValueError::Empty(s.to_string()));
        }
        Ok(if raise {
            Wanted::AtLeast(fields)
        } else {
            Wanted::AtMost(fields)
        })
    }

    /// Compare with the current value and say what, if anything, to write.
    pub fn verdict(&self, current: &str, ctx: &Context) -> Result<Verdict, ValueError> {
        let cur: Vec<&str> = current.split_whitespace().collect();
        match self {
            Wanted::Exact(want) => {
                let w: Vec<&str> = want.split_whitespace().collect();
                if fields_equal(&cur, &w) {
                    Ok(Verdict::Ok)
                } else {
                    Ok(Verdict::Change(w.join(" ")))
                }
            }
            Wanted::AtLeast(fields) | Wanted::AtMost(fields) => {
                let raise = matches!(self, Wanted::AtLeast(_));
                if fields.len() != cur.len() {
                    return Err(ValueError::FieldCount {
                        wanted: self.to_string(),
                        current: current.trim().to_string(),
                        wanted_fields: fields.len(),
                        current_fields: cur.len(),
                    });
                }
                let mut changed = false;
                let mut out = Vec::with_capacity(cur.len());
                for (f, c) in fields.iter().zip(&cur) {
                    let Some(bound) = resolve_field(f, ctx)? else {
                        out.push(c.to_string());
                        continue;
                    };
                    let now = parse_number(c)
                        .ok_or_else(|| ValueError::NotNumeric(current.trim().into()))?;
                    let needs = if raise { now < bound } else { now > bound };
                    if needs {
                        changed = true;
                        out.push(format_number(bound));
                    } else {
                        out.push(c.to_string());
                    }
                }
                Ok(if changed {
                    Verdict::Change(out.join(" "))
                } else {
                    Verdict::Ok
                })
            }
        }
    }

    /// The wanted value with tokens resolved, for display (`>= 1541234 ...`).
    pub fn display_resolved(&self, ctx: &Context) -> String {
        match self {
            Wanted::Exact(s) => s.clone(),
            Wanted::AtLeast(f) | Wanted::AtMost(f) => {
                let op = if matches!(self, Wanted::AtLeast(_)) {
                    ">="
                } else {
                    "<="
                };
                let fields: Vec<String> = f
                    .iter()
                    .map(|x| match resolve_field(x, ctx) {
                        Ok(Some(n)) => format_number(n),
                        Ok(None) => "*".into(),
                        Err(_) => field_text(x),
                    })
                    .collect();
                format!("{op} {}", fields.join(" "))
            }
        }
    }
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Exact(s) => write!(f, "{s}"),
            Wanted::AtLeast(v) | Wanted::AtMost(v) => {
                let op = if matches!(self, Wanted::AtLeast(_)) {
                    ">="
                } else {
                    "<="
                };
                let fields: Vec<String> = v.iter().map(field_text).collect();
                write!(f, "{op} {}", fields.join(" "))
            }
        }
    }
}

fn field_text(f: &Field) -> String {
    match f {
        Field::Any => "*".into(),
        Field::Number(n) => format_number(*n),
        Field::RamPercent(p) => format!("{p}%ram"),
        Field::Hard => "hard".into(),
    }
}

fn parse_field(value: &str, f: &str) -> Result<Field, ValueError> {
    let bad = || ValueError::BadField {
        value: value.to_string(),
        field: f.to_string(),
    };
    if f == "*" {
        return Ok(Field::Any);
    }
    if f == "hard" {
        return Ok(Field::Hard);
    }
    if let Some(p) = f.strip_suffix("%ram") {
        let p: f64 = p.parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) {
            return Err(bad());
        }
        return Ok(Field::RamPercent(p));
    }
    parse_number(f).map(Field::Number).ok_or_else(bad)
}

fn resolve_field(f: &Field, ctx: &Context) -> Result<Option<u64>, ValueError> {
    Ok(match f {
        Field::Any => None,
        Field::Number(n) => Some(*n),
        Field::RamPercent(p) => Some((ctx.ram_pages as f64 * p / 100.0) as u64),
        Field::Hard => Some(ctx.rlimit_hard.ok_or(ValueError::NoHard)?),
    })
}

/// Numbers as the kernel and rlimits write them; `unlimited` is RLIM_INFINITY.
pub fn parse_number(s: &str) -> Option<u64> {
    if s == "unlimited" || s == "infinity" {
        return Some(UNLIMITED);
    }
    s.parse().ok()
}

pub fn format_number(n: u64) -> String {
    if n == UNLIMITED {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

fn fields_equal(a: &[&str], b: &[&str]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x == y || matches!((parse_number(x), parse_number(y)), (Some(p), Some(q)) if p == q)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(w: &str, cur: &str) -> Verdict {
        let ctx = Context {
            ram_pages: 1000,
            rlimit_hard: Some(20000),
        };
        Wanted::parse(w).unwrap().verdict(cur, &ctx).unwrap()
    }

    #[test]
    fn exact_ignores_whitespace_kind() {
        assert_eq!(v("32768 60999", "32768\t60999\n"), Verdict::Ok);
        assert_eq!(
            v("1024 65535", "32768\t60999\n"),
            Verdict::Change("1024 65535".into())
        );
    }

    #[test]
    fn bounds_only_move_one_way() {
        assert_eq!(v(">= 100", "200"), Verdict::Ok);
        assert_eq!(v(">= 100", "50"), Verdict::Change("100".into()));
        assert_eq!(v("<= 15", "60"), Verdict::Change("15".into()));
        assert_eq!(v("<= 15", "10"), Verdict::Ok);
        assert_eq!(
            v("<= * 16384 *", "4096\t131072\t33554432"),
            Verdict::Change("4096 16384 33554432".into())
        );
        assert_eq!(
            v(">= 10%ram 20%ram 50%ram", "1 150 1000"),
            Verdict::Change("100 200 1000".into())
        );
        assert_eq!(v(">= hard", "1024"), Verdict::Change("20000".into()));
        assert_eq!(
            v(">= unlimited", "65536"),
            Verdict::Change("unlimited".into())
        );
    }

    #[test]
    fn field_count_mismatch_is_an_error() {
        let w = Wanted::parse(">= 1 2").unwrap();
        assert!(w.verdict("5", &Context::default()).is_err());
    }
}
