//! Results model, plots, HTML/Markdown reports and capacity planning.
