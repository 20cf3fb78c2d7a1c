//! The stable ids of every problem this crate reports. Validation rules are what the Collector
//! itself refuses (always errors, except an unknown component type); lint rules are advice
//! whose severity a workspace may change (see [`crate::lint`]).

// === validation ===
/// The YAML cannot be read.
pub const YAML_SYNTAX: &str = "yaml-syntax";
/// The document is empty or defines no component at all.
pub const EMPTY_CONFIG: &str = "empty-config";
/// A value has the wrong shape (a section that is not a mapping, a list that is not a list).
pub const INVALID_STRUCTURE: &str = "invalid-structure";
/// A top-level key that is not one of the Collector's sections.
pub const UNKNOWN_SECTION: &str = "unknown-section";
/// A key under `service` or a pipeline that the Collector does not know.
pub const UNKNOWN_KEY: &str = "unknown-key";
/// A component id that is not `type[/name]`.
pub const INVALID_ID: &str = "invalid-id";
/// A pipeline id that is not `traces|metrics|logs|profiles[/name]`.
pub const INVALID_PIPELINE_ID: &str = "invalid-pipeline-id";
/// No receivers, or no exporters, defined at all.
pub const MISSING_SECTION: &str = "missing-section";
/// `service.pipelines` is absent or empty.
pub const NO_PIPELINES: &str = "no-pipelines";
/// A pipeline or `service.extensions` names a component that is not defined.
pub const UNDEFINED_COMPONENT: &str = "undefined-component";
pub const PIPELINE_MISSING_RECEIVER: &str = "pipeline-missing-receiver";
pub const PIPELINE_MISSING_EXPORTER: &str = "pipeline-missing-exporter";
/// One processor listed twice in one pipeline.
pub const DUPLICATE_PROCESSOR: &str = "duplicate-processor";
/// A connector id equal to a receiver or exporter id.
pub const AMBIGUOUS_CONNECTOR_ID: &str = "ambiguous-connector-id";
/// A connector used on one side only, or only with signal pairs it does not support.
pub const CONNECTOR_UNMATCHED: &str = "connector-unmatched";
/// Pipelines feeding each other through connectors in a loop.
pub const PIPELINE_CYCLE: &str = "pipeline-cycle";
/// A component type the catalog does not know (warning), or the agents lack (error).
pub const UNKNOWN_COMPONENT_TYPE: &str = "unknown-component-type";
/// A malformed `${...}` or `$` in a scalar value.
pub const ENV_SYNTAX: &str = "env-syntax";

// === lint ===
pub const MEMORY_LIMITER_FIRST: &str = "memory-limiter-first";
pub const BATCH_PROCESSOR: &str = "batch-processor";
pub const NO_DEBUG_EXPORTER: &str = "no-debug-exporter";
pub const PLAINTEXT_ENDPOINT: &str = "plaintext-endpoint";
pub const SECRET_LITERAL: &str = "secret-literal";
pub const UNUSED_COMPONENT: &str = "unused-component";
