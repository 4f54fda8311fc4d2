//! The `Collector` RPCs on top of the shared [`Ingestor`]: each message's
//! bytes and events are taken from the in-flight budget without waiting,
//! and judging and delivery are bounded by the request deadline.

use std::time::Instant;

use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};
use xoflow_proto::Message;
use xoflow_proto::v1::{IngestRequest, IngestResponse, collector_server::Collector};

use crate::{
    IngestError,
    auth::{Principal, key_from_headers},
    core::{Ingestor, Record, finish, response},
    delivery::Lane,
};

/// The collector service: stateless apart from the shared [`Ingestor`].
#[derive(Clone, Debug)]
pub struct CollectorService {
    ingestor: Ingestor,
}

impl CollectorService {
    pub fn new(ingestor: Ingestor) -> Self {
        Self { ingestor }
    }

    fn principal(&self, md: &MetadataMap) -> Result<Option<Principal>, IngestError> {
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        self.ingestor
            .auth()
            .authenticate(key_from_headers(get("x-api-key"), get("authorization")))
    }
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let principal = self.principal(request.metadata())?;
            // The message is already decoded: its bytes are taken from the
            // budget before any judging, without waiting.
            let _bytes_held = self
                .ingestor
                .admission()
                .admit_bytes(request.get_ref().encoded_len())?;
            let records = request
                .into_inner()
                .events
                .into_iter()
                .map(Record::event)
                .collect();
            let i = &self.ingestor;
            i.within_deadline(i.ingest(records, 0, principal.as_ref(), Lane::Live))
                .await
                .map(response)
        }
        .await;
        finish("ingest", started, &r);
        Ok(Response::new(r?))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let principal = self.principal(request.metadata())?;
            let mut stream = request.into_inner();
            let mut results = Vec::new();
            while let Some(batch) = stream.message().await.map_err(|s| {
                IngestError::BadRequest(format!("reading the request stream: {}", s.message()))
            })? {
                let first = results.len() as u32;
                let _bytes_held = self.ingestor.admission().admit_bytes(batch.encoded_len())?;
                let records = batch.events.into_iter().map(Record::event).collect();
                let i = &self.ingestor;
                results.extend(
                    i.within_deadline(i.ingest(records, first, principal.as_ref(), Lane::Live))
                        .await?,
                );
            }
            Ok(response(results))
        }
        .await;
        finish("ingest_stream", started, &r);
        Ok(Response::new(r?))
    }
}
