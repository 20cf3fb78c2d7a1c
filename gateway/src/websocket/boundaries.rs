//! Where RFC 6455 frames begin and end in the bytes an agent sends, so the socket knows when
//! tungstenite holds nothing of a half-read frame or of a fragmented message.
//!
//! Only the framing is followed (header length, payload length, FIN and opcode); validating
//! frames is tungstenite's job, and a stream it rejects ends the connection anyway.

/// The smallest frame header: FIN/opcode byte and mask/length byte.
const BASE_HEADER: usize = 2;
const MASK_KEY: usize = 4;
const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

#[derive(Debug, Default)]
pub struct FrameBoundaries {
    /// Header bytes of the current frame seen so far (0 between frames).
    header_seen: usize,
    first: u8,
    second: u8,
    /// The payload length, gathered from the header's extended length bytes.
    length: u64,
    /// Payload bytes of the current frame not seen yet.
    payload_left: u64,
    /// A text or binary message began without FIN and its last continuation has not come.
    in_fragmented_message: bool,
}

impl FrameBoundaries {
    /// Follows `bytes`, the next bytes read from the agent.
    pub fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= skipped;
                bytes = &bytes[skipped as usize..];
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            match self.header_seen {
                0 => self.first = byte,
                1 => {
                    self.second = byte;
                    self.length = u64::from(byte & 0x7f);
                    if self.length >= 126 {
                        self.length = 0;
                    }
                }
                _ if self.header_seen < BASE_HEADER + self.extended_length_bytes() => {
                    self.length = (self.length << 8) | u64::from(byte);
                }
                // Mask key bytes.
                _ => {}
            }
            self.header_seen += 1;
            if self.header_seen >= BASE_HEADER && self.header_seen == self.header_len() {
                self.end_header();
            }
        }
    }

    /// Whether the bytes so far end with a whole frame and no fragmented message is open.
    pub fn at_rest(&self) -> bool {
        self.header_seen == 0 && self.payload_left == 0 && !self.in_fragmented_message
    }

    fn extended_length_bytes(&self) -> usize {
        match self.second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    fn header_len(&self) -> usize {
        let mask = if self.second & 0x80 != 0 { MASK_KEY } else { 0 };
        BASE_HEADER + self.extended_length_bytes() + mask
    }

    fn end_header(&mut self) {
        let fin = self.first & 0x80 != 0;
        match self.first & 0x0f {
            OPCODE_TEXT | OPCODE_BINARY => self.in_fragmented_message = !fin,
            OPCODE_CONTINUATION if fin => self.in_fragmented_message = false,
            // Control frames may come between fragments and change nothing.
            _ => {}
        }
        self.payload_left = self.length;
        self.header_seen = 0;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::BytesMut;
    use rand::{Rng, SeedableRng};
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;

    /// `frame` as an agent sends it: masked.
    pub(in crate::websocket) fn wire(mut frame: Frame) -> Vec<u8> {
        frame.header_mut().mask = Some([1, 2, 3, 4]);
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    pub(in crate::websocket) fn binary(fin: bool, payload: usize) -> Vec<u8> {
        wire(Frame::message(
            vec![7u8; payload],
            OpCode::Data(Data::Binary),
            fin,
        ))
    }

    pub(in crate::websocket) fn continuation(fin: bool, payload: usize) -> Vec<u8> {
        wire(Frame::message(
            vec![7u8; payload],
            OpCode::Data(Data::Continue),
            fin,
        ))
    }

    pub(in crate::websocket) fn ping() -> Vec<u8> {
        wire(Frame::ping(vec![1, 2]))
    }

    /// Feeds `frames` byte by byte; returns whether it was at rest after each frame's last byte.
    fn rest_after_each(frames: &[Vec<u8>]) -> Vec<bool> {
        let mut boundaries = FrameBoundaries::default();
        frames
            .iter()
            .map(|frame| {
                for (i, byte) in frame.iter().enumerate() {
                    boundaries.advance(std::slice::from_ref(byte));
                    if i + 1 < frame.len() {
                        assert!(!boundaries.at_rest(), "at rest inside a frame");
                    }
                }
                boundaries.at_rest()
            })
            .collect()
    }

    #[test]
    fn whole_frames_of_every_length_encoding_end_at_rest() {
        // 7-bit, 16-bit and 64-bit payload lengths, and an empty payload.
        for payload in [0, 1, 125, 126, 300, 65_535, 65_536, 70_000] {
            assert_eq!(
                rest_after_each(&[binary(true, payload)]),
                [true],
                "{payload}"
            );
        }
    }

    #[test]
    fn a_fragmented_message_is_not_at_rest_until_its_last_fragment() {
        let frames = [
            binary(false, 4000),
            ping(),
            continuation(false, 4000),
            continuation(true, 10),
            binary(true, 5),
        ];
        assert_eq!(rest_after_each(&frames), [false, false, false, true, true]);
    }

    #[test]
    fn an_unmasked_frame_has_no_mask_key() {
        let mut frame = Frame::message(vec![1u8; 200], OpCode::Data(Data::Binary), true);
        frame.header_mut().mask = None;
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        assert_eq!(rest_after_each(&[bytes]), [true]);
    }

    #[test]
    fn any_split_of_a_frame_sequence_agrees_with_its_frame_ends() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6455);
        for _ in 0..200 {
            let mut stream = BytesMut::new();
            // (offset just past a frame, at rest there?)
            let mut ends = Vec::new();
            let mut open_message = false;
            for _ in 0..rng.random_range(1..12) {
                let payload = match rng.random_range(0..4) {
                    0 => rng.random_range(0..126),
                    1 => rng.random_range(126..2000),
                    2 => rng.random_range(65_536..70_000),
                    _ => 0,
                };
                let fin = rng.random_bool(0.6);
                let bytes = match (open_message, rng.random_range(0..4)) {
                    (_, 0) => ping(),
                    (true, _) => continuation(fin, payload),
                    (false, _) => binary(fin, payload),
                };
                let control = bytes[0] & 0x08 != 0;
                if !control {
                    open_message = !fin;
                }
                stream.extend_from_slice(&bytes);
                ends.push((stream.len(), !open_message));
            }
            let mut boundaries = FrameBoundaries::default();
            let mut offset = 0;
            while offset < stream.len() {
                let chunk = rng.random_range(1..5000).min(stream.len() - offset);
                boundaries.advance(&stream[offset..offset + chunk]);
                offset += chunk;
                let expected = ends.iter().any(|&(end, rest)| end == offset && rest);
                assert_eq!(boundaries.at_rest(), expected, "at offset {offset}");
            }
        }
    }
}
