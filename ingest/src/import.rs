//! Bulk import of history: `xoflow import FILE --format ndjson|csv
//! [--kind KIND]`.
//!
//! Reads the file in chunks, judges each chunk exactly like a live request
//! (same validation, masking and dead letters, with the backfill age bound)
//! and produces it to the backfill topic, so a historical load never
//! queues in front of live data. Event ids are derived from natural ids, so
//! re-running an import after a failure sends the same keys again and
//! nothing is counted twice downstream.
//!
//! Formats: NDJSON of canonical `Event` JSON (no `--kind`), NDJSON of a
//! source's native records (`--kind`), or CSV with a header row (`--kind`
//! required): dotted column names nest (`respondent.id`), and for surveys
//! the columns `nps`, `csat` and `ces` become typed answers.

use std::{
    io::{BufRead, BufReader},
    path::Path,
};

use serde_json::{Map, Value};
use xoflow_proto::EventKind;

use xoflow_common::dead_letter::{self, Reason};

use crate::{
    IngestError,
    core::{Ingestor, Record},
    delivery::Lane,
    framing::decode_events,
    normalise::Violation,
    sources::{self, Origin},
    telemetry,
};

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: Format,
    /// Native records of this kind; canonical events when `None`.
    pub kind: Option<EventKind>,
    /// Tenant of native records.
    pub tenant: String,
    /// Source name of native records.
    pub source: String,
    /// Records per chunk handed to Kafka.
    pub chunk: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The outcome of an import.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub accepted: u64,
    pub rejected: u64,
    /// The first refusals: (1-based record number, field, reason, text).
    pub first_rejections: Vec<(u64, String, String, String)>,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("{0}")]
    Usage(String),
    /// Kafka refused a chunk; everything before it is durable and a re-run
    /// is idempotent.
    #[error("after {done} records: {source}; re-run the import: it is idempotent")]
    Ingest { done: u64, source: IngestError },
}

impl ImportError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ImportError::Ingest { source, .. } if source.is_transient())
    }
}

const NUMERIC_COLUMNS: [&str; 9] = [
    "amount_minor",
    "likes",
    "shares",
    "comments",
    "quantity",
    "unit_price_minor",
    "properties.duration_ms",
    "start",
    "end",
];

/// A progress bar over `total` bytes of a file on stderr, or a hidden one
/// (`shown` false: tests, scripts).
pub(crate) fn progress_bar(total: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
    ) {
        b.set_style(style);
    }
    b
}

/// Imports `path` through `ingestor` on the backfill lane.
pub async fn run(
    ingestor: &Ingestor,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    if opts.format == Format::Csv && opts.kind.is_none() {
        return Err(ImportError::Usage(
            "CSV import needs --kind (survey, social, order, click)".into(),
        ));
    }
    if opts.format == Format::Csv && opts.kind == Some(EventKind::Call) {
        return Err(ImportError::Usage(
            "call transcripts have nested segments: import them as NDJSON".into(),
        ));
    }
    let read_err = |source| ImportError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(total, opts.progress);
    let reader = bar.wrap_read(file);
    let origin = Origin {
        tenant: &opts.tenant,
        source: &opts.source,
    };
    let chunk = opts.chunk.clamp(1, ingestor.max_batch_events());
    let mut report = ImportReport::default();
    let mut pending: Vec<Record> = Vec::with_capacity(chunk);
    match opts.format {
        Format::Ndjson => {
            let mut lines = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = lines.read_until(b'\n', &mut line).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                let l = line.trim_ascii();
                if l.is_empty() {
                    continue;
                }
                let record = match opts.kind {
                    Some(kind) => sources::decode(kind, l, origin),
                    // A line that is no event is the import's tenant's.
                    None => {
                        let r = decode_events(l, true).pop().unwrap_or_default();
                        if r.event.is_none() && !origin.tenant.is_empty() {
                            r.sent_for(origin.tenant, origin.source)
                        } else {
                            r
                        }
                    }
                };
                pending.push(record);
                if pending.len() >= chunk {
                    send(ingestor, &mut pending, &mut report, &bar).await?;
                }
            }
        }
        Format::Csv => {
            let kind = opts.kind.unwrap_or(EventKind::Order);
            let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
            let headers = csv.headers()?.clone();
            let mut row = csv::ByteRecord::new();
            while csv.read_byte_record(&mut row)? {
                pending.push(csv_record(kind, &headers, &row, origin));
                if pending.len() >= chunk {
                    send(ingestor, &mut pending, &mut report, &bar).await?;
                }
            }
        }
    }
    send(ingestor, &mut pending, &mut report, &bar).await?;
    bar.finish_with_message(format!(
        "{} accepted, {} rejected",
        report.accepted, report.rejected
    ));
    Ok(report)
}

