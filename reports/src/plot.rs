//! Drawing: a `Figure` (one or more stacked panels of x/y series) rendered to SVG text
//! or PNG bytes with plotters. Text in PNGs goes through ab_glyph with the bundled
//! DejaVu Sans, so no system font library is involved.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans 2.37 (Bitstream Vera licence, see assets/FONT-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const LEGEND_WIDTH: u32 = 250;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing chart {chart:?}: {message}")]
    Draw { chart: String, message: String },
    #[error("the bundled font assets/DejaVuSans.ttf is unreadable (restore it from Debian's fonts-dejavu-core)")]
    Font,
    #[error("encoding PNG for chart {chart:?}: {source}")]
    Png {
        chart: String,
        source: png::EncodingError,
    },
}

/// A drawing failure without the chart name yet; `Figure::render_*` adds it.
struct DrawFailure(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DrawFailure {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        DrawFailure(e.to_string())
    }
}

/// How tick labels print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    /// 100, 1k, 10k, 1M
    Count,
    /// 512 kB, 3 MB, 2.5 GB (decimal units, as the seed's GB)
    Bytes,
    /// a plain number, trimmed
    Plain,
}

impl Fmt {
    pub fn format(self, v: f64) -> String {
        match self {
            Fmt::Count => si(v, &["", "k", "M", "G"], 1000.0, ""),
            Fmt::Bytes => si(v, &["B", "kB", "MB", "GB", "TB"], 1000.0, " "),
            Fmt::Plain => trim(v),
        }
    }
}

fn trim(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn si(v: f64, units: &[&str], step: f64, sep: &str) -> String {
    let mut x = v;
    let mut i = 0;
    while x.abs() >= step && i + 1 < units.len() {
        x /= step;
        i += 1;
    }
    if units[i].is_empty() {
        trim(x)
    } else {
        format!("{}{sep}{}", trim(x), units[i])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Cross,
}

/// One line of points. Measured series: solid line, filled markers. Reference series
/// (the seed's claims): dashed line, hollow circles.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
    pub marker: Marker,
    pub reference: bool,
}

/// A horizontal low..high range (a capacity rule), shaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub label: String,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub x_fmt: Fmt,
    pub y_fmt: Fmt,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem: NAME.svg, NAME.png.
    pub name: String,
    pub title: String,
    pub panels: Vec<Panel>,
    pub width: u32,
    pub panel_height: u32,
}

/// Ten distinct colours (the classic category palette) for measured series.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Reference (seed) series colour.
pub const REFERENCE: RGBColor = RGBColor(40, 40, 40);
const BAND: RGBColor = RGBColor(120, 120, 120);

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

impl Figure {
    pub fn height(&self) -> u32 {
        let title = if self.title.is_empty() { 0 } else { 40 };
        title + self.panel_height * self.panels.len().max(1) as u32
    }

    pub fn render_svg(&self) -> Result<String, PlotError> {
        ensure_font()?;
        let mut out = String::new();
        {
            let root =
                SVGBackend::with_string(&mut out, (self.width, self.height())).into_drawing_area();
            self.draw(&root).map_err(|e| self.err(e))?;
            root.present().map_err(|e| self.err(e.into()))?;
        }
        Ok(out)
    }

    pub fn render_png(&self) -> Result<Vec<u8>, PlotError> {
        ensure_font()?;
        let (w, h) = (self.width, self.height());
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root).map_err(|e| self.err(e))?;
            root.present().map_err(|e| self.err(e.into()))?;
        }
        let mut out = Vec::new();
        let png_err = |source| PlotError::Png {
            chart: self.name.clone(),
            source,
        };
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        Ok(out)
    }

    fn err(&self, e: DrawFailure) -> PlotError {
        PlotError::Draw {
            chart: self.name.clone(),
            message: e.0,
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawFailure> {
        root.fill(&WHITE)?;
        let body = if self.title.is_empty() {
            root.clone()
        } else {
            root.titled(&self.title, (FAMILY, 22))?
        };
        let rows = self.panels.len().max(1);
        // A lone panel under a figure title needs no caption of its own.
        let captions = rows > 1 || self.title.is_empty();
        for (area, panel) in body.split_evenly((rows, 1)).iter().zip(&self.panels) {
            draw_panel(area, panel, captions)?;
        }
        Ok(())
    }
}

/// Axis ranges padded around the data; log axes by factors, linear from zero.
fn ranges(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let points = panel.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for b in &panel.bands {
        y0 = y0.min(b.low);
        y1 = y1.max(b.high);
    }
    if x0 > x1 {
        (x0, x1) = (1.0, 10.0);
    }
    if y0 > y1 {
        (y0, y1) = (1.0, 10.0);
    }
    let x = if panel.x_log {
        let (lo, hi) = (x0.max(1e-9), x1.max(1e-9));
        let pad = if hi / lo < 3.0 { 3.0 } else { 1.6 };
        (lo / pad, hi * pad)
    } else if x1 > x0 {
        (x0.min(0.0), x1 + (x1 - x0.min(0.0)) * 0.03)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let y = if panel.y_log {
        let (lo, hi) = (y0.max(1e-9), y1.max(1e-9));
        (lo / 2.0, hi * 2.0)
    } else {
        let hi = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
        (y0.min(0.0), hi)
    };
    (x, y)
}

/// The chart body. A macro, not a generic function: each axis combination is a
/// different plotters coordinate type, and the trait bounds to abstract over them
/// would be longer than the body.
macro_rules! draw_chart {
    ($plot:expr, $panel:expr, $xr:expr, $yr:expr) => {{
        let panel: &Panel = $panel;
        let ((x0, x1), _) = ranges(panel);
        let mut builder = ChartBuilder::on(&$plot);
        if !panel.title.is_empty() {
            builder.caption(&panel.title, (FAMILY, 16));
        }
        let mut chart = builder
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(76)
            .build_cartesian_2d($xr, $yr)?;
        let xf = |v: &f64| panel.x_fmt.format(*v);
        let yf = |v: &f64| panel.y_fmt.format(*v);
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .x_labels(8)
            .y_labels(8)
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 13))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        for band in &panel.bands {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, band.low), (x1, band.high)],
                BAND.mix(0.15).filled(),
            )))?;
            for y in [band.low, band.high] {
                chart.draw_series(DashedLineSeries::new(
                    [(x0, y), (x1, y)],
                    2,
                    4,
                    BAND.stroke_width(1),
                ))?;
            }
        }
        for s in &panel.series {
            if s.reference {
                chart.draw_series(DashedLineSeries::new(
                    s.points.iter().copied(),
                    8,
                    5,
                    s.colour.stroke_width(2),
                ))?;
                // White inside, so the marker reads as hollow even where the line crosses it.
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, WHITE.filled())))?;
                chart.draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, 5, s.colour.stroke_width(2))),
                )?;
            } else {
                chart.draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    s.colour.stroke_width(2),
                ))?;
                let style = s.colour.filled();
                match s.marker {
                    Marker::Circle => {
                        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, style)))?;
                    }
                    Marker::Triangle => {
                        chart.draw_series(
                            s.points.iter().map(|&p| TriangleMarker::new(p, 5, style)),
                        )?;
                    }
                    Marker::Cross => {
                        chart.draw_series(
                            s.points
                                .iter()
                                .map(|&p| Cross::new(p, 4, s.colour.stroke_width(2))),
                        )?;
                    }
                }
            }
        }
        if panel.series.iter().all(|s| s.points.is_empty()) {
            $plot.draw(&Text::new(
                "no data",
                (100, 60),
                (FAMILY, 16).into_font().color(&REFERENCE),
            ))?;
        }
    }};
}

