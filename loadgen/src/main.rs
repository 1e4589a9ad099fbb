fn main() {
    eprintln!("loadgen: not built yet (see its issue)");
    std::process::exit(2);
}
