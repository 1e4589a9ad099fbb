//! summary.md: the same tables as report.html in Markdown, with the PNG charts
//! linked by relative path (for issues, pull requests and terminals).

use crate::tables::Table;
use crate::Report;

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn table(t: &Table) -> String {
    let mut s = format!(
        "| {} |\n|{}|\n",
        t.headers
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | "),
        t.headers
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- " } else { " ---: " })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in &t.rows {
        s.push_str(&format!(
            "| {} |\n",
            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        ));
    }
    s
}

pub fn render(r: &Report) -> String {
    let mut s = format!("# {}\n\n", r.title);
    if let Some(n) = &r.note {
        s.push_str(&format!("> **{n}**\n\n"));
    }
    s.push_str("## Environment\n\n");
    s.push_str(&table(&r.env));
    s.push_str("\n## Steps\n\n");
    s.push_str(&table(&r.steps));
    s.push_str("\n## Capacity planning\n\n### Measured costs against the seed's rules\n\n");
    s.push_str(&table(&r.rules));
    for (title, t) in &r.plans {
        s.push_str(&format!("\n### What {title} needs\n\n"));
        s.push_str(&table(t));
    }
    s.push_str(&format!("\n{}\n\n", r.host));
    for c in &r.caveats {
        s.push_str(&format!("- {c}\n"));
    }
    s.push_str("\n## Charts\n\nSolid lines and filled markers: measured. Dashed lines and hollow circles: the seed's claims. Shaded bands: the seed's rules.\n\n");
    for f in r.scaling.iter().chain(&r.timeseries) {
        s.push_str(&format!("![{}]({}.png)\n\n", f.title, f.name));
    }
    s
}
