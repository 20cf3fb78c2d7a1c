//! Generated protobuf types.

/// OpAMP messages, wire-compatible with the specification.
pub mod opamp {
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.rs"));
}

/// Gateway ⇄ control-plane messages.
pub mod bus {
    include!(concat!(env!("OUT_DIR"), "/ampora.bus.v1.rs"));
}
