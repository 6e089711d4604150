//! The `chatkpi` binary: parse the command line, set up logging, run the subcommand.

use clap::Parser;

/// jemalloc returns freed memory to the system far better than glibc's allocator under chatkpi's
/// pattern (large short-lived buffers on many threads): without it, the resident set of a
/// server holding 280 MB of query data grew to 420 MB (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at its start, in the form tikv-jemallocator documents): pages freed
/// are returned to the system 10 ms later by a background thread, so the resident set follows
/// what the cache holds (its byte budget, README "Memory is bounded in bytes") right after a
/// burst of query or load buffers, not only when later allocations happen to trigger a purge;
/// one arena per CPU (jemalloc's default is four) keeps fewer partly used pages apart. Measured
/// on the live tenant (BENCHMARKS.md, "Live tenants"; two arenas on its two CPUs): peak RSS 794
/// -> 655 MiB for the same cache with pages kept 250 ms. Returned at once (0 ms, sessions 22-23)
/// every free of a computation's buffers was an inline `madvise` with TLB shootdowns and the
/// next allocation faulted its pages in again: page faults, shootdowns and unmapping were 38 %
/// of the live tenant's server samples, and its overview took over 2x its settled time (issue
/// "live tenants"). Kept 10 ms, the buffers one computation frees serve its next allocations;
/// with histograms sized to their values (session 24) the 10-minute soak still peaks under the
/// budget plus 96 MiB (RELIABILITY.md, session 24).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,percpu_arena:percpu,dirty_decay_ms:10,muzzy_decay_ms:0\0";

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
