//! Reading an HTTP body: the size limit, also after gzip, and telling a
//! body over the limit from a client that went away mid-upload.

use std::io::Read;

use axum::{
    body::Body,
    http::{HeaderMap, header},
};
use tokio_stream::StreamExt;

use crate::IngestError;

/// The body, gunzipped when it says so, refused beyond `max` bytes or
/// when it takes longer than `timeout` to arrive.
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, IngestError> {
    tokio::time::timeout(timeout, read_all(body, headers, max))
        .await
        .unwrap_or(Err(IngestError::BodyTimeout { after: timeout }))
}

async fn read_all(body: Body, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, IngestError> {
    // A declared length over the limit is refused before reading a byte.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(IngestError::BodyTooLarge { max });
    }
    let mut raw = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        // Hyper's only body error on the server side is the connection
        // failing (reset, closed early, a chunked framing error): the
        // client is gone, which is no size problem.
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "request body aborted");
            IngestError::ClientAborted
        })?;
        if raw.len() + chunk.len() > max {
            return Err(IngestError::BodyTooLarge { max });
        }
        raw.extend_from_slice(&chunk);
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    // Every member: files gzipped apart and sent one after the other
    // (`cat a.gz b.gz`) are one valid gzip stream, of which `GzDecoder`
    // reads the first member only and the rest was dropped unread.
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::BadRequest(format!("the gzip body cannot be read: {e}")))?;
    if out.len() > max {
        return Err(IngestError::BodyTooLarge { max });
    }
    Ok(out)
}

/// The bytes a request is admitted for before its body is read: its
/// declared length, or the most it may send.
pub(crate) fn declared_or_max(headers: &HeaderMap, max: usize) -> usize {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(max, |n| n.min(max))
}

/// Refuses a body with nothing in it but whitespace: there is no record to
/// judge (an empty array is a request, this is none).
pub(crate) fn non_empty(bytes: Vec<u8>) -> Result<Vec<u8>, IngestError> {
    if bytes.trim_ascii().is_empty() {
        return Err(IngestError::EmptyBody);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(data).expect("gzip");
        w.finish().expect("gzip")
    }

    /// Two files gzipped apart and sent as one body are read whole: with
    /// `GzDecoder` the second member's records were dropped, and the
    /// request answered as if the body held only the first.
    #[tokio::test]
    async fn every_member_of_a_gzip_body_is_read() {
        let mut body = gzip(b"{\"a\":1}\n");
        body.extend(gzip(b"{\"b\":2}\n"));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
        let read = read(
            Body::from(body),
            &headers,
            1 << 20,
            std::time::Duration::from_secs(5),
        )
        .await
        .expect("read");
        assert_eq!(read, b"{\"a\":1}\n{\"b\":2}\n");
    }
}
