//! Which charts a report has and what goes on them: turns a run (steps, intervals)
//! and the seed's claims into `plot::Figure`s. No drawing here.

use std::collections::BTreeMap;

use crate::model::{Interval, Mode, RunData, Step};
use crate::plot::{Band, Figure, Fmt, Marker, Panel, Series, PALETTE, REFERENCE};
use crate::reference::{CapacityRules, SeedRow};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 470;
const SECOND_REFERENCE: plotters::style::RGBColor = plotters::style::RGBColor(130, 130, 130);
const X_CONNECTIONS: &str = "concurrent connections (log scale)";

/// One target at one connection count; the median over interleaved rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub connections: u64,
    pub peak_open: u64,
    pub rounds: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Proxy CPU, percent of one core.
    pub proxy_cpu_percent: f64,
    pub backend_cpu_percent: Option<f64>,
    pub rps_per_busy_core: Option<f64>,
    /// Proxy peak RSS (absolute, idle baseline included).
    pub proxy_rss_bytes: f64,
    /// The proxy RSS counted per connection: grown during the step when its start was
    /// recorded (`rss_grown`), else the peak.
    pub proxy_rss_counted_bytes: f64,
    pub rss_grown: bool,
    /// Kernel TCP socket memory grown during the step.
    pub sock_mem_bytes: f64,
    /// Kernel unreclaimable slab grown during the step; None when a step at this
    /// point did not measure it.
    pub slab_bytes: Option<f64>,
    pub errors: u64,
}

impl Point {
    /// What the connections cost: counted proxy RSS + socket buffers + slab (when measured).
    pub fn memory_bytes(&self) -> f64 {
        self.proxy_rss_counted_bytes + self.sock_mem_bytes + self.slab_bytes.unwrap_or(0.0)
    }

