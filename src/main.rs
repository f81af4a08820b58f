//! The `nekhebet-store` binary: everything lives in the library; see `cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    nekhebet_store::cli::main()
}
