//! Reading a CRM export of identities for `xoflow identities import FILE`:
//! one row per customer, `customer_id` plus any of `email`, `phone`,
//! `social_handle`, `device_id`, as CSV (with a header row) or NDJSON.
//!
//! Each weak identifier is normalised and hashed exactly as the collectors
//! hash an event's (`Normaliser::hash_customer`: the tenant's key, the same
//! canonical e-mail and phone forms), so a link seeded here resolves the
//! events that carry that identifier. Out: chunks of (hashed identifier,
//! customer id) links for enrich's link table, and the rows refused, each
//! with its line and the field at fault. Raw identifiers never leave this
//! module.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
};

use serde::Deserialize;
use xoflow_proto::v1::CustomerIdentity;

use crate::{IngestConfig, import::Format, normalise::Normaliser, tenant::Tenants};

/// One row of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    social_handle: String,
    #[serde(default)]
    device_id: String,
}

/// A row that taught nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Line of the file (1-based; the CSV header is line 1).
    pub line: u64,
    pub field: String,
    pub reason: String,
}

/// A hashed identifier and the customer it belongs to.
pub type Link = (String, String);

/// Errors that stop the read (a row's own faults are [`Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("tenant keys: {0}")]
    Tenants(#[from] crate::tenant::TenantError),
    /// The consumer of the links stopped taking them (it failed).
    #[error("the link writer stopped")]
    Stopped,
}

/// Reads identities of `tenant` from a file, hashing as the collectors of
/// `cfg` do.
pub struct IdentityReader {
    normaliser: Normaliser,
    tenant: String,
}

impl IdentityReader {
    pub fn new(cfg: &IngestConfig, tenant: &str) -> Result<Self, IdentitiesError> {
        let tenants = std::sync::Arc::new(Tenants::from_config(cfg)?);
        Ok(Self {
            normaliser: Normaliser::with_tenants(tenants, cfg.max_future_skew, cfg.max_age),
            tenant: tenant.to_owned(),
        })
    }

    /// Reads `path`, handing `chunk` links at a time to `sink` (in file
    /// order, so a later row for the same identifier comes later) and
    /// returning the refused rows and the rows read. `progress` shows a bar
    /// on stderr.
    pub fn read(
        &self,
        path: &Path,
        format: Format,
        chunk: usize,
        progress: bool,
        mut sink: impl FnMut(Vec<Link>) -> Result<(), IdentitiesError>,
    ) -> Result<(Vec<Refused>, u64), IdentitiesError> {
        let file = std::fs::File::open(path).map_err(|source| IdentitiesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = crate::import::progress_bar(total, progress);
        let reader: Box<dyn Read> = Box::new(bar.wrap_read(file));
        let mut refused = Vec::new();
        let mut rows = 0u64;
        let mut links: Vec<Link> = Vec::with_capacity(chunk);
        let mut take = |line: u64, row: Result<Row, String>, links: &mut Vec<Link>| {
            rows += 1;
            match row
                .map_err(|e| ("row".to_owned(), e))
                .and_then(|r| self.links(r))
            {
                Ok(found) => links.extend(found),
                Err((field, reason)) => refused.push(Refused {
                    line,
                    field,
                    reason,
                }),
            }
        };
        match format {
            Format::Ndjson => {
                for (i, line) in BufReader::new(reader).lines().enumerate() {
                    let line = line.map_err(|source| IdentitiesError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row = serde_json::from_str::<Row>(&line).map_err(|e| e.to_string());
                    take(i as u64 + 1, row, &mut links);
                    if links.len() >= chunk {
                        sink(std::mem::take(&mut links))?;
                    }
                }
            }
            Format::Csv => {
                let mut csv = csv::ReaderBuilder::new().from_reader(reader);
                for (i, row) in csv.deserialize::<Row>().enumerate() {
                    take(i as u64 + 2, row.map_err(|e| e.to_string()), &mut links);
                    if links.len() >= chunk {
                        sink(std::mem::take(&mut links))?;
                    }
                }
            }
        }
        if !links.is_empty() {
            sink(links)?;
        }
        bar.finish_and_clear();
        Ok((refused, rows))
    }

    /// The links of one row, or the field at fault.
    fn links(&self, row: Row) -> Result<Vec<Link>, (String, String)> {
        let customer_id = row.customer_id.trim().to_owned();
        if customer_id.is_empty() {
            return Err(("customer_id".into(), "missing".into()));
        }
        let hashed = self
            .normaliser
            .hash_customer(
                &self.tenant,
                CustomerIdentity {
                    customer_id: customer_id.clone(),
                    email: row.email,
                    phone: row.phone,
                    social_handle: row.social_handle,
                    device_id: row.device_id,
                    ..Default::default()
                },
            )
            .map_err(|v| {
                let v = v.into_iter().next().unwrap_or_else(|| {
                    crate::normalise::Violation::new("row", crate::normalise::Reason::Invalid, "")
                });
                (v.field, v.description)
            })?;
        let links: Vec<Link> = [
            hashed.email_hash,
            hashed.phone_hash,
            hashed.social_handle_hash,
            hashed.device_id_hash,
        ]
        .into_iter()
        .filter(|h| !h.is_empty())
        .map(|h| (h, customer_id.clone()))
        .collect();
        if links.is_empty() {
            return Err((
                "email".into(),
                "no identifier: give at least one of email, phone, social_handle, device_id".into(),
            ));
        }
        Ok(links)
    }
}
