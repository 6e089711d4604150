//! The `chatkpi` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;

use chatkpi::{
    cli,
    config::{Cli, Command},
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    telemetry::init(args.log_format);
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
    }
}
