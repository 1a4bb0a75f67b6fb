//! The tools a function serves: each registered once at cold start with its generated schema
//! and log plan; its argument validator is compiled on the first `tools/call` that needs it
//! (the gateway, which forwards calls, never compiles one; [`Catalog::check`] compiles them all,
//! which the tests do for every tool).

mod arguments;

pub use crate::tool::{JsonObject, schema_object};
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use rmcp::model::{CallToolResult, ToolAnnotations};

use crate::tool::{LogAs, Tool, ToolContext, ToolError, ToolOutput, ToolSpec};

/// A tool registration was refused at startup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Two tools share a name.
    #[error("tool {0} is registered twice")]
    Duplicate(String),
    /// The tool name is not valid for MCP.
    #[error("tool name {0:?} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '_', '-', '.'")]
    InvalidName(String),
    /// The input schema is not an object schema or does not compile.
    #[error("tool {tool}: input schema unusable: {reason}")]
    Schema {
        /// Tool name.
        tool: String,
        /// Why.
        reason: String,
    },
    /// The log plan names a field the input does not have.
    #[error("tool {tool}: log plan names unknown field {field}")]
    UnknownLogField {
        /// Tool name.
        tool: String,
        /// The field.
        field: String,
    },
}

trait ErasedTool: Send + Sync {
    fn call(
        &self,
        ctx: ToolContext,
        args: serde_json::Value,
    ) -> BoxFuture<'_, Result<CallToolResult, ToolError>>;
}

struct Typed<T>(T);

impl<T: Tool> ErasedTool for Typed<T> {
    fn call(
        &self,
        ctx: ToolContext,
        args: serde_json::Value,
    ) -> BoxFuture<'_, Result<CallToolResult, ToolError>> {
        async move {
            let input: T::Input = serde_json::from_value(args).map_err(|e| {
                // Serde's message names the field and the expected type, not the value.
                ToolError::business(format!("Invalid arguments: {}", masked_serde_error(&e)))
            })?;
            let output = self.0.call(ctx, input).await?;
            Ok(output.into_result())
        }
        .boxed()
    }
}

fn masked_serde_error(e: &serde_json::Error) -> String {
    // serde_json includes offending string values in some messages ("unknown variant `x`");
    // keep only the classification and position.
    let text = e.to_string();
    match text.find('`') {
        Some(i) => format!(
            "{} (line {}, column {})",
            text[..i].trim_end(),
            e.line(),
            e.column()
        ),
        None => text,
    }
}

/// One registered tool.
pub struct RegisteredTool {
    spec: ToolSpec,
    descriptor: rmcp::model::Tool,
    /// Compiled on first use: a function's init does not pay for it (nor for validating the
    /// schema against the draft 2020-12 meta-schema, which compiling does first).
    validator: std::sync::OnceLock<Result<arguments::ArgumentValidator, String>>,
    log_plan: BTreeMap<String, LogAs>,
    provider: Option<&'static str>,
    idempotency: crate::tool::Idempotency,
    task_support: crate::tool::TaskSupport,
    task_time_limit: Option<std::time::Duration>,
    inner: Box<dyn ErasedTool>,
}

