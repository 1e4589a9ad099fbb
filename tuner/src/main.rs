fn main() {
    std::process::exit(tuner::cli::main());
}
