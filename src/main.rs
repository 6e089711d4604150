//! The `chatkpi` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;

/// jemalloc returns freed memory to the system far better than glibc's allocator under chatkpi's
/// pattern (large short-lived buffers on many threads): without it, the resident set of a
/// server holding 280 MB of query data grew to 420 MB (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at its start, in the form tikv-jemallocator documents): pages freed
/// are returned to the system at once (a background thread purges), so the resident set follows
/// what the cache holds (its byte budget, README "Memory is bounded in bytes") right after a
/// burst of query or load buffers, not only when later allocations happen to trigger a purge;
/// one arena per CPU (jemalloc's default is four) keeps fewer partly used pages apart. Measured
/// on the live tenant (BENCHMARKS.md, "Live tenants"; two arenas on its two CPUs): peak RSS 794
/// -> 655 MiB for the same cache with pages kept 250 ms; in the soak (RELIABILITY.md), pages
/// kept 250 ms made the resident set 50-100 MiB larger than the allocated bytes, returned at
/// once a steady 55 MiB. Returning at once costs the live tenant's questions CPU (inline
/// `madvise` and TLB shootdowns on every large free): kept 10 or 100 ms they met the live
/// ratios of issue "live tenants" where 0 did not, but the soak then peaked at 618 / 625 MiB
/// against 598, past the budget plus 96 MiB (BENCHMARKS.md, "Live tenants", session 23).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,percpu_arena:percpu,dirty_decay_ms:0,muzzy_decay_ms:0\0";

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
