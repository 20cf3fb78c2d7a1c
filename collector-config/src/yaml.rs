//! The YAML document as a small tree whose every node knows where it starts.
//!
//! saphyr's `MarkedYamlOwned` carries the spans; this module turns it into [`Node`] so the rest
//! of the crate matches on three shapes instead of saphyr's seven, and keeps scalars as the
//! operator wrote them (no early parsing: `0x10` stays text, as the Collector's own string
//! fields would see it).

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarStyle, YamlDataOwned, YamlLoader};
use saphyr_parser::{Marker, Parser};

/// A 1-based line and column, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn from_marker(marker: &Marker) -> Self {
        // saphyr's lines are 1-based, its columns 0-based.
        Position {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// One node of the document.
#[derive(Debug, Clone)]
pub struct Node {
    pub position: Position,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    /// Entries in document order.
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted) scalars may mean null; quoted ones are always strings.
    pub plain: bool,
    /// Where, in characters, each character of `text` sits in the source, when the scalar is
    /// written on one line without escapes; `None` for block and folded scalars, whose
    /// characters move. Positions inside such scalars fall back to the scalar's start.
    pub inline_start_column: Option<usize>,
}

impl Node {
    pub fn as_mapping(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// The scalar text, unless the scalar is YAML null.
    pub fn as_text(&self) -> Option<&str> {
        self.as_scalar()
            .filter(|s| !s.is_null())
            .map(|s| s.text.as_str())
    }

    /// An absent value (`key:` with nothing after it) or an explicit null.
    pub fn is_null(&self) -> bool {
        self.as_scalar().is_some_and(Scalar::is_null)
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_mapping()?
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }

    /// The position of the `offset`-th character of this scalar, or the scalar's start when the
    /// scalar does not map character for character onto one source line.
    pub fn position_in_scalar(&self, offset: usize) -> Position {
        match self.as_scalar().and_then(|s| s.inline_start_column) {
            Some(column) => Position {
                line: self.position.line,
                column: column + offset,
            },
            None => self.position,
        }
    }
}

impl Scalar {
    pub fn is_null(&self) -> bool {
        self.plain && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}

/// A document that could not be read, with where the reader stopped.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parses the first document of `source` (the Collector reads no other). `Ok(None)` for a
/// stream with no document at all.
pub fn parse_first_document(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut loader = YamlLoader::<MarkedYamlOwned>::default();
    loader.early_parse(false);
    let mut parser = Parser::new_from_str(source);
    let outcome = parser.load(&mut loader, false);
    let error = outcome.err().or_else(|| loader.error().cloned());
    if let Some(error) = error {
        return Err(SyntaxError {
            position: Position::from_marker(error.marker()),
            message: error.info().to_string(),
        });
    }
    let source_chars: Vec<char> = source.chars().collect();
    Ok(loader
        .into_documents()
        .into_iter()
        .next()
        .filter(|doc| !doc.is_badvalue())
        .map(|doc| convert(doc, &source_chars)))
}

fn convert(node: MarkedYamlOwned, source: &[char]) -> Node {
    let position = Position::from_marker(&node.span.start);
    let value = match node.data {
        YamlDataOwned::Representation(text, style, _) => {
            let inline_start_column =
                inline_start(&node.span, &text, style, source).map(|first| position.column + first);
            Value::Scalar(Scalar {
                text,
                plain: style == ScalarStyle::Plain,
                inline_start_column,
            })
        }
        YamlDataOwned::Sequence(items) => {
            Value::Sequence(items.into_iter().map(|n| convert(n, source)).collect())
        }
        YamlDataOwned::Mapping(entries) => Value::Mapping(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, source), convert(v, source)))
                .collect(),
        ),
        // A tag (`!!str`, `!custom`) changes nothing the Collector checks: read through it.
        YamlDataOwned::Tagged(_, inner) => return convert(*inner, source),
        // Early parsing is off and aliases are resolved by the loader, so what is left is an
        // empty value (e.g. an alias to an unknown anchor): treat it as null.
        YamlDataOwned::Value(_) | YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            Value::Scalar(Scalar {
                text: String::new(),
                plain: true,
                inline_start_column: None,
            })
        }
    };
    Node { position, value }
}

/// How many columns after the scalar's start its first character sits (1 for quotes), when the
/// source between the span's ends is exactly the text, quoted or not.
fn inline_start(
    span: &saphyr_parser::Span,
    text: &str,
    style: ScalarStyle,
    source: &[char],
) -> Option<usize> {
    let written: String = source
        .get(span.start.index()..span.end.index())?
        .iter()
        .collect();
    let (open, close) = match style {
        ScalarStyle::Plain => ("", ""),
        ScalarStyle::SingleQuoted => ("'", "'"),
        ScalarStyle::DoubleQuoted => ("\"", "\""),
        _ => return None,
    };
    let inner = written.strip_prefix(open)?.strip_suffix(close)?;
    (inner == text && !text.contains('\n')).then_some(open.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_for_keys_and_values() {
        let doc = parse_first_document("a:\n  bb: 'x y'\n").unwrap().unwrap();
        let (key, value) = &doc.as_mapping().unwrap()[0];
        assert_eq!(key.position, Position { line: 1, column: 1 });
        let (inner_key, inner_value) = &value.as_mapping().unwrap()[0];
        assert_eq!(inner_key.position, Position { line: 2, column: 3 });
        assert_eq!(inner_value.position, Position { line: 2, column: 7 });
        assert_eq!(
            inner_value.position_in_scalar(2),
            Position {
                line: 2,
                column: 10
            }
        );
    }

    #[test]
    fn syntax_error_has_its_position() {
        let error = parse_first_document("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.position.line >= 1, "{error:?}");
        assert!(!error.message.is_empty());
    }

    #[test]
    fn only_the_first_document_is_read() {
        let doc = parse_first_document("a: 1\n---\nb: [\n").unwrap().unwrap();
        assert!(doc.get("a").is_some());
        assert!(doc.get("b").is_none());
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let doc = parse_first_document("a: &x [1]\nb: *x\n").unwrap().unwrap();
        assert!(matches!(doc.get("b").unwrap().value, Value::Sequence(ref s) if s.len() == 1));
    }

    #[test]
    fn empty_stream_has_no_document() {
        assert!(parse_first_document("# nothing\n").unwrap().is_none());
    }

    #[test]
    fn block_scalars_point_at_their_start() {
        let doc = parse_first_document("a: |\n  x\n").unwrap().unwrap();
        let value = doc.get("a").unwrap();
        assert_eq!(value.position_in_scalar(0), value.position);
    }
}
