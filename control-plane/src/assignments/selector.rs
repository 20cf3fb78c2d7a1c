//! Label selectors: `k=v,k2=v2`, every pair matching an identifying or non-identifying
//! attribute of the agent (compared as text, as the `attr=` filter of the agent list does).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("a selector needs at least one key=value pair")]
    Empty,
    #[error("selector term {0:?} is not key=value")]
    NotAPair(String),
    #[error("selector term {0:?} has an empty key")]
    EmptyKey(String),
}

/// Pairs that must all match, sorted and without duplicates: equal selectors compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(Vec<(String, String)>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut pairs = Vec::new();
        for term in text
            .split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
        {
            let (key, value) = term
                .split_once('=')
                .ok_or_else(|| SelectorError::NotAPair(term.to_owned()))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(SelectorError::EmptyKey(term.to_owned()));
            }
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
        if pairs.is_empty() {
            return Err(SelectorError::Empty);
        }
        pairs.sort();
        pairs.dedup();
        Ok(Selector(pairs))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Whether every pair is among `attributes` (sorted, as
    /// [`AgentSummary::attribute_pairs`](crate::agents::snapshot::AgentSummary::attribute_pairs)
    /// gives them).
    pub fn matches(&self, attributes: &[(String, String)]) -> bool {
        self.0
            .iter()
            .all(|pair| attributes.binary_search(pair).is_ok())
    }
}

/// The canonical text: pairs sorted, `,`-separated; parses back to an equal selector.
impl fmt::Display for Selector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{key}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn parses_to_a_canonical_form() {
        let selector = Selector::parse(" env=prod , team=a,env=prod").unwrap();
        assert_eq!(selector.to_string(), "env=prod,team=a");
        assert_eq!(Selector::parse("team=a,env=prod").unwrap(), selector);
        assert_eq!(Selector::parse("url=a=b").unwrap().pairs()[0].1, "a=b");
    }

    #[test]
    fn refuses_what_is_not_pairs() {
        assert_eq!(Selector::parse(" , "), Err(SelectorError::Empty));
        assert_eq!(
            Selector::parse("env"),
            Err(SelectorError::NotAPair("env".into()))
        );
        assert_eq!(
            Selector::parse("=x"),
            Err(SelectorError::EmptyKey("=x".into()))
        );
    }

    #[test]
    fn matches_when_every_pair_is_an_attribute() {
        let selector = Selector::parse("env=prod,team=a").unwrap();
        assert!(selector.matches(&pairs(&[("env", "prod"), ("team", "a"), ("x", "1")])));
        assert!(!selector.matches(&pairs(&[("env", "prod")])));
        assert!(!selector.matches(&pairs(&[("env", "dev"), ("team", "a")])));
    }
}
