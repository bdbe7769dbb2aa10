//! The maestroctl binary, built inside the test package.

fn main() -> std::process::ExitCode {
    maestroctl::main()
}
