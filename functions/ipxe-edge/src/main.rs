//! `ipxe-edge`: the operator's tool. `serve` runs the whole service on one machine.

mod datadir;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ipxe-edge", version, about = "Serverless iPXE boot server for CI farm gateways: operator tool and local server")]
struct Cli {
    /// Data directory of the embedded store and local PKI.
    #[arg(long, global = true, default_value = "./ipxe-edge-data", env = "IPXE_EDGE_DATA")]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the boot service locally: mTLS boot endpoint, secrets endpoint, embedded S3 and ledger.
    ///
    /// The first start on an empty data directory creates a CA, a server certificate, a demo
    /// gateway with its certificate and key, a placeholder release and the token key, then
    /// prints a curl command that boots as the demo gateway.
    ///
    /// Example: ipxe-edge serve --data ./ipxe-edge-data --public-host 10.0.2.2
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ipxe_edge_core::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipxe-edge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(cli.data, args).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ipxe-edge: {message}");
            ExitCode::FAILURE
        }
    }
}