async fn send(
    ingestor: &Ingestor,
    pending: &mut Vec<Record>,
    report: &mut ImportReport,
    bar: &indicatif::ProgressBar,
) -> Result<(), ImportError> {
    if pending.is_empty() {
        return Ok(());
    }
    let done = report.accepted + report.rejected;
    let first = u32::try_from(done).unwrap_or(u32::MAX);
    let records = std::mem::take(pending);
    let results = ingestor
        .ingest(records, first, None, Lane::Backfill)
        .await
        .map_err(|source| ImportError::Ingest { done, source })?;
    let (mut ok, mut bad) = (0u64, 0u64);
    for r in results {
        if r.accepted {
            ok += 1;
        } else {
            bad += 1;
            if report.first_rejections.len() < 10
                && let Some(v) = r.violations.first()
            {
                report.first_rejections.push((
                    u64::from(r.index) + 1,
                    v.field.clone(),
                    v.reason.clone(),
                    v.description.clone(),
                ));
            }
        }
    }
    report.accepted += ok;
    report.rejected += bad;
    telemetry::ImportChunk {
        accepted: ok,
        rejected: bad,
    }
    .emit();
    bar.set_message(format!(
        "{} accepted, {} rejected",
        report.accepted, report.rejected
    ));
    Ok(())
}

/// One CSV row as a record of `kind`. A row that cannot be read whole (a
/// cell that is not UTF-8, a non-empty cell past the header's last column)
/// is refused alone, `DECODE` naming its column, with its cells written
/// back as a CSV line in its dead letter: it neither stops the import nor
/// loses cells. Empty cells past the header (a trailing comma, as some
/// exports write) lose nothing and are read as usual.
fn csv_record(
    kind: EventKind,
    headers: &csv::StringRecord,
    row: &csv::ByteRecord,
    origin: Origin<'_>,
) -> Record {
    let past_header = row.iter().skip(headers.len()).any(|c| !c.is_empty());
    let fault = if past_header {
        Some(Violation::new(
            "",
            Reason::Decode,
            format!(
                "{} cells, the header names {}: quote a cell holding a comma",
                row.len(),
                headers.len()
            ),
        ))
    } else {
        row.iter().enumerate().find_map(|(i, cell)| {
            std::str::from_utf8(cell).err().map(|e| {
                Violation::new(
                    headers.get(i).unwrap_or_default(),
                    Reason::Decode,
                    format!(
                        "not UTF-8 at byte {} of the cell: save the file as UTF-8",
                        e.valid_up_to()
                    ),
                )
            })
        })
    };
    if let Some(v) = fault {
        let mut line = csv::Writer::from_writer(Vec::new());
        let original = line
            .write_byte_record(row)
            .ok()
            .and_then(|()| line.into_inner().ok())
            .unwrap_or_default();
        let mut r = Record::undecodable(original, dead_letter::CSV, v)
            .sent_for(origin.tenant, origin.source);
        r.names = refused_row_names(kind, headers, row);
        return r;
    }
    let row: csv::StringRecord = row
        .iter()
        .map(|cell| std::str::from_utf8(cell).unwrap_or_default())
        .collect();
    sources::from_value(kind, csv_row(kind, headers, &row), origin)
}

/// The marked name of a row refused before it was read (see
/// [`sources::marked_name_field`]), for its dead letter: the cell under the
/// name's column, and, in a row with more cells than the header (an
/// unquoted comma shifts the cells after it), the cells it may have moved
/// to. A cell masked there that was no name costs the dead letter that
/// word; a name left in clear would cost more.
fn refused_row_names(
    kind: EventKind,
    headers: &csv::StringRecord,
    row: &csv::ByteRecord,
) -> Vec<String> {
    let Some(at) =
        sources::marked_name_field(kind).and_then(|field| headers.iter().position(|h| h == field))
    else {
        return Vec::new();
    };
    let shifted = row.len().saturating_sub(headers.len());
    row.iter()
        .skip(at)
        .take(shifted + 1)
        .flat_map(|cell| sources::name_list(String::from_utf8_lossy(cell).trim().to_owned()))
        .collect()
}

