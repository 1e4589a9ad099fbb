//! report.html: one self-contained page (inline CSS, SVG charts inline, no external
//! asset), so it can be mailed or attached to an issue as one file.

use crate::tables::Table;
use crate::Report;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn table(t: &Table) -> String {
    let mut s = String::from("<table>\n<thead><tr>");
    for h in &t.headers {
        s.push_str(&format!("<th>{}</th>", escape(h)));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        s.push_str("<tr>");
        for c in r {
            s.push_str(&format!("<td>{}</td>", escape(c)));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s
}

const STYLE: &str =
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}\
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}\
figure{margin:1.5em 0}figure svg{max-width:100%;height:auto}\
.note{background:#fff6d5;border:1px solid #e6d28a;padding:.6em 1em}\
.caveat{color:#555;font-size:14px}";

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(&format!("<title>{}</title>\n", escape(&r.title)));
    s.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    s.push_str(&format!("<h1>{}</h1>\n", escape(&r.title)));
    if let Some(n) = &r.note {
        s.push_str(&format!("<p class=\"note\">{}</p>\n", escape(n)));
    }
    s.push_str("<h2>Environment</h2>\n");
    s.push_str(&table(&r.env));
    s.push_str("<h2>Steps</h2>\n");
    s.push_str(&table(&r.steps));
    s.push_str("<h2>Charts</h2>\n<p class=\"caveat\">Solid lines and filled markers are measured in this run; \
        dashed lines and hollow circles are the seed document's claims (not measured here); shaded bands are the seed's capacity rules.</p>\n");
    for f in &r.scaling {
        s.push_str(&format!(
            "<figure id=\"{}\">\n{}\n</figure>\n",
            escape(&f.name),
            f.svg
        ));
    }
    s.push_str("<h2>Capacity planning</h2>\n<h3>Measured costs against the seed's rules</h3>\n");
    s.push_str(&table(&r.rules));
    for (title, t) in &r.plans {
        s.push_str(&format!("<h3>What {} needs</h3>\n", escape(title)));
        s.push_str(&table(t));
    }
    s.push_str(&format!(
        "<p>{}</p>\n<ul class=\"caveat\">\n",
        escape(&r.host)
    ));
    for c in &r.caveats {
        s.push_str(&format!("<li>{}</li>\n", escape(c)));
    }
    s.push_str("</ul>\n");
    if !r.timeseries.is_empty() {
        s.push_str("<h2>Per-step time series</h2>\n");
        for f in &r.timeseries {
            s.push_str(&format!(
                "<figure id=\"{}\">\n{}\n</figure>\n",
                escape(&f.name),
                f.svg
            ));
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}