    pub fn memory_per_million_bytes(&self) -> Option<f64> {
        (self.peak_open > 0).then(|| self.memory_bytes() / self.peak_open as f64 * 1e6)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med<F: Fn(&Step) -> f64>(steps: &[&Step], f: F) -> f64 {
    median(steps.iter().map(|s| f(s)).collect())
}

/// What makes two steps of one target points of different lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineKey {
    mode: Mode,
    tls: bool,
    new_conn: bool,
    resume: bool,
}

impl LineKey {
    fn of(s: &Step) -> LineKey {
        LineKey {
            mode: s.mode,
            tls: s.tls.is_some(),
            new_conn: s.new_conn_per_request,
            resume: s.tls.as_ref().is_some_and(|t| t.resumption_offered),
        }
    }
}

/// Per target and kind of step (in the run's order), its points by connection count.
/// The label is the target's name, plus the mode when the target ran more than one (a
/// hold step's requests/s is set by its schedule and must not continue a closed-loop
/// line), plus `https` on TLS lines (and `http` on the plaintext ones beside them):
/// handshakes and record encryption make another curve; and so do a connection per
/// request and resumed sessions.
pub fn points(data: &RunData) -> Vec<(String, Vec<Point>)> {
    let mut lines = Vec::new();
    for t in &data.run.targets {
        let mut keys: Vec<LineKey> = Vec::new();
        for s in data.run.steps_of(&t.name) {
            let k = LineKey::of(s);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let several_modes = keys.iter().any(|k| k.mode != keys[0].mode);
        let both_schemes = keys.iter().any(|k| k.tls) && keys.iter().any(|k| !k.tls);
        for &k in &keys {
            let mut label = t.name.clone();
            if several_modes {
                label = format!("{label} {}", k.mode.as_str());
            }
            if k.tls {
                label.push_str(" https");
            } else if both_schemes {
                label.push_str(" http");
            }
            if k.new_conn {
                label.push_str(", conn per request");
            }
            if k.resume {
                label.push_str(", resumed");
            }
            lines.push((label, points_of(data, &t.name, k)));
        }
    }
    lines
}

fn points_of(data: &RunData, target: &str, key: LineKey) -> Vec<Point> {
    let mut groups: BTreeMap<u64, Vec<&Step>> = BTreeMap::new();
    for s in data.run.steps_of(target).filter(|s| LineKey::of(s) == key) {
        groups.entry(s.connections).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(connections, steps)| {
            let per_core: Vec<f64> = steps.iter().filter_map(|s| s.rps_per_busy_core()).collect();
            let backend = steps.iter().all(|s| s.backend.is_some()).then(|| {
                med(&steps, |s| {
                    let b = s.backend.unwrap_or_default();
                    if s.duration_s > 0.0 {
                        b.cpu_seconds / s.duration_s * 100.0
                    } else {
                        0.0
                    }
                })
            });
            Point {
                connections,
                peak_open: med(&steps, |s| s.peak_open as f64) as u64,
                rounds: steps.len(),
                rps: med(&steps, |s| s.rps),
                p50_ms: med(&steps, |s| s.latency_us.p50 / 1000.0),
                p99_ms: med(&steps, |s| s.latency_us.p99 / 1000.0),
                p999_ms: med(&steps, |s| s.latency_us.p999 / 1000.0),
                proxy_cpu_percent: med(&steps, |s| s.proxy_cores_busy() * 100.0),
                backend_cpu_percent: backend,
                rps_per_busy_core: (!per_core.is_empty()).then(|| median(per_core)),
                proxy_rss_bytes: med(&steps, |s| s.proxy.rss_peak_bytes as f64),
                proxy_rss_counted_bytes: med(&steps, |s| s.memory().proxy_rss_bytes as f64),
                rss_grown: steps.iter().all(|s| s.memory().rss_grown),
                sock_mem_bytes: med(&steps, |s| s.memory().sock_mem_bytes as f64),
                slab_bytes: steps
                    .iter()
                    .all(|s| s.kernel.slab_unreclaim_grown_bytes.is_some())
                    .then(|| {
                        med(&steps, |s| {
                            s.kernel.slab_unreclaim_grown_bytes.unwrap_or(0) as f64
                        })
                    }),
                errors: steps.iter().map(|s| s.errors.total()).sum(),
            }
        })
        .collect()
}

fn colour(target: usize, per_target: usize, j: usize) -> plotters::style::RGBColor {
    PALETTE[(target * per_target + j) % PALETTE.len()]
}

fn measured(
    label: String,
    points: Vec<(f64, f64)>,
    c: plotters::style::RGBColor,
    m: Marker,
) -> Series {
    Series {
        label,
        points,
        colour: c,
        marker: m,
        reference: false,
    }
}

fn seed(label: &str, points: Vec<(f64, f64)>, c: plotters::style::RGBColor) -> Series {
    Series {
        label: label.to_string(),
        points,
        colour: c,
        marker: Marker::Circle,
        reference: true,
    }
}

fn positive(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    // Log axes cannot show zero; a zero is "not measured" here, not a value.
    points.into_iter().filter(|&(_, y)| y > 0.0).collect()
}

fn panel(title: &str, y_label: &str, y_log: bool, y_fmt: Fmt) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: X_CONNECTIONS.to_string(),
        y_label: y_label.to_string(),
        x_log: true,
        y_log,
        x_fmt: Fmt::Count,
        y_fmt,
        series: Vec::new(),
        bands: Vec::new(),
    }
}

fn figure(name: &str, title: &str, p: Panel) -> Figure {
    Figure {
        name: name.to_string(),
        title: title.to_string(),
        panels: vec![p],
        width: WIDTH,
        panel_height: HEIGHT,
    }
}

fn xs<F: Fn(&Point) -> f64>(pts: &[Point], f: F) -> Vec<(f64, f64)> {
    pts.iter().map(|p| (p.connections as f64, f(p))).collect()
}

