//! The `nekhebet-store` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    nekhebet_store::cli::main()
}
