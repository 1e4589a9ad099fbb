//! Results model, plots, HTML/Markdown reports and capacity planning for SpeedMimi
//! bench runs. The bench runner writes DIR/results.json and DIR/intervals.csv through
//! `model`; `render(DIR)` reads them back and writes report.html, summary.md and
//! every chart as SVG and PNG into DIR.

pub mod capacity;
pub mod charts;
mod html;
mod markdown;
pub mod model;
pub mod plot;
pub mod reference;
pub mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use capacity::{Costs, Demand, HostLimits};
use model::RunData;
use tables::Table;

pub use model::{load_dir, save_dir, BenchRun, Interval, Step, SCHEMA};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error(transparent)]
    Capacity(#[from] capacity::CapacityError),
    #[error("cannot write {path}: {source} (check the directory is writable)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a report plans for, besides describing the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Demands to size (default: the seed's 10M connections at 80k requests/s).
    pub demands: Vec<Demand>,
    pub host: HostLimits,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            demands: vec![Demand::SEED_10M],
            host: HostLimits::default(),
        }
    }
}

/// Files a render wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedPaths {
    pub html: PathBuf,
    pub summary: PathBuf,
    pub svgs: Vec<PathBuf>,
    pub pngs: Vec<PathBuf>,
}

/// A chart ready for the page.
#[derive(Debug, Clone)]
pub(crate) struct RenderedFigure {
    pub name: String,
    pub title: String,
    pub svg: String,
}

/// Everything report.html and summary.md show, computed once.
pub(crate) struct Report {
    pub title: String,
    pub note: Option<String>,
    pub env: Table,
    pub steps: Table,
    pub rules: Table,
    pub plans: Vec<(String, Table)>,
    pub host: String,
    pub caveats: Vec<String>,
    pub scaling: Vec<RenderedFigure>,
    pub timeseries: Vec<RenderedFigure>,
}

/// Reads DIR/results.json (+ intervals.csv) and writes DIR/report.html, DIR/summary.md,
/// DIR/*.svg and DIR/*.png, planning for the seed's 10M-at-80k demand.
pub fn render(dir: &Path) -> Result<RenderedPaths, ReportError> {
    render_with(dir, &RenderOptions::default())
}

pub fn render_with(dir: &Path, opts: &RenderOptions) -> Result<RenderedPaths, ReportError> {
    let data = model::load_dir(dir)?;
    render_data(&data, dir, opts)
}

/// Renders `data` into `out_dir` (for a runner that has the results in memory).
pub fn render_data(
    data: &RunData,
    out_dir: &Path,
    opts: &RenderOptions,
) -> Result<RenderedPaths, ReportError> {
    let seed_rows = reference::seed_table()?;
    let rules = reference::capacity_rules()?;

    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, ReportError> {
        let path = out_dir.join(name);
        fs::write(&path, bytes).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };

    let mut svgs = Vec::new();
    let mut pngs = Vec::new();
    let mut draw = |figs: Vec<plot::Figure>| -> Result<Vec<RenderedFigure>, ReportError> {
        let mut out = Vec::new();
        for f in figs {
            let svg = f.render_svg()?;
            svgs.push(write(&format!("{}.svg", f.name), svg.as_bytes())?);
            pngs.push(write(&format!("{}.png", f.name), &f.render_png()?)?);
            out.push(RenderedFigure {
                name: f.name,
                title: f.title,
                svg,
            });
        }
        Ok(out)
    };
    let scaling = draw(charts::scaling_figures(data, &seed_rows, &rules))?;
    let timeseries = draw(charts::timeseries_figures(data))?;

    let (rules_table, measured) = tables::rules_table(data, &rules);
    let mut costs: Vec<Costs> = measured;
    costs.push(Costs::seed_optimistic(&rules));
    costs.push(Costs::seed_conservative(&rules));
    let mut plans = Vec::new();
    for d in &opts.demands {
        let (t, _) = tables::plan_table(d, &costs, &opts.host)?;
        plans.push((tables::demand_title(d), t));
    }

    let report = Report {
        title: format!("SpeedMimi bench report: {}", data.run.scenario),
        note: data.run.note.clone(),
        env: tables::env_table(data),
        steps: tables::steps_table(data),
        rules: rules_table,
        plans,
        host: tables::host_text(&opts.host),
        caveats: caveats(&seed_rows),
        scaling,
        timeseries,
    };
    let html = write("report.html", html::render(&report).as_bytes())?;
    let summary = write("summary.md", markdown::render(&report).as_bytes())?;
    Ok(RenderedPaths {
        html,
        summary,
        svgs,
        pngs,
    })
}

fn caveats(seed_rows: &[reference::SeedRow]) -> Vec<String> {
    let mut c = vec![
        "Memory per connection counts the proxy's RSS grown during the step (its idle baseline \
         is a fixed cost per host, left out; older results without the step's starting RSS \
         count the whole peak), the kernel's TCP socket buffers grown (sockstat `mem`) and the \
         kernel's unreclaimable slab grown (SUnreclaim). sockstat counts only buffer pages, so \
         an idle socket costs about 0 there; the socket structures themselves (about 3 KB per \
         socket measured on these machines) live in the slab. Runs that did not record the slab \
         are marked \"slab not measured\": their figure is a lower bound."
            .to_string(),
        "Kernel socket buffers and slab are host-wide: when the load generator and the backends \
         run on the same machine they also count their sockets (about twice the proxy's own on \
         loopback: each proxied connection is a client socket and a proxy socket), so memory per \
         connection measured that way is an upper bound for a proxy-only host."
            .to_string(),
        "On a small shared machine the load generator and backends take CPU from the proxy, so \
         requests/s is compressed; CPU per request (and requests/s per busy core) is the figure \
         that carries over to a dedicated host."
            .to_string(),
        format!(
            "Source addresses: one client address holds at most {} connections to one destination \
             ip:port in these plans (the 4-tuple allows ~28k with the default port range, but the \
             kernel's port search slows to a crawl well before). Connections from the proxy to its \
             backends are pooled keep-alive connections and are not counted.",
            tables::count(capacity::CONNECTIONS_PER_SOURCE_ADDRESS)
        ),
    ];
    if let Some(big) = seed_rows.iter().max_by_key(|r| r.connections) {
        c.push(format!(
            "The seed's table claims {} connections in {} GB, i.e. {:.0} bytes per connection, \
             below the ~2.8 KB the Linux kernel alone spends on one idle TCP socket (measured on \
             these machines): treat its points as claims to compare with, not as truths.",
            tables::count(big.connections),
            big.memory_gb,
            big.memory_bytes() / big.connections as f64
        ));
    }
    c
}
