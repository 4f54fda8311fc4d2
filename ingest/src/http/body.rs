//! Reading an HTTP body: the size limit, also after gzip.

use std::io::Read;

use axum::{
    body::Body,
    http::{HeaderMap, header},
};

use crate::IngestError;

/// The body, gunzipped when it says so, refused beyond `max` bytes.
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Vec<u8>, IngestError> {
    let raw = axum::body::to_bytes(body, max).await.map_err(|e| {
        // The only error of a well-formed upload is the length limit.
        tracing::debug!(error = %e, "request body refused");
        IngestError::BodyTooLarge { max }
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::GzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::BadRequest(format!("the gzip body cannot be read: {e}")))?;
    if out.len() > max {
        return Err(IngestError::BodyTooLarge { max });
    }
    Ok(out)
}
