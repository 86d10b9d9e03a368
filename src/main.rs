//! The `amivm` command-line entry point: everything lives in the library, see `amivm::cli`.

fn main() {
    std::process::exit(amivm::cli::main());
}
