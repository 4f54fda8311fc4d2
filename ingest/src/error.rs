//! Failures of the collector API, and the one place they become gRPC
//! statuses.

use tonic::{Code, Status};

/// Why a whole request could not be handled. Per-record problems are not
/// errors: they are `RecordResult`s with field violations.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Too many events are already waiting for Kafka.
    #[error("too many events in flight ({requested} requested); retry later")]
    Overloaded { requested: usize },
    /// The batch exceeds the configured maximum.
    #[error("batch of {got} events exceeds the maximum of {max}")]
    BatchTooLarge { got: usize, max: usize },
    /// Kafka did not acknowledge accepted records in time.
    #[error("the event log is unavailable ({class}); nothing in this request is acknowledged")]
    Unavailable { class: &'static str },
    /// A record that passed validation could not be encoded or produced for a
    /// reason retrying will not fix.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is shutting down.
    #[error("the collector is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// Whether the client should retry the same request later.
    pub const fn is_transient(&self) -> bool {
        matches!(
            self,
            IngestError::Overloaded { .. }
                | IngestError::Unavailable { .. }
                | IngestError::ShuttingDown
        )
    }

    /// The bounded `reason` metric tag.
    pub const fn code(&self) -> &'static str {
        match self {
            IngestError::Overloaded { .. } => "overloaded",
            IngestError::BatchTooLarge { .. } => "batch_too_large",
            IngestError::Unavailable { .. } => "unavailable",
            IngestError::Internal(_) => "internal",
            IngestError::ShuttingDown => "shutting_down",
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let code = match &e {
            IngestError::Overloaded { .. } => Code::ResourceExhausted,
            IngestError::BatchTooLarge { .. } => Code::InvalidArgument,
            IngestError::Unavailable { .. } | IngestError::ShuttingDown => Code::Unavailable,
            IngestError::Internal(_) => Code::Internal,
        };
        let mut details = tonic_types::ErrorDetails::new();
        if let IngestError::BatchTooLarge { .. } = &e {
            details.add_bad_request_violation("events", e.to_string());
        }
        if e.is_transient() {
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
        }
        use tonic_types::StatusExt;
        Status::with_error_details(code, e.to_string(), details)
    }
}
