//! Commands for operators, as opposed to the processes Ampora runs as (`roles`).

mod configs;

pub use configs::validate;
