//! Subject patterns as NATS reads them: dot-separated tokens; `*` matches one token, a final `>`
//! one or more. (Which subjects Ampora uses is [`crate::subjects`].)

use super::BusError;

/// A subject to publish on: non-empty tokens, no wildcards, no white space.
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    let ok = !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.contains(char::is_whitespace)
        });
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(subject.to_owned()))
}

/// A pattern to subscribe with: like a subject, but `*` anywhere and `>` as the last token.
pub fn validate_pattern(pattern: &str) -> Result<(), BusError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let ok = !pattern.is_empty()
        && tokens.iter().enumerate().all(|(i, token)| {
            !token.is_empty()
                && !token.contains(char::is_whitespace)
                && (*token != ">" || i == tokens.len() - 1)
        });
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(pattern.to_owned()))
}

pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        if pattern_token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(token) if pattern_token == "*" || pattern_token == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.b.*", "x.b.y"));
    }

    #[test]
    fn validation() {
        assert!(validate_subject("a.b").is_ok());
        assert!(validate_subject("a.*").is_err());
        assert!(validate_subject("a..b").is_err());
        assert!(validate_subject("").is_err());
        assert!(validate_pattern("a.>").is_ok());
        assert!(validate_pattern("a.>.b").is_err());
        assert!(validate_pattern("a. b").is_err());
    }
}
