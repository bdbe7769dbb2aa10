//! The `maestrod` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    maestrod::cli::main()
}