/// The charts against connection count, in report order.
pub fn scaling_figures(
    data: &RunData,
    seed_rows: &[SeedRow],
    rules: &CapacityRules,
) -> Vec<Figure> {
    let targets = points(data);
    let seed_xy = |f: &dyn Fn(&SeedRow) -> f64| -> Vec<(f64, f64)> {
        seed_rows
            .iter()
            .map(|r| (r.connections as f64, f(r)))
            .collect()
    };
    let mut figs = Vec::new();

    let mut p = panel("Throughput", "requests/s (log scale)", true, Fmt::Count);
    for (i, (name, pts)) in targets.iter().enumerate() {
        p.series.push(measured(
            name.clone(),
            xs(pts, |p| p.rps),
            colour(i, 1, 0),
            Marker::Circle,
        ));
    }
    p.series.push(seed(
        "seed claim (16 cores)",
        seed_xy(&|r| r.rps),
        REFERENCE,
    ));
    figs.push(figure("rps", "Requests/s vs connections", p));

    let mut p = panel(
        "Requests/s per core",
        "requests/s per busy core",
        true,
        Fmt::Count,
    );
    for (i, (name, pts)) in targets.iter().enumerate() {
        let v = pts
            .iter()
            .filter_map(|p| Some((p.connections as f64, p.rps_per_busy_core?)))
            .collect();
        p.series.push(measured(
            format!("{name} (per busy core)"),
            positive(v),
            colour(i, 1, 0),
            Marker::Circle,
        ));
    }
    p.series.push(seed(
        "seed, per busy core",
        seed_xy(&|r| r.rps_per_busy_core()),
        REFERENCE,
    ));
    p.series.push(seed(
        "seed, per core of 16",
        seed_xy(&|r| r.rps_per_core()),
        SECOND_REFERENCE,
    ));
    p.bands.push(Band {
        label: format!(
            "seed rule {}-{}k req/s/core",
            rules.rps_per_core.low / 1000.0,
            rules.rps_per_core.high / 1000.0
        ),
        low: rules.rps_per_core.low,
        high: rules.rps_per_core.high,
    });
    figs.push(figure(
        "rps_per_core",
        "Requests/s per core vs connections",
        p,
    ));

    let mut p = panel("Latency", "latency, ms (log scale)", true, Fmt::Plain);
    for (i, (name, pts)) in targets.iter().enumerate() {
        for (j, (q, m, f)) in [
            (
                "p50",
                Marker::Circle,
                (|p: &Point| p.p50_ms) as fn(&Point) -> f64,
            ),
            ("p99", Marker::Triangle, |p: &Point| p.p99_ms),
            ("p99.9", Marker::Cross, |p: &Point| p.p999_ms),
        ]
        .into_iter()
        .enumerate()
        {
            p.series.push(measured(
                format!("{name} {q}"),
                positive(xs(pts, f)),
                colour(i, 3, j),
                m,
            ));
        }
    }
    p.series.push(seed(
        "seed claim, average",
        seed_xy(&|r| r.avg_latency_ms),
        REFERENCE,
    ));
    figs.push(figure("latency", "Latency vs connections", p));

    let mut p = panel("CPU", "CPU, % of one core (log scale)", true, Fmt::Plain);
    for (i, (name, pts)) in targets.iter().enumerate() {
        p.series.push(measured(
            format!("{name} proxy"),
            xs(pts, |p| p.proxy_cpu_percent),
            colour(i, 2, 0),
            Marker::Circle,
        ));
        let backend: Vec<_> = pts
            .iter()
            .filter_map(|p| Some((p.connections as f64, p.backend_cpu_percent?)))
            .collect();
        if !backend.is_empty() {
            p.series.push(measured(
                format!("{name}: backends"),
                backend,
                colour(i, 2, 1),
                Marker::Triangle,
            ));
        }
    }
    p.series.push(seed(
        "seed claim (x16 cores)",
        seed_xy(&|r| r.cpu_percent_of_one_core()),
        REFERENCE,
    ));
    figs.push(figure("cpu", "CPU vs connections", p));

    let counted = Counted::of(&targets);
    let mut p = panel("Memory", "bytes (log scale)", true, Fmt::Bytes);
    for (i, (name, pts)) in targets.iter().enumerate() {
        let parts = Counted::of_line(pts);
        let slab: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|p| Some((p.connections as f64, p.slab_bytes?)))
            .collect();
        let lines = [
            (
                format!("{name} {}", parts.short()),
                Marker::Circle,
                xs(pts, |p| p.memory_bytes()),
            ),
            (
                format!("{name} {}", parts.rss()),
                Marker::Triangle,
                xs(pts, |p| p.proxy_rss_counted_bytes),
            ),
            (
                format!("{name} socket buffers"),
                Marker::Cross,
                xs(pts, |p| p.sock_mem_bytes),
            ),
            (format!("{name} kernel slab grown"), Marker::Triangle, slab),
        ];
        for (j, (label, m, v)) in lines.into_iter().enumerate() {
            // A target without slab figures gets no empty slab entry in the legend.
            if !v.is_empty() {
                p.series
                    .push(measured(label, positive(v), colour(i, 4, j), m));
            }
        }
    }
    p.series.push(seed(
        "seed claim, total",
        seed_xy(&|r| r.memory_bytes()),
        REFERENCE,
    ));
    figs.push(figure(
        "memory",
        &format!("Memory vs connections: {}", counted.title()),
        p,
    ));

    let mut p = panel(
        "Memory per 1M connections",
        "bytes per 1M connections (log scale)",
        true,
        Fmt::Bytes,
    );
    for (i, (name, pts)) in targets.iter().enumerate() {
        let v = pts
            .iter()
            .filter_map(|p| Some((p.connections as f64, p.memory_per_million_bytes()?)))
            .collect();
        p.series.push(measured(
            format!("{name} {}", Counted::of_line(pts).short()),
            positive(v),
            colour(i, 1, 0),
            Marker::Circle,
        ));
    }
    p.series.push(seed(
        "seed claim",
        seed_xy(&|r| r.memory_bytes() / r.connections as f64 * 1e6),
        REFERENCE,
    ));
    let m = &rules.memory_per_million_connections;
    p.bands.push(Band {
        label: format!("seed rule {}-{} GB per 1M", m.low, m.high),
        low: m.low * 1e9,
        high: m.high * 1e9,
    });
    figs.push(figure(
        "memory_per_million",
        &format!("Memory per 1M connections: {}", counted.title()),
        p,
    ));
    figs
}