impl std::fmt::Debug for RegisteredTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTool")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl RegisteredTool {
    /// Registers `tool`: generates its schemas, checks the log plan (the validator is compiled
    /// on first use, see [`Self::check`]).
    pub fn new<T: Tool>(tool: T) -> Result<Self, CatalogError> {
        let spec = tool.spec();
        let name = spec.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(CatalogError::InvalidName(name.to_owned()));
        }
        let input_schema = schema_object::<T::Input>();
        if input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(CatalogError::Schema {
                tool: name.to_owned(),
                reason: "the input type must be a struct (schema type \"object\")".to_owned(),
            });
        }
        let properties = input_schema.get("properties").and_then(|p| p.as_object());
        for (field, _) in spec.log_fields {
            if !properties.is_some_and(|p| p.contains_key(*field)) {
                return Err(CatalogError::UnknownLogField {
                    tool: name.to_owned(),
                    field: (*field).to_owned(),
                });
            }
        }
        let a = spec.annotations;
        let mut annotations = ToolAnnotations::new()
            .read_only(a.read_only)
            .destructive(a.destructive)
            .idempotent(a.idempotent)
            .open_world(a.open_world);
        annotations.title = Some(spec.title.to_owned());
        let idempotency = tool.idempotency();
        // The model learns the key requirement from the description (MCP has no standard
        // field for it yet).
        let description = match idempotency.description() {
            Some(extra) => format!("{}{extra}", spec.description),
            None => spec.description.to_owned(),
        };
        let mut descriptor = rmcp::model::Tool::new(name, description, Arc::new(input_schema))
            .with_title(spec.title)
            .with_annotations(annotations);
        if let Some(out) = T::Output::output_schema() {
            descriptor = descriptor.with_raw_output_schema(Arc::new(out));
        }
        Ok(Self {
            log_plan: spec
                .log_fields
                .iter()
                .map(|(f, how)| ((*f).to_owned(), *how))
                .collect(),
            spec,
            descriptor,
            validator: std::sync::OnceLock::new(),
            provider: tool.provider(),
            idempotency,
            task_support: tool.task_support(),
            task_time_limit: tool.task_time_limit(),
            inner: Box::new(Typed(tool)),
        })
    }

    /// The tool's declarations.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// The third-party provider whose user access token the tool needs, if any.
    pub fn provider(&self) -> Option<&'static str> {
        self.provider
    }

    /// Whether the tool may or must be called as a task.
    pub fn task_support(&self) -> crate::tool::TaskSupport {
        self.task_support
    }

    /// The tool's own limit on a task run, if it declares one.
    pub fn task_time_limit(&self) -> Option<std::time::Duration> {
        self.task_time_limit
    }

    /// Whether the tool takes an idempotency key.
    pub fn idempotency(&self) -> crate::tool::Idempotency {
        self.idempotency
    }

    /// The MCP `Tool` object listed to agents.
    pub fn descriptor(&self) -> &rmcp::model::Tool {
        &self.descriptor
    }

    /// How `field` may be logged.
    pub fn log_as(&self, field: &str) -> LogAs {
        self.log_plan
            .get(field)
            .copied()
            .unwrap_or(LogAs::Summarised)
    }

    fn validator(&self) -> Result<&arguments::ArgumentValidator, &str> {
        self.validator
            .get_or_init(|| {
                arguments::ArgumentValidator::compile(serde_json::Value::Object(
                    self.descriptor.input_schema.as_ref().clone(),
                ))
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Compiles the argument validator now (otherwise done by the first [`Self::validate`]):
    /// an input schema that does not compile is refused here.
    pub fn check(&self) -> Result<(), CatalogError> {
        self.validator()
            .map(|_| ())
            .map_err(|reason| CatalogError::Schema {
                tool: self.spec.name.to_owned(),
                reason: reason.to_owned(),
            })
    }

    /// Validates arguments against the input schema. On failure, returns a message for the
    /// model that names each failing location without echoing the values. A schema that does
    /// not compile refuses every call (logged once per call; the message names no detail).
    pub fn validate(&self, args: &serde_json::Value) -> Result<(), String> {
        let validator = match self.validator() {
            Ok(v) => v,
            Err(reason) => {
                tracing::error!(
                    tool = self.spec.name,
                    reason,
                    "input schema does not compile"
                );
                return Err(format!(
                    "Tool {} cannot check its arguments now; do not retry it.",
                    self.spec.name
                ));
            }
        };
        let problems = validator.problems(args, 5);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "Invalid arguments for tool {}. Fix these and call again: {}",
                self.spec.name,
                problems.join("; ")
            ))
        }
    }

    /// Runs the tool on validated arguments.
    pub fn call(
        &self,
        ctx: ToolContext,
        args: serde_json::Value,
    ) -> BoxFuture<'_, Result<CallToolResult, ToolError>> {
        self.inner.call(ctx, args)
    }
}

