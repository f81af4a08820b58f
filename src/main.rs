//! The `nekhebet-store` binary: everything lives in the library; see `cli`.
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nekhebet_store::alloc::configure();
    nekhebet_store::cli::main()
}
