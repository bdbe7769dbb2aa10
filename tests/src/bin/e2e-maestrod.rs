//! The maestrod binary, built inside the test package.

fn main() -> std::process::ExitCode {
    maestrod::cli::main()
}