/// The tools one function serves, by name.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    tools: BTreeMap<String, Arc<RegisteredTool>>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool.
    pub fn register<T: Tool>(mut self, tool: T) -> Result<Self, CatalogError> {
        let registered = RegisteredTool::new(tool)?;
        let name = registered.spec.name.to_owned();
        if self.tools.contains_key(&name) {
            return Err(CatalogError::Duplicate(name));
        }
        self.tools.insert(name, Arc::new(registered));
        Ok(self)
    }

    /// One tool by name.
    pub fn get(&self, name: &str) -> Option<&Arc<RegisteredTool>> {
        self.tools.get(name)
    }

    /// Every tool, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RegisteredTool>> {
        self.tools.values()
    }

    /// A catalog holding only the tool `name` (a tool function's own view).
    pub fn only(&self, name: &str) -> Option<Self> {
        let tool = self.tools.get(name)?.clone();
        Some(Self {
            tools: BTreeMap::from([(name.to_owned(), tool)]),
        })
    }

    /// Compiles every tool's argument validator (the tests' check that each schema compiles;
    /// a function compiles one on its first call instead).
    pub fn check(&self) -> Result<(), CatalogError> {
        self.tools.values().try_for_each(|t| t.check())
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Whether some tool may be called as a task (the server then declares the `tasks`
    /// capability and serves the `tasks/*` methods).
    pub fn has_tasks(&self) -> bool {
        self.tools
            .values()
            .any(|t| t.task_support != crate::tool::TaskSupport::Forbidden)
    }

    /// Every scope some tool requires, sorted and deduplicated.
    pub fn scopes(&self) -> Vec<&'static str> {
        let set: std::collections::BTreeSet<&'static str> =
            self.tools.values().map(|t| t.spec.scope).collect();
        set.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;
    use serde::Deserialize;

    use super::*;
    use crate::tool::{Annotations, DefaultBudget};

    /// Input whose `code` field carries a regular expression no engine compiles.
    #[derive(Debug, Deserialize)]
    struct BadPattern {
        #[allow(dead_code)]
        code: String,
    }

    impl JsonSchema for BadPattern {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "BadPattern".into()
        }
        fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "type": "object",
                "properties": { "code": { "type": "string", "pattern": "([a-z" } },
                "required": ["code"]
            })
        }
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Good {
        /// A count.
        #[allow(dead_code)]
        n: u8,
    }

    struct Probe<I>(std::marker::PhantomData<I>);

    impl<I: serde::de::DeserializeOwned + JsonSchema + Send + Sync + 'static> Tool for Probe<I> {
        type Input = I;
        type Output = String;

        fn spec(&self) -> ToolSpec {
            ToolSpec {
                name: "probe",
                title: "Probe",
                description: "Test tool.",
                scope: "probe:run",
                annotations: Annotations::default(),
                budget: DefaultBudget::per_minute(10, 1),
                log_fields: &[],
            }
        }

        async fn call(&self, _: ToolContext, _: I) -> Result<String, ToolError> {
            Ok("ok".into())
        }
    }

    fn probe<I: serde::de::DeserializeOwned + JsonSchema + Send + Sync + 'static>() -> Catalog {
        Catalog::new()
            .register(Probe::<I>(std::marker::PhantomData))
            .expect("registers: the validator is not compiled yet")
    }

    #[test]
    fn the_validator_is_compiled_on_first_use_and_checks_arguments() {
        let catalog = probe::<Good>();
        let tool = catalog.get("probe").expect("registered");
        assert!(
            tool.validator.get().is_none(),
            "nothing compiled at registration"
        );
        assert!(tool.validate(&serde_json::json!({ "n": 3 })).is_ok());
        assert!(tool.validator.get().is_some());
        let refused = tool
            .validate(&serde_json::json!({ "n": "three" }))
            .expect_err("a string is not a count");
        assert!(refused.contains("`/n`"), "{refused}");
        assert!(
            !refused.contains("three"),
            "the value is not echoed: {refused}"
        );
        catalog.check().expect("a derived schema compiles");
    }

    #[test]
    fn a_schema_that_does_not_compile_is_refused_by_check_and_refuses_every_call() {
        let catalog = probe::<BadPattern>();
        match catalog.check() {
            Err(CatalogError::Schema { tool, reason }) => {
                assert_eq!(tool, "probe");
                assert!(!reason.is_empty());
            }
            other => panic!("expected a schema error, got {other:?}"),
        }
        let tool = catalog.get("probe").expect("registered");
        let refused = tool
            .validate(&serde_json::json!({ "code": "abc" }))
            .expect_err("no call runs without a validator");
        assert!(
            refused.contains("probe") && !refused.contains("[a-z"),
            "{refused}"
        );
    }
}
