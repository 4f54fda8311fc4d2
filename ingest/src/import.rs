//! Bulk import for backfills: NDJSON files of `xoflow.v1.Event` (proto3
//! canonical JSON, one per line, as `xoflow gen` writes them) sent on the
//! backfill lane, so a historical load never delays live data.
//!
//! The file is read in batches; each batch goes through the same
//! validation, delivery and dead-lettering as the live APIs. Re-running an
//! import is idempotent: events keep their ids, and the sink drops copies.
//! A line that is not an event is dead-lettered with its line number and the
//! import goes on; a batch the broker does not acknowledge stops the import
//! with the line to resume from.

use std::io::BufRead;

use xoflow_proto::v1::{DeadLetter, Event};

use crate::{IngestError, delivery::Lane, grpc::CollectorService, validate::Reason};

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub bytes: u64,
}

/// Why an import stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "batch starting at line {line} not acknowledged: {source}; resume with --skip-lines {skip}"
    )]
    Delivery {
        line: u64,
        skip: u64,
        #[source]
        source: IngestError,
    },
}

/// Imports NDJSON from `input`, `batch` lines at a time, calling `progress`
/// with the bytes read so far after each batch. `skip_lines` resumes an
/// interrupted import.
pub async fn import_ndjson<R: BufRead>(
    service: &CollectorService,
    mut input: R,
    batch: usize,
    skip_lines: u64,
    mut progress: impl FnMut(&ImportReport),
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let mut line = String::new();
    loop {
        let first_line = report.lines + 1;
        let mut events = Vec::with_capacity(batch);
        let mut dead = Vec::new();
        while events.len() + dead.len() < batch.max(1) {
            line.clear();
            let n = input.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            report.bytes += n as u64;
            report.lines += 1;
            if report.lines <= skip_lines || line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(line.trim_end()) {
                Ok(e) => events.push(e),
                Err(err) => dead.push(DeadLetter {
                    payload: line.trim_end().as_bytes().to_vec(),
                    content_type: "application/json".into(),
                    stage: "ingest".into(),
                    reason: Reason::Decode.as_str().into(),
                    description: format!("line {}: {err}", report.lines),
                    source: "import".into(),
                    ..Default::default()
                }),
            }
        }
        if events.is_empty() && dead.is_empty() {
            break;
        }
        let results = service
            .ingest_batch(events, 0, Lane::Backfill)
            .await
            .map_err(|source| ImportError::Delivery {
                line: first_line,
                skip: first_line.saturating_sub(1),
                source,
            })?;
        service.dead_letters(&dead).await;
        let accepted = results.iter().filter(|r| r.accepted).count() as u64;
        report.accepted += accepted;
        report.rejected += results.len() as u64 - accepted + dead.len() as u64;
        progress(&report);
    }
    Ok(report)
}
