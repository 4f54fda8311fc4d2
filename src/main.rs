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
    tracing::info!(admin = %running.admin_addr, grpc = ?running.grpc_addr, "xoflow started");
    running.wait().await
}