/// Which parts the memory figures of some points count, for chart labels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counted {
    /// Some(true): every point's proxy RSS is growth; Some(false): every one is the
    /// peak (start not recorded); None: mixed.
    rss_grown: Option<bool>,
    /// Some(true): every point measured slab; Some(false): none did; None: some did.
    slab: Option<bool>,
}

fn all_or_none(with: usize, all: usize) -> Option<bool> {
    if with == all {
        Some(true)
    } else if with == 0 {
        Some(false)
    } else {
        None
    }
}

impl Counted {
    fn of_points<'a>(pts: impl Iterator<Item = &'a Point> + Clone) -> Counted {
        let all = pts.clone().count();
        Counted {
            rss_grown: all_or_none(pts.clone().filter(|p| p.rss_grown).count(), all),
            slab: all_or_none(pts.filter(|p| p.slab_bytes.is_some()).count(), all),
        }
    }

    fn of_line(pts: &[Point]) -> Counted {
        Counted::of_points(pts.iter())
    }

    fn of(lines: &[(String, Vec<Point>)]) -> Counted {
        Counted::of_points(lines.iter().flat_map(|(_, p)| p.iter()))
    }

    fn rss(self) -> &'static str {
        match self.rss_grown {
            Some(true) => "proxy RSS grown",
            Some(false) => "proxy RSS peak",
            None => "proxy RSS grown or peak",
        }
    }

    /// For legends (the column is narrow; the title names the parts).
    fn short(self) -> &'static str {
        match self.slab {
            Some(true) => "total",
            Some(false) => "total, no slab",
            None => "total, slab in some",
        }
    }

    /// For figure titles.
    fn title(self) -> String {
        let rss = self.rss();
        match self.slab {
            Some(true) => format!("{rss} + socket buffers + kernel slab"),
            Some(false) => format!("{rss} + socket buffers (slab not measured)"),
            None => format!("{rss} + socket buffers + slab where measured"),
        }
    }
}

