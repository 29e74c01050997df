fn main() {
    std::process::exit(cessfs::cli::main());
}
