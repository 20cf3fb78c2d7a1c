//! OpAMP framing on the hot path.
//!
//! WebSocket: every binary message is a varint header (must be 0) followed by one protobuf
//! message. HTTP: the body is the bare protobuf message, optionally gzip'd; we inflate it with a
//! hard ceiling so a gzip bomb costs at most `limit + 1` bytes of memory.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use prost::Message;

use crate::pb::opamp::{AgentToServer, ServerToAgent};

/// The only WebSocket header value OpAMP defines.
pub const WS_HEADER: u64 = 0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("empty message")]
    Empty,
    #[error("unsupported OpAMP WebSocket header {0} (expected 0)")]
    UnsupportedHeader(u64),
    #[error("malformed OpAMP WebSocket header")]
    MalformedHeader,
    #[error("message exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("invalid gzip body: {0}")]
    BadGzip(String),
    #[error("undecodable protobuf: {0}")]
    Undecodable(String),
}

pub type Result<T, E = CodecError> = std::result::Result<T, E>;

/// Strips the OpAMP WebSocket header and returns the protobuf payload.
pub fn ws_payload(frame: &[u8]) -> Result<&[u8]> {
    if frame.is_empty() {
        return Err(CodecError::Empty);
    }
    let mut rest = frame;
    let header =
        prost::encoding::decode_varint(&mut rest).map_err(|_| CodecError::MalformedHeader)?;
    if header != WS_HEADER {
        return Err(CodecError::UnsupportedHeader(header));
    }
    Ok(rest)
}

/// Decodes one WebSocket binary message into an `AgentToServer`, and returns it with its
/// protobuf payload, which shares the frame's buffer.
pub fn decode_ws_agent_message(frame: &Bytes) -> Result<(AgentToServer, Bytes)> {
    let payload = ws_payload(frame)?;
    let message = decode_agent_to_server(payload)?;
    Ok((message, frame.slice_ref(payload)))
}

/// Encodes a `ServerToAgent` as one WebSocket binary message (header + protobuf).
pub fn encode_ws_server_message(message: &ServerToAgent) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + message.encoded_len());
    prost::encoding::encode_varint(WS_HEADER, &mut frame);
    message
        .encode(&mut frame)
        .expect("a Vec grows to fit any message");
    frame
}

/// Prefixes an already encoded `ServerToAgent` with the WebSocket header.
pub fn ws_frame_from_encoded(encoded: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + encoded.len());
    prost::encoding::encode_varint(WS_HEADER, &mut frame);
    frame.extend_from_slice(encoded);
    frame
}

pub fn decode_agent_to_server(payload: &[u8]) -> Result<AgentToServer> {
    AgentToServer::decode(payload).map_err(|e| CodecError::Undecodable(e.to_string()))
}

/// Inflates a gzip body, failing as soon as the output would exceed `limit` bytes.
pub fn gunzip_bounded(compressed: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut decoder = GzDecoder::new(compressed).take(limit as u64 + 1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit + 1));
    decoder
        .read_to_end(&mut out)
        .map_err(|e| CodecError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::fast());
    encoder
        .write_all(data)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentToServer {
        AgentToServer {
            instance_uid: Bytes::from_static(&[7; 16]),
            sequence_num: 3,
            capabilities: 1,
            ..Default::default()
        }
    }

    #[test]
    fn ws_round_trip() {
        let server = ServerToAgent {
            instance_uid: Bytes::from_static(&[7; 16]),
            flags: 1,
            ..Default::default()
        };
        let frame = encode_ws_server_message(&server);
        assert_eq!(frame[0], 0);
        let decoded = ServerToAgent::decode(ws_payload(&frame).unwrap()).unwrap();
        assert_eq!(decoded, server);
        assert_eq!(ws_frame_from_encoded(&server.encode_to_vec()), frame);
    }

    #[test]
    fn agent_frame_decodes() {
        let mut frame = vec![0u8];
        sample().encode(&mut frame).unwrap();
        let frame = Bytes::from(frame);
        let (message, payload) = decode_ws_agent_message(&frame).unwrap();
        assert_eq!(message, sample());
        assert_eq!(&payload[..], &frame[1..]);
        assert_eq!(
            payload.as_ptr(),
            frame[1..].as_ptr(),
            "the payload is not a copy"
        );
    }

    #[test]
    fn rejects_wrong_header() {
        let mut frame = vec![1u8];
        sample().encode(&mut frame).unwrap();
        assert_eq!(
            decode_ws_agent_message(&frame.into()).unwrap_err(),
            CodecError::UnsupportedHeader(1)
        );
        // A multi-byte varint header that is not zero.
        assert_eq!(
            ws_payload(&[0x80, 0x01]).unwrap_err(),
            CodecError::UnsupportedHeader(128)
        );
    }

    #[test]
    fn rejects_empty_and_unterminated_header() {
        assert_eq!(ws_payload(&[]).unwrap_err(), CodecError::Empty);
        assert_eq!(
            ws_payload(&[0x80]).unwrap_err(),
            CodecError::MalformedHeader
        );
    }

    #[test]
    fn rejects_truncated_protobuf() {
        let mut frame = vec![0u8];
        sample().encode(&mut frame).unwrap();
        frame.truncate(frame.len() - 3);
        assert!(matches!(
            decode_ws_agent_message(&frame.into()),
            Err(CodecError::Undecodable(_))
        ));
    }

    #[test]
    fn gzip_round_trip_within_limit() {
        let data = vec![42u8; 10_000];
        assert_eq!(gunzip_bounded(&gzip(&data), 10_000).unwrap(), data);
    }

    #[test]
    fn gzip_bomb_stops_at_limit() {
        // 64 MiB of zeros compresses to ~64 KiB; inflating must stop just past the limit.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(
            gunzip_bounded(&bomb, 1 << 20).unwrap_err(),
            CodecError::TooLarge { limit: 1 << 20 }
        );
    }

    #[test]
    fn garbage_is_not_gzip() {
        assert!(matches!(
            gunzip_bounded(b"definitely not gzip", 1024),
            Err(CodecError::BadGzip(_))
        ));
    }
}