/// A file-name-safe stem.
fn stem(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn ts_panel(title: &str, y_label: &str, y_fmt: Fmt) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: "time since step start, s".to_string(),
        y_label: y_label.to_string(),
        x_log: false,
        y_log: false,
        x_fmt: Fmt::Plain,
        y_fmt,
        series: Vec::new(),
        bands: Vec::new(),
    }
}

fn line<F: Fn(&Interval) -> f64>(rows: &[&Interval], label: &str, j: usize, f: F) -> Series {
    let marker = [Marker::Circle, Marker::Triangle, Marker::Cross][j % 3];
    measured(
        label.to_string(),
        rows.iter().map(|r| (r.t_s, f(r))).collect(),
        PALETTE[j % PALETTE.len()],
        marker,
    )
}

/// One stacked time-series figure per step that has intervals.
pub fn timeseries_figures(data: &RunData) -> Vec<Figure> {
    let mut figs = Vec::new();
    for s in &data.run.steps {
        let mut rows: Vec<&Interval> = data
            .intervals
            .iter()
            .filter(|r| r.target == s.target && r.round == s.round && r.step == s.step)
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        let mut panels = Vec::new();
        let mut p = ts_panel("Throughput", "requests/s", Fmt::Count);
        p.series.push(line(&rows, "requests/s", 0, |r| r.rps));
        panels.push(p);
        let mut p = ts_panel("Latency", "latency, ms", Fmt::Plain);
        p.series.push(line(&rows, "p50", 0, |r| r.p50_us / 1000.0));
        p.series.push(line(&rows, "p99", 1, |r| r.p99_us / 1000.0));
        panels.push(p);
        let mut p = ts_panel("Connections", "open connections", Fmt::Count);
        p.series.push(line(&rows, "open connections", 0, |r| {
            r.open_connections as f64
        }));
        panels.push(p);
        if rows.iter().any(|r| r.errors > 0) {
            let mut p = ts_panel("Errors", "errors per interval", Fmt::Count);
            p.series.push(line(&rows, "errors", 3, |r| r.errors as f64));
            panels.push(p);
        }
        let mut p = ts_panel("Proxy CPU", "CPU, % of one core", Fmt::Plain);
        p.series
            .push(line(&rows, "proxy CPU", 0, |r| r.proxy_cpu_percent));
        panels.push(p);
        let mut p = ts_panel("Memory", "bytes", Fmt::Bytes);
        p.series
            .push(line(&rows, "proxy RSS", 0, |r| r.proxy_rss_bytes as f64));
        p.series
            .push(line(&rows, "kernel TCP socket buffers", 1, |r| {
                r.sock_mem_bytes as f64
            }));
        panels.push(p);
        let round = if data.run.steps.iter().any(|x| x.round > 0) {
            format!(", round {}", s.round)
        } else {
            String::new()
        };
        figs.push(Figure {
            name: stem(&format!("ts_{}_r{}_s{}", s.target, s.round, s.step)),
            title: format!(
                "{}: step {}{round} - {} connections, {} mode, {}, {} errors",
                s.target,
                s.step,
                s.connections,
                s.mode.as_str(),
                s.scheme(),
                s.errors.total()
            ),
            panels,
            width: WIDTH,
            panel_height: 230,
        });
    }
    figs
}
