//! Kafka errors folded into a few bounded classes: for metric tags, and for
//! the one question a retry loop asks (is it transient?).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A bounded classification of Kafka errors, for metric tags and retry
/// decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker is unreachable or slow; retrying later may work.
    Unavailable,
    /// The local producer queue is full; wait for deliveries.
    QueueFull,
    /// The record can never be produced as is.
    TooLarge,
    /// The topic does not exist.
    UnknownTopic,
    /// Credentials or ACLs refuse the operation.
    Auth,
    /// Anything else.
    Other,
}

impl ErrorClass {
    pub fn of(e: &KafkaError) -> Self {
        // rdkafka does not report an admin operation's code as its error
        // code: a broker that is away times topic creation out that way.
        let code = match (e, e.rdkafka_error_code()) {
            (KafkaError::AdminOp(c), _) => *c,
            (_, Some(c)) => c,
            (_, None) => return ErrorClass::Other,
        };
        use RDKafkaErrorCode as C;
        match code {
            C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::RequestTimedOut
            | C::NetworkException
            | C::OperationTimedOut
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend => ErrorClass::Unavailable,
            C::QueueFull => ErrorClass::QueueFull,
            C::MessageSizeTooLarge | C::InvalidMessageSize => ErrorClass::TooLarge,
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
                ErrorClass::UnknownTopic
            }
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication => ErrorClass::Auth,
            _ => ErrorClass::Other,
        }
    }

    /// The bounded `error_code` tag.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::QueueFull => "queue_full",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::UnknownTopic => "unknown_topic",
            ErrorClass::Auth => "auth",
            ErrorClass::Other => "other",
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub const fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Unavailable | ErrorClass::QueueFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fold_into_bounded_classes() {
        let table = [
            (
                RDKafkaErrorCode::MessageTimedOut,
                ErrorClass::Unavailable,
                true,
            ),
            (
                RDKafkaErrorCode::AllBrokersDown,
                ErrorClass::Unavailable,
                true,
            ),
            (RDKafkaErrorCode::QueueFull, ErrorClass::QueueFull, true),
            (
                RDKafkaErrorCode::MessageSizeTooLarge,
                ErrorClass::TooLarge,
                false,
            ),
            (
                RDKafkaErrorCode::UnknownTopicOrPartition,
                ErrorClass::UnknownTopic,
                false,
            ),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                ErrorClass::Auth,
                false,
            ),
            (RDKafkaErrorCode::InvalidConfig, ErrorClass::Other, false),
        ];
        for (code, class, transient) in table {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(ErrorClass::of(&e), class, "{code:?}");
            assert_eq!(ErrorClass::of(&e).is_transient(), transient, "{code:?}");
        }
        assert_eq!(ErrorClass::of(&KafkaError::Canceled), ErrorClass::Other);
    }
}