/// A CSV row as the native JSON of `kind`: dotted names nest, numeric
/// columns are numbers, empty cells are absent, survey score columns become
/// answers.
fn csv_row(kind: EventKind, headers: &csv::StringRecord, row: &csv::StringRecord) -> Value {
    let mut root = Map::new();
    let mut answers = Vec::new();
    for (h, cell) in headers.iter().zip(row.iter()) {
        let cell = cell.trim();
        if cell.is_empty() {
            continue;
        }
        if kind == EventKind::Survey && matches!(h, "nps" | "csat" | "ces") {
            let value = cell
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(cell.to_owned()), Value::Number);
            answers.push(serde_json::json!({"question_id": h, "type": h, "value": value}));
            continue;
        }
        let value = if NUMERIC_COLUMNS.contains(&h) {
            cell.parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(cell.to_owned()))
        } else {
            Value::String(cell.to_owned())
        };
        let mut parts = h.split('.').peekable();
        let mut obj = &mut root;
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                obj.insert(p.to_owned(), value);
                break;
            }
            let entry = obj
                .entry(p.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            match entry {
                Value::Object(m) => obj = m,
                _ => break,
            }
        }
    }
    if !answers.is_empty() {
        root.insert("answers".into(), Value::Array(answers));
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of `csv` as the import reads it.
    fn csv_records(kind: EventKind, csv: &[u8], origin: Origin<'_>) -> Vec<Record> {
        let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(csv);
        let headers = csv.headers().expect("headers").clone();
        let mut row = csv::ByteRecord::new();
        let mut records = Vec::new();
        while csv.read_byte_record(&mut row).expect("row") {
            records.push(csv_record(kind, &headers, &row, origin));
        }
        records
    }

    /// A row whose cell is not UTF-8 (a name saved in GBK) or that has
    /// more cells than the header (an unquoted comma) is refused alone,
    /// naming its column, with the row in its dead letter; the rows around
    /// it are read as usual. Before, the first stopped the whole import
    /// ("CSV: invalid UTF-8") and the second lost its last cells silently.
    #[test]
    fn a_row_that_cannot_be_read_whole_is_refused_alone() {
        let origin = Origin {
            tenant: "acme",
            source: "erp",
        };
        let records = csv_records(
            EventKind::Order,
            b"order_id,status,updated_at,note\n\
               o-1,paid,2026-11-20T10:00:00Z,fine\n\
               o-2,paid,2026-11-20T10:00:00Z,\xcd\xf5\xd0\xa1\xc3\xf7\n\
               o-3,paid,2026-11-20T10:00:00Z,late, again\n\
               o-4,paid,2026-11-20T10:00:00Z,fine,,\n",
            origin,
        );
        assert_eq!(records.len(), 4);
        assert!(records[0].event.is_some(), "{:?}", records[0].decode_error);
        let gbk = records[1].decode_error.as_ref().expect("refused");
        assert_eq!((gbk.field.as_str(), gbk.reason), ("note", Reason::Decode));
        assert_eq!(records[1].content_type, dead_letter::CSV);
        assert!(
            records[1]
                .original
                .as_ref()
                .is_some_and(|o| o.starts_with(b"o-2,"))
        );
        let extra = records[2].decode_error.as_ref().expect("refused");
        assert!(extra.description.contains("5 cells"), "{extra:?}");
        assert_eq!(
            records[2].original.as_deref(),
            Some(&b"o-3,paid,2026-11-20T10:00:00Z,late, again\n"[..])
        );
        assert_eq!(
            records[2].origin,
            Some(("acme".to_owned(), "erp".to_owned())),
            "the import's tenant and source"
        );
        // Empty cells past the header (a trailing comma) lose nothing.
        assert!(records[3].event.is_some(), "{:?}", records[3].decode_error);
    }

    /// A survey row refused before it was read (a cell that is not UTF-8,
    /// an unquoted comma) still has its respondent's name masked in its
    /// dead letter: the cell under `respondent.name`, and where a comma
    /// before it shifted the cells, the cells it may have moved to.
    #[test]
    fn a_refused_rows_marked_name_is_masked_in_its_dead_letter() {
        let origin = Origin {
            tenant: "acme",
            source: "survey-export",
        };
        let records = csv_records(
            EventKind::Survey,
            b"response_id,survey_id,submitted_at,respondent.name,comment\n\
               r1,s,2026-11-20T10:00:00Z,Li Lei,Li Lei was late\xcd\xf5\n\
               r2,s,2026-11-20T10:00:00Z,Han Meimei,late, again Han Meimei\n\
               r3,s,2026,11,Wang Fang,nice to meet Wang Fang\n",
            origin,
        );
        for (r, name) in records.iter().zip(["Li Lei", "Han Meimei", "Wang Fang"]) {
            assert!(r.event.is_none(), "refused");
            assert!(r.names.iter().any(|n| n == name), "{:?}", r.names);
            let line = String::from_utf8_lossy(r.original.as_deref().expect("line"));
            let masked = crate::normalise::pii::mask(&line, &r.names, &mut Default::default())
                .expect("masked");
            assert!(!masked.contains(name), "{masked}");
        }
    }
}
