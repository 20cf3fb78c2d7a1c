//! The corpus: realistic configurations under `corpus/valid` must publish (no error-severity
//! problem under the built-in rules), and each one under `corpus/broken` must produce exactly
//! the validation problems its sibling `.expected.json` lists (lint rules off, so the lists
//! hold what the Collector itself would refuse, plus unknown-type warnings).

use std::fs;
use std::path::{Path, PathBuf};

use ampora_collector_config::{analyze, builtin_lint_rules, Catalog, Severity};
use serde::Deserialize;

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct ExpectedProblem {
    severity: Severity,
    rule: String,
    message: String,
    line: usize,
    column: usize,
}

fn yaml_files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_configurations_have_no_error() {
    let files = yaml_files("valid");
    assert!(
        files.len() >= 12,
        "the valid corpus shrank to {}",
        files.len()
    );
    for path in files {
        let yaml = fs::read_to_string(&path).unwrap();
        let analysis = analyze(&yaml, &Catalog::builtin(), &builtin_lint_rules());
        let errors: Vec<_> = analysis
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        assert!(analysis.graph.is_some(), "{}", path.display());
    }
}

#[test]
fn the_servers_test_shape_is_clean_under_every_builtin_rule() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid/minimal-otlp.yaml");
    let analysis = analyze(
        &fs::read_to_string(path).unwrap(),
        &Catalog::builtin(),
        &builtin_lint_rules(),
    );
    assert_eq!(analysis.problems, vec![]);
}

#[test]
fn broken_configurations_have_exactly_the_expected_problems() {
    let files = yaml_files("broken");
    assert!(
        files.len() >= 15,
        "the broken corpus shrank to {}",
        files.len()
    );
    for path in files {
        let yaml = fs::read_to_string(&path).unwrap();
        let analysis = analyze(&yaml, &Catalog::builtin(), &[]);
        let actual: Vec<ExpectedProblem> = analysis
            .problems
            .into_iter()
            .map(|p| ExpectedProblem {
                severity: p.severity,
                rule: p.rule,
                message: p.message,
                line: p.line,
                column: p.column,
            })
            .collect();
        let expected_path = path.with_extension("expected.json");
        let expected: Vec<ExpectedProblem> = serde_json::from_str(
            &fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", expected_path.display())),
        )
        .unwrap();
        assert_eq!(actual, expected, "{}", path.display());
        assert!(
            actual.iter().any(|p| p.severity == Severity::Error),
            "{} must not publish",
            path.display()
        );
    }
}
