//! Instance uids: 16 bytes on the wire, a canonical lowercase UUID everywhere else.

use uuid::Uuid;

/// Reads a wire instance uid; `None` unless it is exactly 16 bytes, as the spec requires.
pub fn from_wire(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

/// A fresh uid for an agent that asked for one; v7 as the specification recommends.
pub fn new_instance_uid() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_sixteen_bytes() {
        let uid = new_instance_uid();
        assert_eq!(from_wire(uid.as_bytes()), Some(uid));
        assert_eq!(from_wire(&[1, 2, 3]), None);
        assert_eq!(from_wire(&[0; 17]), None);
    }
}
