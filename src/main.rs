//! The `chatkpi` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;

/// jemalloc returns freed memory to the system far better than glibc's allocator under chatkpi's
/// pattern (large short-lived buffers on many threads): without it, the resident set of a
/// server holding 280 MB of query data grew to 420 MB (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use chatkpi::{
    cli,
    config::{Cli, Command},
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    let _telemetry = telemetry::init(args.log_format);
    match &args.command {
        Command::Serve(config) => {
            Application::build(config)
                .await?
                .run_until(shutdown_signal())
                .await
        }
        Command::Migrate(database) => cli::migrate(database).await,
        Command::Reproject { database, tenant } => cli::reproject(database, *tenant).await,
        Command::Tenant(command) => cli::tenant(command).await,
        Command::Import(a) => cli::import(a).await,
    }
}
