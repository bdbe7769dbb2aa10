//! The `maestroctl` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    maestroctl::main()
}
