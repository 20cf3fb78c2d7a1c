//! The agent domain: what an agent is ([`snapshot`]), how its OpAMP messages change it
//! ([`merge`]) and what its history records of that ([`history`]), the agent at a past moment
//! rebuilt from that history ([`replay`]), and how wire values read as
//! JSON ([`convert`], [`capabilities`]).

pub mod capabilities;
pub mod convert;
pub mod history;
pub mod merge;
pub mod replay;
pub mod snapshot;