/// A log y axis over less than ~1.5 decades gets one or two labels at most: such a
/// panel is drawn linear instead, which reads better.
fn effective(panel: &Panel) -> Panel {
    let mut p = panel.clone();
    if p.y_log {
        let ys = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(_, y)| y));
        let ys = ys.chain(p.bands.iter().flat_map(|b| [b.low, b.high]));
        let (lo, hi) = ys
            .filter(|y| *y > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if lo > hi || hi / lo < 20.0 {
            p.y_log = false;
            p.y_label = p.y_label.replace(" (log scale)", "");
        }
    }
    p
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    caption: bool,
) -> Result<(), DrawFailure> {
    let (w, _) = area.dim_in_pixel();
    let (plot, legend) = area.split_horizontally(w.saturating_sub(LEGEND_WIDTH));
    let mut panel = effective(panel);
    if !caption {
        panel.title.clear();
    }
    let panel = &panel;
    let ((x0, x1), (y0, y1)) = ranges(panel);
    match (panel.x_log, panel.y_log) {
        (false, false) => draw_chart!(plot, panel, x0..x1, y0..y1),
        (true, false) => draw_chart!(plot, panel, (x0..x1).log_scale(), y0..y1),
        (false, true) => draw_chart!(plot, panel, x0..x1, (y0..y1).log_scale()),
        (true, true) => draw_chart!(plot, panel, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }
    draw_legend(&legend, panel)
}

/// The legend, in its own column right of the chart so it never hides a point.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawFailure> {
    let font = (FAMILY, 12).into_font();
    // Tighten the rows when many series (several peers x modes x percentiles) must fit.
    let entries = (panel.series.len() + panel.bands.len()).max(1) as i32;
    let (_, h) = area.dim_in_pixel();
    let row = ((h as i32 - 50) / entries).clamp(12, 20);
    let mut y = 40;
    let x = 6;
    for s in &panel.series {
        if s.reference {
            let style = s.colour.stroke_width(2);
            area.draw(&PathElement::new(vec![(x, y), (x + 7, y)], style))?;
            area.draw(&PathElement::new(vec![(x + 19, y), (x + 26, y)], style))?;
            area.draw(&Circle::new((x + 13, y), 5, WHITE.filled()))?;
            area.draw(&Circle::new((x + 13, y), 5, style))?;
        } else {
            let style = s.colour.stroke_width(2);
            area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], style))?;
            let c = (x + 13, y);
            match s.marker {
                Marker::Circle => area.draw(&Circle::new(c, 4, s.colour.filled()))?,
                Marker::Triangle => area.draw(&TriangleMarker::new(c, 5, s.colour.filled()))?,
                Marker::Cross => area.draw(&Cross::new(c, 4, style))?,
            }
        }
        area.draw(&Text::new(s.label.clone(), (x + 34, y - 7), font.clone()))?;
        y += row;
    }
    for b in &panel.bands {
        area.draw(&Rectangle::new(
            [(x, y - 6), (x + 26, y + 6)],
            BAND.mix(0.15).filled(),
        ))?;
        area.draw(&Rectangle::new([(x, y - 6), (x + 26, y + 6)], BAND))?;
        area.draw(&Text::new(b.label.clone(), (x + 34, y - 7), font.clone()))?;
        y += row;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_carry_units() {
        assert_eq!(Fmt::Count.format(10_000.0), "10k");
        assert_eq!(Fmt::Count.format(1_000_000.0), "1M");
        assert_eq!(Fmt::Count.format(250.0), "250");
        assert_eq!(Fmt::Bytes.format(2_500_000_000.0), "2.5 GB");
        assert_eq!(Fmt::Bytes.format(512.0), "512 B");
        assert_eq!(Fmt::Plain.format(0.25), "0.25");
        assert_eq!(Fmt::Plain.format(12.0), "12");
    }
}
