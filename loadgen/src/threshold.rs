//! `--threshold` rules such as `p99<10ms`, `errors=0`, `rps>=20000`:
//! parsed before the run (a bad rule is a usage error), evaluated on the
//! summary after it, printed as a table; any failure makes the exit code 3.

use std::fmt;

use crate::report::{Summary, ThresholdResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdError(pub String, pub &'static str);

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad threshold {:?}: {}; write METRIC OP VALUE, e.g. 'p99<10ms', 'errors=0', \
             'rps>=20000' (metrics: p50 p75 p90 p99 p999 max mean, rps, requests, errors, \
             error_rate, errors.connect|read|write|timeout|status_4xx|status_5xx|parse)",
            self.0, self.1
        )
    }
}

impl std::error::Error for ThresholdError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub expr: String,
    metric: String,
    op: Op,
    /// In the metric's unit: µs for latencies, % for error_rate.
    value: f64,
}

const LATENCIES: [&str; 7] = ["p50", "p75", "p90", "p99", "p999", "max", "mean"];
const OTHERS: [&str; 11] = [
    "rps",
    "requests",
    "errors",
    "error_rate",
    "errors.connect",
    "errors.read",
    "errors.write",
    "errors.timeout",
    "errors.status_4xx",
    "errors.status_5xx",
    "errors.parse",
];

impl Threshold {
    pub fn parse(expr: &str) -> Result<Threshold, ThresholdError> {
        let err = |why| ThresholdError(expr.to_string(), why);
        let s: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let at = s
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| err("no operator"))?;
        let (metric, rest) = s.split_at(at);
        let (op, value) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
            ("=", Op::Eq),
        ]
        .iter()
        .find_map(|(t, op)| rest.strip_prefix(t).map(|v| (*op, v)))
        .ok_or_else(|| err("unknown operator"))?;
        let metric = metric.to_ascii_lowercase().replace("p99.9", "p999");
        let value = if LATENCIES.contains(&metric.as_str()) {
            parse_latency_us(value).ok_or_else(|| err("latency needs a unit: us, ms or s"))?
        } else if OTHERS.contains(&metric.as_str()) {
            value
                .trim_end_matches('%')
                .parse::<f64>()
                .map_err(|_| err("value is not a number"))?
        } else {
            return Err(err("unknown metric"));
        };
        Ok(Threshold {
            expr: expr.to_string(),
            metric,
            op,
            value,
        })
    }

    pub fn actual(&self, s: &Summary) -> f64 {
        let l = &s.latency_us;
        let e = &s.errors.by_kind;
        match self.metric.as_str() {
            "p50" => l.p50 as f64,
            "p75" => l.p75 as f64,
            "p90" => l.p90 as f64,
            "p99" => l.p99 as f64,
            "p999" => l.p999 as f64,
            "max" => l.max as f64,
            "mean" => l.mean,
            "rps" => s.rps,
            "requests" => s.requests as f64,
            "errors" => s.errors.total as f64,
            "error_rate" => {
                let attempts = (s.requests + s.errors.total - e.status_4xx - e.status_5xx).max(1);
                100.0 * s.errors.total as f64 / attempts as f64
            }
            "errors.connect" => e.connect as f64,
            "errors.read" => e.read as f64,
            "errors.write" => e.write as f64,
            "errors.timeout" => e.timeout as f64,
            "errors.status_4xx" => e.status_4xx as f64,
            "errors.status_5xx" => e.status_5xx as f64,
            _ => e.parse as f64,
        }
    }

    pub fn check(&self, s: &Summary) -> ThresholdResult {
        let v = self.actual(s);
        let ok = match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
        };
        ThresholdResult {
            expr: self.expr.clone(),
            value: v,
            ok,
        }
    }

    fn is_latency(&self) -> bool {
        LATENCIES.contains(&self.metric.as_str())
    }
}

fn parse_latency_us(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("µs") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

/// The aligned table printed after the run.
pub fn table(rules: &[Threshold], results: &[ThresholdResult]) -> String {
    let width = rules.iter().map(|r| r.expr.len()).max().unwrap_or(9).max(9);
    let mut out = format!("  {:<width$}  {:>14}  result\n", "threshold", "actual");
    for (r, res) in rules.iter().zip(results) {
        let actual = if r.is_latency() {
            crate::report::fmt_us(res.value)
        } else if res.value.fract() == 0.0 {
            format!("{:.0}", res.value)
        } else {
            format!("{:.2}", res.value)
        };
        out.push_str(&format!(
            "  {:<width$}  {:>14}  {}\n",
            r.expr,
            actual,
            if res.ok { "ok" } else { "FAILED" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let t = Threshold::parse("p99<10ms").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.value),
            ("p99", Op::Lt, 10_000.0)
        );
        assert_eq!(Threshold::parse("errors=0").unwrap().op, Op::Eq);
        assert_eq!(Threshold::parse("rps >= 20000").unwrap().value, 20000.0);
        assert!(Threshold::parse("p99<10").is_err());
        assert!(Threshold::parse("bogus<1").is_err());
        assert!(Threshold::parse("rps").is_err());
    }
}
