//! Renders a run directory: `cargo run -p speedmimi-reports --example render -- DIR`.
//! (`loadgen report DIR` is the user-facing command; this is for working on reports.)

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: render DIR   (DIR holds results.json and intervals.csv)");
        std::process::exit(2);
    };
    match reports::render(std::path::Path::new(&dir)) {
        Ok(paths) => println!("{}", paths.html.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
