//! Rendering the fixture run (tests/fixtures: synthetic numbers, marked FIXTURE) must
//! give parseable SVGs, decodable non-blank PNGs, a self-contained HTML page and a
//! Markdown summary.

use std::fs;
use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture_copy(with_intervals: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        Path::new(FIXTURE).join("results.json"),
        dir.path().join("results.json"),
    )
    .unwrap();
    if with_intervals {
        fs::copy(
            Path::new(FIXTURE).join("intervals.csv"),
            dir.path().join("intervals.csv"),
        )
        .unwrap();
    }
    dir
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn writes_every_scaling_chart_and_one_time_series_per_step() {
    let dir = fixture_copy(true);
    let out = reports::render(dir.path()).unwrap();
    let svgs = names(&out.svgs);
    for chart in [
        "rps",
        "rps_per_core",
        "latency",
        "cpu",
        "memory",
        "memory_per_million",
    ] {
        assert!(
            svgs.contains(&chart.to_string()),
            "missing {chart}: {svgs:?}"
        );
    }
    // 4 speedmimi steps + 3 nginx steps in the fixture.
    assert_eq!(svgs.iter().filter(|n| n.starts_with("ts_")).count(), 7);
    assert_eq!(names(&out.pngs), svgs);
    assert_eq!(out.html, dir.path().join("report.html"));
    assert_eq!(out.summary, dir.path().join("summary.md"));
}

#[test]
fn svgs_are_well_formed_and_carry_axis_labels_and_legends() {
    let dir = fixture_copy(true);
    let out = reports::render(dir.path()).unwrap();
    for path in &out.svgs {
        let text = fs::read_to_string(path).unwrap();
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
    }
    let rps = fs::read_to_string(dir.path().join("rps.svg")).unwrap();
    for label in [
        "concurrent connections (log scale)",
        "requests/s",
        "speedmimi closed",
        "speedmimi hold",
        "nginx",
        "seed claim (16 cores)",
        "100k",
        "1M",
    ] {
        assert!(rps.contains(label), "rps.svg lacks {label:?}");
    }
    // Reference points (the seed, colour #282828) are drawn as many short dashes and
    // hollow circles (outline, no fill); measured markers are filled.
    let dashes = rps
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.contains("stroke=\"#282828\""))
        .count();
    assert!(dashes >= 10, "seed line has {dashes} dashes");
    let hollow = rps
        .lines()
        .filter(|l| {
            l.starts_with("<circle") && l.contains("fill=\"none\"") && l.contains("#282828")
        })
        .count();
    assert_eq!(hollow, 3 + 1, "3 seed points + 1 legend sample, hollow");
    let filled_blue = rps
        .lines()
        .filter(|l| l.starts_with("<circle") && l.contains("fill=\"#1F77B4\""))
        .count();
    assert_eq!(
        filled_blue,
        3 + 1,
        "3 speedmimi closed points + 1 legend sample, filled"
    );
    let mem = fs::read_to_string(dir.path().join("memory_per_million.svg")).unwrap();
    assert!(mem.contains("seed rule 2-4 GB per 1M"));
    assert!(mem.contains("GB"));
}

#[test]
fn pngs_decode_at_the_figure_size_and_are_not_blank() {
    let dir = fixture_copy(true);
    let out = reports::render(dir.path()).unwrap();
    for path in &out.pngs {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, 1000, "{}", path.display());
        assert!(info.height >= 400, "{}", path.display());
        let pixels = &buf[..info.buffer_size()];
        // Text, lines and markers: many pixels are neither white nor a single colour.
        let dark = pixels
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 100))
            .count();
        assert!(
            dark > 2000,
            "{} looks blank ({dark} dark pixels)",
            path.display()
        );
    }
}

#[test]
fn html_is_self_contained_with_every_chart_inline() {
    let dir = fixture_copy(true);
    let out = reports::render(dir.path()).unwrap();
    let html = fs::read_to_string(&out.html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), out.svgs.len());
    assert_eq!(html.matches("</svg>").count(), out.svgs.len());
    for external in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(external), "report.html has {external:?}");
    }
    assert!(html.contains("FIXTURE: synthetic numbers"));
    assert!(html.contains("Capacity planning"));
    assert!(html.contains("What 10,000,000 concurrent connections at 80,000 requests/s needs"));
}

