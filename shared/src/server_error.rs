//! The OpAMP error reply: a `ServerToAgent` that carries only a `ServerErrorResponse`, sent by
//! whichever side turns an agent's message away (the gateway before relaying it, the
//! control-plane after).

use std::time::Duration;

use bytes::Bytes;

use crate::pb::opamp::{
    server_error_response::Details, RetryInfo, ServerErrorResponse, ServerErrorResponseType,
    ServerToAgent,
};

/// An error reply to the agent `instance_uid` (echoed as received, even when malformed).
/// `retry_after` becomes `RetryInfo`, telling the agent when to try again.
pub fn reply(
    instance_uid: Bytes,
    kind: ServerErrorResponseType,
    message: &str,
    retry_after: Option<Duration>,
) -> ServerToAgent {
    ServerToAgent {
        instance_uid,
        error_response: Some(ServerErrorResponse {
            r#type: kind as i32,
            error_message: message.to_owned(),
            details: retry_after.map(|after| {
                Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: u64::try_from(after.as_nanos()).unwrap_or(u64::MAX),
                })
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_kind_the_message_and_the_retry_delay() {
        let uid = Bytes::from_static(&[7; 16]);
        let answer = reply(
            uid.clone(),
            ServerErrorResponseType::Unavailable,
            "later",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(answer.instance_uid, uid);
        let error = answer.error_response.expect("an error response");
        assert_eq!(error.r#type, ServerErrorResponseType::Unavailable as i32);
        assert_eq!(error.error_message, "later");
        assert_eq!(
            error.details,
            Some(Details::RetryInfo(RetryInfo {
                retry_after_nanoseconds: 3_000_000_000
            }))
        );
    }

    #[test]
    fn a_retry_delay_beyond_the_wire_range_saturates() {
        let answer = reply(
            Bytes::new(),
            ServerErrorResponseType::Unavailable,
            "much later",
            Some(Duration::MAX),
        );
        let Some(Details::RetryInfo(info)) = answer.error_response.and_then(|e| e.details) else {
            panic!("retry info expected");
        };
        assert_eq!(info.retry_after_nanoseconds, u64::MAX);
    }

    #[test]
    fn without_a_delay_there_is_no_retry_info() {
        let answer = reply(
            Bytes::new(),
            ServerErrorResponseType::BadRequest,
            "bad",
            None,
        );
        assert_eq!(answer.error_response.and_then(|e| e.details), None);
    }
}
