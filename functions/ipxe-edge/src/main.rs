//! `ipxe-edge`: the operator's tool. `serve` runs the whole service on one machine; the other
//! commands manage certificates, gateways, releases and channels in the embedded store
//! (`--data DIR`) or a real bucket (`--bucket NAME`). This file only parses and dispatches.

use clap::{CommandFactory, FromArgMatches};
use ipxe_edge::commands::config_file::{self, ConfigFile};
use ipxe_edge::commands::{ca, channel, gateway, image, import, preview, release, Cli, Command};
use ipxe_edge::ops::{BackendArgs, Deployment, OpError};
use ipxe_edge::serve;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: `serve` allocates on every request on every runtime thread, where it costs a
/// boot less CPU than glibc's allocator (the serve_throughput benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc options by their place in `mi_option_e` of the mimalloc 3 that libmimalloc-sys
/// 0.1.49 builds (the crate names no constants for them). Committing arenas only as they fill,
/// and giving freed pages back after 10 ms instead of a second, keep a boot storm's resident
/// memory within bounds (boot_storm benchmark).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's options before its own start-up reserves the first arena: an `.init_array`
/// entry with a priority runs before the unprioritised ones (mimalloc's among them).
#[used]
#[link_section = ".init_array.00100"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

extern "C" fn configure_allocator() {
    // SAFETY: sets one option value in mimalloc's static table; nothing else runs yet.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

/// Why the process failed: an operation, or `serve` (always exit 1).
enum Failure {
    Op(OpError),
    Serve(serve::ServeError),
}

impl Failure {
    /// 2 for a mistake in what was asked (as clap's own usage errors), 1 for anything else.
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Op(e) if e.is_invalid_input() => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Op(e) => e.fmt(f),
            Failure::Serve(e) => e.fmt(f),
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let command = match cli.command {
        Command::Serve(args) => return serve::run(cli.data, cli.backends, *args).await.map_err(Failure::Serve),
        other => other,
    };
    operate(cli.data, &cli.backends, command).await.map_err(Failure::Op)
}

async fn operate(data: PathBuf, backends: &BackendArgs, command: Command) -> Result<(), OpError> {
    let ctx = Deployment::open(data, backends).await?;
    match command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Ca(cmd) => ca::run(&ctx, cmd).await,
        Command::Gateway(cmd) => gateway::run(&ctx, cmd).await,
        Command::Release(cmd) => release::run(&ctx, cmd).await,
        Command::Channel(cmd) => channel::run(&ctx, cmd).await,
        Command::Preview(args) => preview::run(&ctx, args).await,
        Command::Import(cmd) => import::run(&ctx, cmd).await,
        Command::Image(cmd) => image::run(&ctx, cmd).await,
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    // `serve --config FILE`: the file's values become the flags' defaults, checked before
    // anything else happens.
    let file = match config_file::config_path(&args).map(|path| ConfigFile::read(&path, &cmd)) {
        Some(Ok(file)) => Some(file),
        Some(Err(e)) => {
            eprintln!("ipxe-edge: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    if let Some(file) = &file {
        cmd = file.apply(cmd);
    }
    let matches = cmd.try_get_matches_from_mut(&args).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let print_config = matches!(&cli.command, Command::Serve(serve) if serve.print_config);
    if print_config || !matches!(cli.command, Command::Serve(_)) {
        // An operator command whose reader went away (`gateway list | head`) ends quietly, as
        // other command-line tools do, instead of failing on its next write. `serve` keeps the
        // default of ignoring the signal: its sockets report a closed peer as an error.
        // SAFETY: restores the default disposition of one signal before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if print_config {
        let mut declared = Cli::command();
        declared.build();
        print!("{}", config_file::print_config(&declared, &matches, file.as_ref()));
        return ExitCode::SUCCESS;
    }
    // Everything this process creates (data directory, embedded bucket, ledger, journal, files
    // the embedded S3 endpoint writes) is for its owner only; files meant to be shared are
    // given their mode explicitly.
    // SAFETY: umask only changes this process's file creation mask; no memory is involved.
    unsafe {
        libc::umask(0o077);
    }
    /// Threads for blocking file work (see below).
    const BLOCKING_THREADS: usize = 16;
    // glibc's allocator still serves the C libraries (aws-lc): few arenas, since an arena per
    // thread keeps freed memory resident.
    // SAFETY: mallopt only tunes the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // One process-wide TLS provider for the clients that do not name one (the ACME client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if matches!(cli.command, Command::Serve(_)) {
        ipxe_edge_core::lambda::logging::init();
    }
    // Record, ledger and journal files that miss the record cache are read and written on
    // blocking threads; each is short (page cache, small files), so a few threads keep up, and
    // a boot storm queues its file work instead of growing threads whose stacks and heaps stay
    // resident.
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("ipxe-edge: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipxe-edge: {}", e.to_string().replace('\n', " "));
            e.exit_code()
        }
    }
}
