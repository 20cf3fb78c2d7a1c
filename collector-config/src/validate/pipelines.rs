//! Each pipeline needs a receiver and an exporter, and lists a processor at most once.

use crate::config::Config;
use crate::problem::Problem;
use crate::rules;

pub fn check(config: &Config<'_>, problems: &mut Vec<Problem>) {
    if config.pipelines.is_empty() {
        problems.push(Problem::error(
            rules::NO_PIPELINES,
            config.pipelines_position.unwrap_or(config.start),
            "service::pipelines: at least one pipeline is needed",
        ));
    }
    for pipeline in &config.pipelines {
        let path = format!("service::pipelines::{}", pipeline.id);
        if pipeline.receivers.is_empty() {
            problems.push(Problem::error(
                rules::PIPELINE_MISSING_RECEIVER,
                pipeline.position,
                format!("{path}: must have at least one receiver"),
            ));
        }
        if pipeline.exporters.is_empty() {
            problems.push(Problem::error(
                rules::PIPELINE_MISSING_EXPORTER,
                pipeline.position,
                format!("{path}: must have at least one exporter"),
            ));
        }
        for (index, processor) in pipeline.processors.iter().enumerate() {
            if pipeline.processors[..index]
                .iter()
                .any(|p| p.id == processor.id)
            {
                problems.push(Problem::error(
                    rules::DUPLICATE_PROCESSOR,
                    processor.position,
                    format!(
                        "{path}: references processor {:?} more than once",
                        processor.id
                    ),
                ));
            }
        }
    }
}
