//! The `ceredis` binary: everything lives in the library; see `cli`.

/// mimalloc rather than the C library's allocator: the request path parses, builds and drops
/// many small JSON values on several threads, where it is markedly cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ceredis::cli::main()
}
