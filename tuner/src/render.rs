//! Text for people (aligned tables) and JSON for machines, for the commands whose
//! figures are not already rendered by their own module (show, capacity).

use crate::apply::{ApplyReport, Outcome, RestoreOutcome, RollbackReport};
use crate::output::{self, cell, Style, Table, Tone};
use crate::persist::PersistReport;
use crate::plan::{Row, Status};
use crate::profile::Profile;
use serde::Serialize;

#[derive(Serialize)]
struct CheckJson<'a> {
    profile: &'a str,
    ok: usize,
    off: usize,
    skipped: usize,
    keys: &'a [Row],
}

pub fn check(profile: &Profile, rows: &[Row], style: Style) -> String {
    let n = |s: Status| rows.iter().filter(|r| r.status == s).count();
    if style.json {
        return output::json(&CheckJson {
            profile: &profile.name,
            ok: n(Status::Ok),
            off: n(Status::Off),
            skipped: n(Status::Skipped),
            keys: rows,
        });
    }
    let mut t = Table::new(&["key", "current", "wanted", "status", "reason"]);
    for r in rows {
        let (label, tone) = match r.status {
            Status::Ok => ("ok", Tone::Good),
            Status::Off => ("off", Tone::Bad),
            Status::Skipped => ("skipped", Tone::Warn),
        };
        let reason = match &r.note {
            Some(note) if r.status == Status::Skipped => format!("{} [skipped: {note}]", r.reason),
            _ => r.reason.clone(),
        };
        t.row(vec![
            r.key.clone().into(),
            r.current.clone().unwrap_or_else(|| "-".into()).into(),
            r.wanted.clone().into(),
            cell(label, tone),
            reason.into(),
        ]);
    }
    let mut out = t.render(style.colour);
    out.push_str(&format!(
        "\nprofile {}: {} ok, {} off, {} skipped\n",
        profile.name,
        n(Status::Ok),
        n(Status::Off),
        n(Status::Skipped)
    ));
    out
}

pub fn apply(r: &ApplyReport, style: Style) -> String {
    if style.json {
        return output::json(r);
    }
    let mut t = Table::new(&["key", "before", "after", "result", "reason"]);
    for k in &r.keys {
        let tone = match k.outcome {
            Outcome::Unchanged | Outcome::Changed => Tone::Good,
            Outcome::WouldChange | Outcome::Partial | Outcome::Skipped => Tone::Warn,
            Outcome::Failed => Tone::Bad,
            Outcome::NotReached => Tone::Dim,
        };
        let reason = match (&k.failure, &k.note) {
            (Some(f), _) => format!("{} [{}]", k.reason, f.class.label()),
            (None, Some(n)) if k.outcome == Outcome::Skipped => {
                format!("{} [skipped: {n}]", k.reason)
            }
            _ => k.reason.clone(),
        };
        t.row(vec![
            k.key.clone().into(),
            k.before.clone().unwrap_or_else(|| "-".into()).into(),
            k.after.clone().unwrap_or_else(|| "-".into()).into(),
            cell(k.outcome.label(), tone),
            reason.into(),
        ]);
    }
    let mut out = t.render(style.colour);
    let count = |o: Outcome| r.keys.iter().filter(|k| k.outcome == o).count();
    if r.dry_run {
        out.push_str(&format!(
            "\nprofile {}: {} would change, {} already ok, {} skipped (dry run: nothing written)\n",
            r.profile,
            count(Outcome::WouldChange),
            count(Outcome::Unchanged),
            count(Outcome::Skipped)
        ));
        return out;
    }
    out.push_str(&format!(
        "\nprofile {}: {} changed, {} already ok, {} skipped, {} failed, {} partial, {} not reached\n",
        r.profile,
        count(Outcome::Changed),
        count(Outcome::Unchanged),
        count(Outcome::Skipped),
        count(Outcome::Failed),
        count(Outcome::Partial),
        count(Outcome::NotReached)
    ));
    let failures: Vec<_> = r.keys.iter().filter(|k| k.failure.is_some()).collect();
    if !failures.is_empty() {
        out.push_str("\nfailures:\n");
        for k in failures {
            let f = k.failure.as_ref().unwrap();
            out.push_str(&format!(
                "  {} [{}]\n    why: {}\n    fix: {}\n",
                style.paint(&k.key, Tone::Bad),
                f.class.label(),
                f.why,
                f.fix
            ));
        }
    }
    if let Some(k) = &r.stopped_at {
        out.push_str(&format!("\n--strict: stopped at {k}\n"));
    }
    match (&r.state_file, &r.undo) {
        (Some(s), Some(u)) => out.push_str(&format!(
            "\noriginals saved in {}\nundo: {u}\n",
            s.display()
        )),
        _ => out.push_str("\nnothing to change: no state saved\n"),
    }
    out
}

