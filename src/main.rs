//! The `xoflow` binary: parses the command line and the configuration,
//! starts logging and metrics, runs the chosen command, and exits when it is
//! done or SIGTERM has drained it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xoflow::{Config, Stages, demo};
use xoflow_common::{shutdown::Shutdown, telemetry};

// Every stage allocates per batch in bursts (decoded records, encoded
// outputs); glibc's malloc spent a fifth of the enrich stage's time in
// consolidation and free-list upkeep. mimalloc's thread-local pages do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the alert stage: deliver alerts to the departments' webhooks,
    /// record them in ClickHouse, serve the case API (ack / resolve).
    Alert,
    /// Run every stage in one process.
    Run,
    /// Serve the console alone (admin address, `/console`), showing the
    /// stages of the processes listed in `console.targets`.
    Console,
    /// Create or upgrade the ClickHouse schema, then exit.
    Migrate {
        /// Print every statement it would run on an empty database (for one
        /// server, or rewritten for `clickhouse.cluster`) and exit without
        /// connecting.
        #[arg(long)]
        print: bool,
    },
    /// Identity data from outside the event stream.
    Identities {
        #[command(subcommand)]
        command: IdentitiesCommand,
    },
    /// Send dead letters through ingest again, fixed: the rows of
    /// `dead_letters` never replayed that match the filters, with the
    /// fix-ups applied in order, on the backfill lane with their original
    /// ids; each row is then marked so that no replay sends it twice.
    /// docs/collectors.md, "Replaying dead letters".
    Replay {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this reason (INVALID, MISSING, OUT_OF_RANGE, ...).
        #[arg(long)]
        reason: Option<String>,
        /// Only this field at fault (e.g. order.currency).
        #[arg(long)]
        field: Option<String>,
        /// Refused at or after (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Refused before (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// The records are a source's native JSON of this kind (survey,
        /// call, social, order, click), not canonical events.
        #[arg(long)]
        kind: Option<String>,
        /// Set a field of every record: PATH=VALUE (e.g. order.currency=CNY).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Replace a value: PATH:FROM=TO (e.g. order.currency:rmb=CNY).
        #[arg(long = "map")]
        map: Vec<String>,
        /// Remove a field: PATH.
        #[arg(long = "drop")]
        drop: Vec<String>,
        /// Most dead letters per run.
        #[arg(long, default_value_t = 100_000)]
        limit: u64,
        /// Count what would be replayed; send nothing, mark nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete the rows older than each tenant's retention (`[retention]`)
    /// from ClickHouse, and print what went; run it daily. docs/privacy.md.
    Retention {
        /// Count what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Forget a customer (PIPL, GDPR): anonymise their rows in every
    /// ClickHouse table, delete their profile, remove their links and join
    /// state from Kafka and from running enrich instances, and record a
    /// receipt without the personal data (printed as JSON). Idempotent.
    /// docs/privacy.md.
    Erase {
        /// The tenant the customer belongs to.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        subject: EraseSubject,
    },
    /// Print, per partition of the sink's input topics, Kafka's high
    /// watermark, the sink group's committed offset and what ClickHouse
    /// stores (reconciliation); exits 1 if a committed offset is not stored.
    SinkStatus,
    /// Generate a week of data, run the whole pipeline on it, and print
    /// what BI sees in ClickHouse beside the generator's ground truth.
    Demo {
        #[command(flatten)]
        generator: GenArgs,
        /// Events per gRPC request.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
    },
    /// Measure every stage against its raw baseline on the configured broker
    /// and ClickHouse; prints a table, writes JSON and Markdown.
    Bench {
        /// Events per measurement.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Times the whole table is measured (each row reported as the
        /// median with its spread).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Seconds the open loop runs at half the peak (and alerts are fed).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Seconds the open loop runs at twice the peak.
        #[arg(long, default_value_t = 20.0)]
        overload_seconds: f64,
        /// Where to write results.json, results-runs.json and results.md.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Only these measurements (comma-separated); all by default.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<xoflow::bench::Part>,
        /// Keep every record the whole pipeline consumed until its
        /// measurement ends (the method before 2026-12-06); by default
        /// what every group reading a topic committed is deleted every 2 s,
        /// as a broker's retention would.
        #[arg(long)]
        keep_consumed: bool,
        /// First day of the generated week (YYYY-MM-DD, UTC); default: the
        /// seven days before today, or the last seven days of last month
        /// when those would reach into this one (BENCHMARKS.md, "The
        /// generated week in one month").
        #[arg(long)]
        start: Option<String>,
    },
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
    /// Generate realistic customer-experience data with its ground truth:
    /// to NDJSON files, or straight to a collector at a target rate.
    Gen {
        #[command(flatten)]
        generator: GenArgs,
        /// Directory for events.ndjson and truth.json.
        #[arg(long, default_value = "xoflow-gen")]
        out: PathBuf,
        /// Send to this gRPC collector (http://host:port) instead of files.
        #[arg(long)]
        grpc: Option<String>,
        /// Target events per second when sending (open loop); unlimited if unset.
        #[arg(long)]
        rate: Option<f64>,
        /// Events per request when sending.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Requests in flight when sending.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

/// Exactly one identifier of the customer to erase.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct EraseSubject {
    /// The tenant's customer id.
    #[arg(long)]
    customer: Option<String>,
    /// An e-mail address (hashed with the tenant's key, as ingest does).
    #[arg(long)]
    email: Option<String>,
    /// A phone number.
    #[arg(long)]
    phone: Option<String>,
    /// A social-media handle.
    #[arg(long)]
    handle: Option<String>,
}

#[derive(Debug, Subcommand)]
enum IdentitiesCommand {
    /// Seed enrich's link table from a CRM export: one row per customer,
    /// `customer_id` plus any of `email`, `phone`, `social_handle`,
    /// `device_id` (CSV with a header row, or NDJSON). Identifiers are
    /// hashed exactly as the collectors hash them; a re-run changes nothing;
    /// a row that moves an identifier to another customer is counted and
    /// logged.
    Import {
        file: PathBuf,
        /// csv or ndjson.
        #[arg(long, default_value = "csv")]
        format: String,
        /// The tenant whose key hashes the identifiers.
        #[arg(long)]
        tenant: String,
        /// Links per produce.
        #[arg(long, default_value_t = 10_000)]
        chunk: usize,
    },
}

/// What to generate.
#[derive(Debug, clap::Args)]
struct GenArgs {
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days to simulate.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// First day (YYYY-MM-DD, UTC); default: `days` days before today.
    #[arg(long)]
    start: Option<String>,
    /// Multiplies the number of customers (1.0 is about 150k events a week).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Share of records made malformed on purpose.
    #[arg(long, default_value_t = 0.005)]
    invalid_share: f64,
    /// Arrival order: by event time, shuffled (from the seed), or every
    /// survey, call and post before every order and click.
    #[arg(long, value_enum, default_value_t = xoflow::datagen::ArrivalOrder::Time)]
    order: xoflow::datagen::ArrivalOrder,
}

impl GenArgs {
    fn config(&self) -> anyhow::Result<xoflow::datagen::GenConfig> {
        let start_ms = match &self.start {
            Some(date) => xoflow::datagen::parse_date(date)?,
            None => xoflow::datagen::days_before_today(
                xoflow_common::clock::now_unix_millis(),
                self.days,
            ),
        };
        Ok(xoflow::datagen::GenConfig {
            seed: self.seed,
            start_ms,
            days: self.days,
            scale: self.scale,
            invalid_share: self.invalid_share,
            order: self.order,
        })
    }
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
        Command::Alert => Stages::ALERT,
        Command::Run => Stages::ALL,
        Command::Console => Stages::NONE,
        Command::Migrate { print: true } => {
            print!("{}", xoflow_sink::migrate::script(&cfg.clickhouse)?);
            return Ok(());
        }
        Command::Migrate { print: false } => {
            let report = xoflow_sink::migrate(&cfg.clickhouse).await?;
            println!(
                "database {}: applied {:?}, already present {:?}, skipped (the server lacks what they need) {:?}",
                cfg.clickhouse.database, report.applied, report.present, report.skipped
            );
            return Ok(());
        }
        Command::SinkStatus => return sink_status(&cfg).await,
        Command::Demo { generator, batch } => {
            let generator = generator.config()?;
            return demo::run(cfg, demo::DemoOptions { generator, batch }).await;
        }
        Command::Bench {
            events,
            runs,
            seconds,
            overload_seconds,
            out,
            only,
            keep_consumed,
            start,
        } => {
            let opts = xoflow::bench::Options {
                events,
                runs,
                half_secs: seconds,
                overload_secs: overload_seconds,
                only,
                keep_consumed,
                start_ms: start
                    .as_deref()
                    .map(xoflow::datagen::parse_date)
                    .transpose()?,
            };
            xoflow::bench::run(cfg, &opts, &out).await?;
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
        Command::Replay {
            tenant,
            reason,
            field,
            since,
            until,
            kind,
            set,
            map,
            drop,
            limit,
            dry_run,
        } => {
            use xoflow::replay::{Fixup, ReplayOptions, parse_time, replay};
            let mut fixups = Vec::new();
            for s in &set {
                fixups.push(Fixup::parse_set(s).map_err(anyhow::Error::msg)?);
            }
            for m in &map {
                fixups.push(Fixup::parse_map(m).map_err(anyhow::Error::msg)?);
            }
            for d in drop {
                fixups.push(Fixup::Drop { path: d });
            }
            let time = |t: Option<String>| {
                t.map(|t| parse_time(&t).map_err(anyhow::Error::msg))
                    .transpose()
            };
            let opts = ReplayOptions {
                tenant,
                reason,
                field,
                since: time(since)?,
                until: time(until)?,
                kind: kind
                    .map(|k| {
                        xoflow_proto::EventKind::parse(&k).with_context(|| {
                            format!("unknown --kind {k:?}: survey, call, social, order, click")
                        })
                    })
                    .transpose()?,
                fixups,
                limit,
                dry_run,
            };
            let t = &cfg.kafka.topics;
            cfg.kafka
                .ensure_topics(&[&t.backfill, &t.dead_letters])
                .await
                .context("creating the backfill and dead-letter topics")?;
            let r = replay(&cfg, &opts).await?;
            if dry_run {
                println!("{} dead letters would be replayed", r.selected);
            } else {
                println!(
                    "replay {}: {} dead letters selected: {} accepted onto {}, {} refused again (new dead letters), {} unreplayable; all marked",
                    r.replay_id, r.selected, r.accepted, t.backfill, r.refused, r.unreplayable
                );
                for (id, field, reason) in &r.first_refusals {
                    println!("  {id}: {field} {reason}");
                }
            }
            return Ok(());
        }
        Command::Retention { dry_run } => {
            xoflow_sink::migrate(&cfg.clickhouse).await?;
            let report = xoflow_sink::clickhouse::retention::enforce(
                &cfg.clickhouse,
                &cfg.retention,
                dry_run,
            )
            .await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!("{:<24} {:<20} {:>12}", "tenant", "table", verb);
            for ((tenant, table), rows) in &report {
                println!("{tenant:<24} {table:<20} {rows:>12}");
            }
            if report.is_empty() {
                println!("no tenant has a retention configured ([retention] in the configuration)");
            }
            return Ok(());
        }
        Command::Erase { tenant, subject } => {
            use xoflow::erase::Subject;
            let subject = match subject {
                EraseSubject {
                    customer: Some(c), ..
                } => Subject::Customer(c),
                EraseSubject { email: Some(e), .. } => Subject::Email(e),
                EraseSubject { phone: Some(p), .. } => Subject::Phone(p),
                EraseSubject {
                    handle: Some(h), ..
                } => Subject::Handle(h),
                _ => anyhow::bail!("one of --customer, --email, --phone, --handle is required"),
            };
            let receipt = xoflow::erase::erase(&cfg, &tenant, subject, "cli").await?;
            println!("{}", receipt.json());
            if !receipt.found {
                eprintln!("nothing was held for this subject: no change");
            }
            return Ok(());
        }
        Command::Identities {
            command:
                IdentitiesCommand::Import {
                    file,
                    format,
                    tenant,
                    chunk,
                },
        } => return import_identities(&cfg, &file, &format, &tenant, chunk).await,
        Command::Gen {
            generator,
            out,
            grpc,
            rate,
            batch,
            concurrency,
        } => {
            let opts = xoflow::datagen::load::LoadOptions {
                batch,
                rate,
                concurrency,
            };
            return xoflow::datagen::cli(generator.config()?, &out, grpc.as_deref(), &opts).await;
        }
    };
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let running = xoflow::start(cfg, stages, shutdown).await?;
    tracing::info!(admin = %running.admin_addr, grpc = ?running.grpc_addr, http = ?running.http_addr, "xoflow started");
    running.wait().await
}

/// `xoflow sink-status`: the reconciliation lives in `xoflow_sink`; this
/// prints it as a table and fails when a committed offset is not stored
/// (copies the sink dropped on purpose are not a gap: column `copies`).
/// `high` is the broker's high watermark raised to `stored_next` and
/// `committed`, never below an offset known to exist.
async fn sink_status(cfg: &Config) -> anyhow::Result<()> {
    let rows = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id).await?;
    println!(
        "{:<36} {:>4} {:>12} {:>12} {:>12} {:>10} {:>12} {:>8} {:>6}",
        "topic", "part", "high", "committed", "stored_next", "lag", "rows", "copies", "gap"
    );
    let mut gaps = 0;
    for r in &rows {
        let committed = r.committed.map_or_else(|| "-".into(), |c| c.to_string());
        gaps += r.gap();
        println!(
            "{:<36} {:>4} {:>12} {:>12} {:>12} {:>10} {:>12} {:>8} {:>6}",
            r.topic,
            r.partition,
            r.high_watermark,
            committed,
            r.stored_next,
            r.lag(),
            r.rows_stored,
            r.dropped_copies,
            r.gap()
        );
    }
    println!(
        "high: the broker's high watermark, raised to stored_next and committed when it answers behind them; \
         copies: offsets past stored_next holding copies of events already stored (dropped on purpose)"
    );
    anyhow::ensure!(
        gaps == 0,
        "{gaps} committed offsets are not stored in ClickHouse"
    );
    Ok(())
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
    let ingestor = xoflow_ingest::build(&cfg.ingest, &cfg.kafka).map_err(anyhow::Error::msg)?;
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

async fn import_identities(
    cfg: &Config,
    file: &std::path::Path,
    format: &str,
    tenant: &str,
    chunk: usize,
) -> anyhow::Result<()> {
    use xoflow_ingest::{
        identities::{IdentitiesError, IdentityReader},
        import::Format,
    };
    let format = match format {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        other => anyhow::bail!("--format {other:?}: csv or ndjson"),
    };
    let reader = IdentityReader::new(&cfg.ingest, tenant)?;
    let mut seeder = xoflow_enrich::identities::Seeder::open(&cfg.kafka, &cfg.enrich)
        .await
        .context("reading the link table")?;
    let before = seeder.known();
    // The file is read on a blocking thread; chunks of links come over a
    // short queue, so a large file never sits in memory whole.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, String)>>(4);
    let path = file.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        reader.read(&path, format, chunk.max(1), true, |links| {
            tx.blocking_send(links)
                .map_err(|_| IdentitiesError::Stopped)
        })
    });
    while let Some(links) = rx.recv().await {
        seeder.seed(links).await.context("writing links")?;
    }
    let (refused, rows) = read.await??;
    let r = seeder.report();
    println!(
        "{}: {rows} rows; links {} new, {} unchanged, {} re-pointed to another customer; {} rows refused; the table holds {} links (was {before})",
        file.display(),
        r.new,
        r.unchanged,
        r.repointed,
        refused.len(),
        seeder.known()
    );
    for f in refused.iter().take(10) {
        println!("  line {}: {}: {}", f.line, f.field, f.reason);
    }
    Ok(())
}