#[test]
fn summary_has_the_tables_and_links_the_pngs() {
    let dir = fixture_copy(true);
    let out = reports::render(dir.path()).unwrap();
    let md = fs::read_to_string(&out.summary).unwrap();
    assert!(md.contains("| target | round | step | mode |"));
    assert!(md.contains(
        "| speedmimi | requests/s per busy core | 44,444 | 10,000-20,000 | above the range |"
    ));
    // The fixture records no slab: the figure says so and is marked a lower bound.
    assert!(md.contains(
        "| measured: speedmimi (memory: proxy RSS peak + kernel socket buffers; slab not measured) | 44,444 | 6,270 |"
    ));
    assert!(md.contains(
        "| speedmimi | GB per 1M connections (proxy RSS peak + kernel socket buffers; slab not measured) | 6.27 | 2-4 | above the range (a lower bound: slab not measured) |"
    ));
    assert!(md.contains("| seed rules, cautious end | 10,000 | 4,000 | 8.0 | 12 |"));
    for png in &out.pngs {
        let name = png.file_name().unwrap().to_string_lossy();
        assert!(
            md.contains(&format!("({name})")),
            "summary.md lacks a link to {name}"
        );
    }
}

#[test]
fn slab_growth_is_counted_and_named_in_the_summary_and_charts() {
    let dir = fixture_copy(true);
    let mut data = reports::load_dir(dir.path()).unwrap();
    // 3.2 KB of slab per connection on every speedmimi step, as a bench run now records.
    for s in data
        .run
        .steps
        .iter_mut()
        .filter(|s| s.target == "speedmimi")
    {
        s.kernel.slab_unreclaim_grown_bytes = Some(s.peak_open * 3_200);
        s.proxy.rss_start_bytes = Some(3_000_000);
    }
    reports::save_dir(dir.path(), &data).unwrap();
    let out = reports::render(dir.path()).unwrap();
    let md = fs::read_to_string(&out.summary).unwrap();
    // (292 MB sockets + 18.5 MB RSS grown + 160 MB slab) / 50,000 = 9,410 bytes.
    assert!(md.contains(
        "| measured: speedmimi (memory: proxy RSS grown + kernel socket buffers + kernel slab grown) | 44,444 | 9,410 |"
    ), "{md}");
    assert!(md.contains("| 9.41 | 2-4 | above the range |"), "{md}");
    assert!(md.contains("160 MB slab"), "{md}");
    // nginx has none: still rendered, marked.
    assert!(md.contains(
        "| nginx | GB per 1M connections (proxy RSS peak + kernel socket buffers; slab not measured) |"
    ));
    assert!(md.contains("| kernel slab grown |"));
    assert!(md.contains("not measured |"));
    let mem = fs::read_to_string(dir.path().join("memory_per_million.svg")).unwrap();
    roxmltree::Document::parse(&mem).unwrap();
    assert!(mem.contains("speedmimi hold total\n"), "{mem}");
    assert!(mem.contains("nginx total, no slab"));
    assert!(mem.contains(
        "Memory per 1M connections: proxy RSS grown or peak + socket buffers + slab where measured"
    ));
    let total = fs::read_to_string(dir.path().join("memory.svg")).unwrap();
    assert!(total.contains("speedmimi hold kernel slab grown"));
}

#[test]
fn without_slab_the_charts_say_it_was_not_measured() {
    let dir = fixture_copy(false);
    reports::render(dir.path()).unwrap();
    let mem = fs::read_to_string(dir.path().join("memory_per_million.svg")).unwrap();
    assert!(mem.contains("slab not measured"));
    assert!(mem.contains("speedmimi hold total, no slab"));
}

#[test]
fn renders_without_intervals_csv_leaving_out_time_series() {
    let dir = fixture_copy(false);
    let out = reports::render(dir.path()).unwrap();
    assert!(names(&out.svgs).iter().all(|n| !n.starts_with("ts_")));
    assert_eq!(out.svgs.len(), 6);
}

#[test]
fn missing_results_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = reports::render(dir.path()).unwrap_err().to_string();
    assert!(err.contains("results.json"), "{err}");
}