pub fn rollback(r: &RollbackReport, style: Style) -> String {
    if style.json {
        return output::json(r);
    }
    if !r.found {
        return format!(
            "nothing to roll back: no state file at {}\n",
            r.state_file.display()
        );
    }
    let mut t = Table::new(&["key", "was", "restored to", "result"]);
    for k in &r.keys {
        let (label, tone) = match k.outcome {
            RestoreOutcome::Restored => ("restored", Tone::Good),
            RestoreOutcome::AlreadyOriginal => ("already original", Tone::Good),
            RestoreOutcome::Gone => ("process gone", Tone::Dim),
            RestoreOutcome::Failed => ("FAILED", Tone::Bad),
        };
        t.row(vec![
            k.key.clone().into(),
            k.before.clone().unwrap_or_else(|| "-".into()).into(),
            k.original.clone().into(),
            cell(label, tone),
        ]);
    }
    let mut out = t.render(style.colour);
    for k in r.keys.iter().filter(|k| k.failure.is_some()) {
        let f = k.failure.as_ref().unwrap();
        out.push_str(&format!(
            "  {} [{}]: {}\n    fix: {}\n",
            k.key,
            f.class.label(),
            f.why,
            f.fix
        ));
    }
    out.push_str(&format!(
        "\nrolled back {}: state file {}\n",
        r.profiles.join(", "),
        if r.state_removed {
            "removed".to_string()
        } else {
            format!(
                "kept at {} (fix the failures and run rollback again)",
                r.state_file.display()
            )
        }
    ));
    out
}

pub fn persist(r: &PersistReport, style: Style) -> String {
    if style.json {
        return output::json(r);
    }
    let mut t = Table::new(&["file", "lines", "what"]);
    for f in &r.files {
        t.row(vec![
            f.path.display().to_string().into(),
            f.lines.to_string().into(),
            f.what.clone().into(),
        ]);
    }
    let mut out = t.render(style.colour);
    for (k, why) in &r.left_out {
        out.push_str(&format!("left out {k}: {why}\n"));
    }
    out.push_str(&format!("\nactivate: {}\nundo: {}\n", r.activate, r.undo));
    out
}

#[derive(Serialize)]
pub struct ProfileInfo {
    pub name: String,
    pub source: String,
    pub description: String,
    pub includes: Vec<String>,
    pub keys: usize,
    /// Set when the profile does not load.
    pub error: Option<String>,
}

pub fn profiles(list: &[ProfileInfo], style: Style) -> String {
    if style.json {
        return output::json(&list);
    }
    let mut t = Table::new(&["profile", "keys", "includes", "source", "what it is for"]);
    for p in list {
        t.row(vec![
            p.name.clone().into(),
            p.keys.to_string().into(),
            if p.includes.is_empty() {
                "-".to_string()
            } else {
                p.includes.join(",")
            }
            .into(),
            p.source.clone().into(),
            match &p.error {
                Some(e) => cell(format!("ERROR: {e}"), Tone::Bad),
                None => p.description.clone().into(),
            },
        ]);
    }
    t.render(style.colour)
}
