//! `${...}` references in scalar values, checked as the Collector's resolver reads them before
//! it starts: `${env:NAME}`, `${env:NAME:-default}`, `${NAME}`, `${scheme:value}` for other
//! providers, and `$$` for a literal `$`. A `$` followed by anything else stays literal.

use crate::problem::Problem;
use crate::rules;
use crate::yaml::{Node, Value};

const HINT: &str = "write ${env:NAME} or ${env:NAME:-default}; write $$ for a literal $";

/// Checks every scalar value under `node` (keys are not expanded by the Collector).
pub fn check(node: &Node, problems: &mut Vec<Problem>) {
    match &node.value {
        Value::Scalar(scalar) => {
            for (offset, message) in malformed_references(&scalar.text) {
                problems.push(
                    Problem::error(rules::ENV_SYNTAX, node.position_in_scalar(offset), message)
                        .with_hint(HINT),
                );
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| check(item, problems)),
        Value::Mapping(entries) => entries.iter().for_each(|(_, value)| check(value, problems)),
    }
}

/// Each malformed `${...}` in `text`: the character offset of its `$` and what is wrong.
fn malformed_references(text: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        match (chars[index], chars.get(index + 1)) {
            ('$', Some('$')) => index += 2,
            ('$', Some('{')) => match closing_brace(&chars, index + 2) {
                Some(end) => {
                    let inner: String = chars[index + 2..end].iter().collect();
                    if let Err(message) = check_inner(&inner) {
                        found.push((index, message));
                    }
                    index = end + 1;
                }
                None => {
                    let rest: String = chars[index..].iter().collect();
                    found.push((index, format!("{rest:?}: \"${{\" is not closed by \"}}\"")));
                    break;
                }
            },
            _ => index += 1,
        }
    }
    found
}

/// The `}` matching a `${` whose content starts at `from`, allowing nested `${...}` in
/// defaults.
fn closing_brace(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0;
    let mut index = from;
    while index < chars.len() {
        match chars[index] {
            '$' if chars.get(index + 1) == Some(&'{') => {
                depth += 1;
                index += 1;
            }
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
        index += 1;
    }
    None
}

fn check_inner(inner: &str) -> Result<(), String> {
    let reference = format!("${{{inner}}}");
    if inner.is_empty() {
        return Err(format!("{reference:?}: the reference is empty"));
    }
    let Some((scheme, value)) = inner.split_once(':') else {
        return check_variable_name(&reference, inner);
    };
    if !is_scheme(scheme) {
        return Err(format!("{reference:?}: invalid provider scheme {scheme:?}"));
    }
    if scheme == "env" {
        let name = value.split_once(":-").map_or(value, |(name, _)| name);
        return check_variable_name(&reference, name);
    }
    if value.is_empty() {
        return Err(format!(
            "{reference:?}: the {scheme:?} provider needs a value after ':'"
        ));
    }
    Ok(())
}

fn check_variable_name(reference: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{reference:?}: invalid environment variable name {name:?}"
        ))
    }
}

/// URI scheme syntax, which the Collector requires of provider names.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(text: &str) -> Vec<usize> {
        malformed_references(text)
            .into_iter()
            .map(|(offset, _)| offset)
            .collect()
    }

    #[test]
    fn well_formed_references_pass() {
        for text in [
            "${env:HOME}",
            "${env:API_KEY:-none}",
            "${HOME}",
            "$$HOME and $$",
            "a ${env:A} b ${env:_B2}",
            "${file:/etc/x.yaml}",
            "${env:A:-${env:B}}",
            "$HOME",
            "cost: 5$",
        ] {
            assert_eq!(offsets(text), Vec::<usize>::new(), "{text}");
        }
    }

    #[test]
    fn malformed_references_are_found_at_their_dollar() {
        assert_eq!(offsets("x ${env:HOME"), vec![2]);
        assert_eq!(offsets("${}"), vec![0]);
        assert_eq!(offsets("ab${env:}"), vec![2]);
        assert_eq!(offsets("${env:1X}"), vec![0]);
        assert_eq!(offsets("${env:A-B}"), vec![0]);
        assert_eq!(offsets("${1x:y}"), vec![0]);
        assert_eq!(offsets("${file:}"), vec![0]);
        assert_eq!(offsets("$${env:OK} ${bad name}"), vec![11]);
    }
}
