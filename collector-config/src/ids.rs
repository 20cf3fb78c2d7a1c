//! Component ids (`type[/name]`) and pipeline ids (`signal[/name]`), read as the Collector
//! reads them: both parts trimmed, a `/` demands a non-empty name.

use crate::catalog::Signal;

/// A component id split into its parts; `id` is the canonical `type[/name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentId {
    pub id: String,
    pub component_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineId {
    pub id: String,
    pub signal: Signal,
}

/// The longest type the Collector accepts: a letter then at most 62 more characters.
const MAX_TYPE_LENGTH: usize = 63;

pub fn parse_component_id(text: &str) -> Result<ComponentId, String> {
    let (component_type, name) = split(text)?;
    if !is_valid_type(component_type) {
        return Err(format!(
            "invalid id {text:?}: the type must start with a letter and hold only letters, \
             digits and '_', at most {MAX_TYPE_LENGTH} characters"
        ));
    }
    Ok(ComponentId {
        id: join(component_type, name),
        component_type: component_type.to_string(),
    })
}

pub fn parse_pipeline_id(text: &str) -> Result<PipelineId, String> {
    let (signal_text, name) = split(text)?;
    let signal = Signal::parse(signal_text).ok_or_else(|| {
        format!(
            "invalid pipeline id {text:?}: unknown signal {signal_text:?} \
             (one of traces, metrics, logs, profiles)"
        )
    })?;
    Ok(PipelineId {
        id: join(signal_text, name),
        signal,
    })
}

/// The trimmed type and optional name of `type[/name]`.
fn split(text: &str) -> Result<(&str, Option<&str>), String> {
    let (first, rest) = match text.split_once('/') {
        Some((first, rest)) => (first.trim(), Some(rest.trim())),
        None => (text.trim(), None),
    };
    if first.is_empty() && rest.is_none() {
        return Err("invalid id: an id must not be empty".to_string());
    }
    if first.is_empty() {
        return Err(format!(
            "invalid id {text:?}: the part before '/' must not be empty"
        ));
    }
    if rest == Some("") {
        return Err(format!(
            "invalid id {text:?}: the part after '/' must not be empty"
        ));
    }
    Ok((first, rest))
}

fn join(first: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{first}/{name}"),
        None => first.to_string(),
    }
}

fn is_valid_type(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.len() <= MAX_TYPE_LENGTH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_ids() {
        assert_eq!(parse_component_id("otlp").unwrap().id, "otlp");
        let named = parse_component_id("otlp_grpc/ backend ").unwrap();
        assert_eq!(
            (named.id.as_str(), named.component_type.as_str()),
            ("otlp_grpc/backend", "otlp_grpc")
        );
        assert_eq!(parse_component_id("a/b/c").unwrap().id, "a/b/c");
        assert!(parse_component_id("").is_err());
        assert!(parse_component_id("/x").is_err());
        assert!(parse_component_id("otlp/").is_err());
        assert!(parse_component_id("1otlp").is_err());
        assert!(parse_component_id("otlp-http").is_err());
        assert!(parse_component_id(&"a".repeat(63)).is_ok());
        assert!(parse_component_id(&"a".repeat(64)).is_err());
    }

    #[test]
    fn pipeline_ids() {
        let id = parse_pipeline_id("traces/2").unwrap();
        assert_eq!((id.id.as_str(), id.signal), ("traces/2", Signal::Traces));
        assert_eq!(
            parse_pipeline_id("profiles").unwrap().signal,
            Signal::Profiles
        );
        assert!(parse_pipeline_id("trace").is_err());
        assert!(parse_pipeline_id("logs/").is_err());
    }
}
