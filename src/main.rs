//! The `ceredis` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    ceredis::cli::main()
}
