//! The `xoflow` binary: parses the command line and the configuration,
//! starts logging and metrics, runs the chosen command, and exits when it is
//! done or SIGTERM has drained it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xoflow::{Config, Stages, demo};
use xoflow_common::{shutdown::Shutdown, telemetry};

/// Customer-experience event pipeline: surveys, calls and posts fused with
/// orders and clicks, per customer and touchpoint, in ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "xoflow", version)]
struct Cli {
    /// TOML configuration file; every setting has a default
    /// (deploy/config/xoflow.toml) and an XOFLOW_SECTION__KEY override.
    #[arg(long, short, global = true, env = "XOFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collectors (gRPC API).
    Ingest,
    /// Run the enrichment stage.
    Enrich,
    /// Run the ClickHouse sink.
    Sink,
    /// Run all three stages in one process.
    Run,
    /// Create or upgrade the ClickHouse schema, then exit.
    Migrate,
    /// Bulk-import history from a file onto the backfill lane; idempotent on
    /// re-run (event ids derive from natural ids).
    Import {
        /// The file to import.
        file: PathBuf,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "csv"])]
        format: String,
        /// Native records of this source kind (survey, call, social, order,
        /// click); canonical Event JSON when absent (ndjson only).
        #[arg(long)]
        kind: Option<String>,
        /// Tenant of native records.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Source name recorded on native records.
        #[arg(long, default_value = "import")]
        source: String,
        /// Records per Kafka batch.
        #[arg(long, default_value_t = 5_000)]
        chunk: usize,
    },
    /// Run the pipeline on sample data and print what BI would see.
    Demo {
        /// How many events to send.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// Seed of the sample data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Events per gRPC request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    telemetry::init_logging(&cfg.log);
    let stages = match cli.command {
        Command::Ingest => Stages::INGEST,
        Command::Enrich => Stages::ENRICH,
        Command::Sink => Stages::SINK,
        Command::Run => Stages::ALL,
        Command::Migrate => {
            let report = xoflow_sink::migrate(&cfg.clickhouse).await?;
            println!(
                "database {}: applied {:?}, already present {:?}",
                cfg.clickhouse.database, report.applied, report.present
            );
            return Ok(());
        }
        Command::Import {
            file,
            format,
            kind,
            tenant,
            source,
            chunk,
        } => {
            return run_import(&cfg, &file, &format, kind.as_deref(), tenant, source, chunk).await;
        }
        Command::Demo {
            events,
            seed,
            batch,
        } => {
            return demo::run(
                cfg,
                demo::DemoOptions {
                    events,
                    seed,
                    batch,
                },
            )
            .await;
        }
    };
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let running = xoflow::start(cfg, stages, shutdown).await?;
    tracing::info!(admin = %running.admin_addr, grpc = ?running.grpc_addr, http = ?running.http_addr, "xoflow started");
    running.wait().await
}

/// `xoflow import`: the logic lives in `xoflow_ingest::import`.
async fn run_import(
    cfg: &Config,
    file: &std::path::Path,
    format: &str,
    kind: Option<&str>,
    tenant: String,
    source: String,
    chunk: usize,
) -> anyhow::Result<()> {
    use xoflow_ingest::import::{Format, ImportOptions};
    let kind = kind
        .map(|k| {
            xoflow_proto::EventKind::parse(k).with_context(|| {
                format!("unknown --kind {k:?}: survey, call, social, order, click")
            })
        })
        .transpose()?;
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.backfill, &t.dead_letters])
        .await
        .context("creating the backfill and dead-letter topics")?;
    let ingestor =
        xoflow_ingest::batch::build(&cfg.ingest, &cfg.kafka).map_err(anyhow::Error::msg)?;
    let opts = ImportOptions {
        format: if format == "csv" {
            Format::Csv
        } else {
            Format::Ndjson
        },
        kind,
        tenant,
        source,
        chunk,
        progress: true,
    };
    let report = xoflow_ingest::import::run(&ingestor, file, &opts).await?;
    println!(
        "{}: {} accepted onto {}, {} rejected (in {})",
        file.display(),
        report.accepted,
        t.backfill,
        report.rejected,
        t.dead_letters
    );
    for (n, field, reason, text) in &report.first_rejections {
        println!("  record {n}: {field} {reason}: {text}");
    }
    Ok(())
}
