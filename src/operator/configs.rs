//! `ampora configs …`.

use std::io::Read;
use std::path::Path;

use ampora_collector_config::{analyze, builtin_lint_rules, Catalog, Problem, Severity};

use crate::cli::{OutputFormat, ValidateArgs};

/// Exit status when the file holds a problem of error severity.
const EXIT_PROBLEMS: i32 = 1;
/// Exit status when the file cannot be read (sysexits' EX_NOINPUT).
const EXIT_NO_INPUT: i32 = 66;

/// `ampora configs validate FILE`: the server's validator and built-in lint rules, on this
/// machine. Returns the exit status: 0 when nothing blocks publishing, 1 when a problem of error
/// severity stands, 66 when the file cannot be read.
pub fn validate(args: &ValidateArgs) -> i32 {
    let yaml = match read(&args.file) {
        Ok(yaml) => yaml,
        Err(error) => {
            eprintln!("ampora: cannot read {}: {error}", args.file.display());
            return EXIT_NO_INPUT;
        }
    };
    let analysis = analyze(&yaml, &Catalog::builtin(), &builtin_lint_rules());
    match args.output {
        OutputFormat::Table => {
            for problem in &analysis.problems {
                println!("{}", line(&args.file, problem));
            }
            let errors = analysis
                .problems
                .iter()
                .filter(|problem| problem.severity == Severity::Error)
                .count();
            let warnings = analysis.problems.len() - errors;
            eprintln!(
                "{}: {errors} error(s), {warnings} warning(s)",
                args.file.display()
            );
        }
        OutputFormat::Json => {
            let body = serde_json::json!({"problems": analysis.problems});
            println!("{body}");
        }
    }
    if analysis.blocks_publish() {
        EXIT_PROBLEMS
    } else {
        0
    }
}

fn read(file: &Path) -> std::io::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// `FILE:LINE:COLUMN: severity [rule] message (hint)`, as compilers print, so editors and CI
/// logs link to the place.
fn line(file: &Path, problem: &Problem) -> String {
    let mut text = format!(
        "{}:{}:{}: {} [{}] {}",
        file.display(),
        problem.line,
        problem.column,
        problem.severity.as_str(),
        problem.rule,
        problem.message
    );
    if let Some(hint) = &problem.hint {
        text.push_str(&format!(" (hint: {hint})"));
    }
    text
}
