//! A tool's argument validator: its input schema compiled as JSON Schema draft 2020-12 (with
//! `format` asserted), and messages for the model that name each failing location and what the
//! schema wants there, never the value the agent sent (arguments carry personal data).

use std::fmt::Write as _;

use boon::ErrorKind;

/// Where the input schema is registered with the compiler: a name, nothing is fetched.
const SCHEMA_URL: &str = "urn:tollgate:tool-input";

/// A compiled input schema.
pub(crate) struct ArgumentValidator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for ArgumentValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgumentValidator").finish_non_exhaustive()
    }
}

impl ArgumentValidator {
    /// Compiles `schema` (validated against the draft 2020-12 meta-schema first; every `pattern`
    /// compiled). The error says what is wrong with the schema.
    pub(crate) fn compile(schema: serde_json::Value) -> Result<Self, String> {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        compiler.enable_format_assertions();
        compiler
            .add_resource(SCHEMA_URL, schema)
            .map_err(|e| e.to_string())?;
        let mut schemas = boon::Schemas::new();
        let index = compiler
            .compile(SCHEMA_URL, &mut schemas)
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self { schemas, index })
    }

    /// Up to `limit` problems with `args`, each "`<location>`: <what the schema wants>" (the
    /// location is "arguments" for the whole object); empty when they are valid.
    pub(crate) fn problems(&self, args: &serde_json::Value, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.schemas.validate(args, self.index) {
            collect(&e, limit, &mut out);
        }
        out
    }
}

/// The leaves of boon's error tree (groups, `$ref`s and `allOf` hold the real errors as
/// causes); `anyOf` / `oneOf` are reported as one problem, as the model reads them best.
fn collect(e: &boon::ValidationError<'_, '_>, limit: usize, out: &mut Vec<String>) {
    if out.len() >= limit {
        return;
    }
    match message(&e.kind) {
        Some(what) => {
            let path = e.instance_location.to_string();
            let place = if path.is_empty() {
                "arguments".to_owned()
            } else {
                format!("`{path}`")
            };
            out.push(format!("{place}: {what}"));
        }
        None => {
            for cause in &e.causes {
                collect(cause, limit, out);
            }
        }
    }
}

/// What the schema wants, naming the value only as "the value"; `None` for the kinds whose
/// causes say it.
fn message(kind: &ErrorKind<'_, '_>) -> Option<String> {
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = match kind {
        ErrorKind::Group
        | ErrorKind::Schema { .. }
        | ErrorKind::Reference { .. }
        | ErrorKind::AllOf
        | ErrorKind::ContentSchema => return None,
        ErrorKind::Type { want, .. } => {
            let mut types = String::new();
            for (i, t) in want.iter().enumerate() {
                if i > 0 {
                    types.push_str(" or ");
                }
                let _ = write!(types, "{t}");
            }
            format!("the value is not of type {types}")
        }
        ErrorKind::Enum { want } => format!(
            "the value is not one of {}",
            serde_json::Value::Array(want.to_vec())
        ),
        ErrorKind::Const { want } => format!("the value is not {want}"),
        ErrorKind::Format { want, .. } => format!("the value is not a \"{want}\""),
        ErrorKind::MinLength { want, .. } => {
            format!(
                "the value is shorter than {want} character{}",
                plural(*want)
            )
        }
        ErrorKind::MaxLength { want, .. } => {
            format!("the value is longer than {want} character{}", plural(*want))
        }
        ErrorKind::Pattern { want, .. } => format!("the value does not match \"{want}\""),
        ErrorKind::Minimum { want, .. } => format!("the value is less than {want}"),
        ErrorKind::Maximum { want, .. } => format!("the value is greater than {want}"),
        ErrorKind::ExclusiveMinimum { want, .. } => {
            format!("the value is less than or equal to {want}")
        }
        ErrorKind::ExclusiveMaximum { want, .. } => {
            format!("the value is greater than or equal to {want}")
        }
        ErrorKind::MultipleOf { want, .. } => format!("the value is not a multiple of {want}"),
        ErrorKind::Required { want } => format!("missing required property {}", list(want)),
        ErrorKind::Dependency { prop, missing }
        | ErrorKind::DependentRequired { prop, missing } => {
            format!("`{prop}` requires {}", list(missing))
        }
        ErrorKind::AdditionalProperties { got } => {
            let names: Vec<&str> = got.iter().map(|n| n.as_ref()).collect();
            format!("unexpected properties: {}", list(&names))
        }
        ErrorKind::PropertyName { .. } => "a property name is not allowed here".to_owned(),
        ErrorKind::MinProperties { want, .. } => {
            format!("the value has fewer than {want} properties")
        }
        ErrorKind::MaxProperties { want, .. } => {
            format!("the value has more than {want} properties")
        }
        ErrorKind::MinItems { want, .. } => {
            format!("the value has fewer than {want} item{}", plural(*want))
        }
        ErrorKind::MaxItems { want, .. } => {
            format!("the value has more than {want} item{}", plural(*want))
        }
        ErrorKind::AdditionalItems { .. } => "the value has more items than allowed".to_owned(),
        ErrorKind::UniqueItems { .. } => "the value has non-unique items".to_owned(),
        ErrorKind::Contains => "the value has no item matching the schema".to_owned(),
        ErrorKind::MinContains { want, .. } => {
            format!("the value has fewer than {want} matching items")
        }
        ErrorKind::MaxContains { want, .. } => {
            format!("the value has more than {want} matching items")
        }
        ErrorKind::ContentEncoding { want, .. } => format!("the value is not {want}-encoded"),
        ErrorKind::ContentMediaType { want, .. } => format!("the value is not {want}"),
        ErrorKind::FalseSchema => "no value is allowed here".to_owned(),
        ErrorKind::Not => "the value must not match the schema here".to_owned(),
        ErrorKind::AnyOf => {
            "the value is not valid under any of the schemas listed in the 'anyOf' keyword"
                .to_owned()
        }
        ErrorKind::OneOf(None) => {
            "the value is not valid under any of the schemas listed in the 'oneOf' keyword"
                .to_owned()
        }
        ErrorKind::OneOf(Some(_)) => {
            "the value is valid under more than one of the schemas listed in the 'oneOf' keyword"
                .to_owned()
        }
        ErrorKind::RefCycle { .. } => "the input schema has a reference cycle".to_owned(),
    };
    Some(text)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::ArgumentValidator;

    #[test]
    fn each_problem_names_its_place_and_never_the_value() {
        let v = ArgumentValidator::compile(serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "id": { "type": "string", "pattern": "^C-[0-9]+$" },
                "email": { "type": "string", "format": "email" },
                "n": { "type": "integer", "minimum": 1 },
                "mode": { "enum": ["fast", "slow"] },
                "who": {}
            },
            "required": ["id", "who"],
            "additionalProperties": false
        }))
        .expect("compiles");
        let secret = "SECRET-4111111111111111";
        let problems = v.problems(
            &serde_json::json!({
                "id": secret, "email": secret, "n": -7, "mode": secret, "extra": 1
            }),
            10,
        );
        let text = problems.join("; ");
        assert!(!text.contains(secret) && !text.contains("-7"), "{text}");
        for expected in [
            "`/id`: the value does not match \"^C-[0-9]+$\"",
            "`/email`: the value is not a \"email\"",
            "`/n`: the value is less than 1",
            "`/mode`: the value is not one of [\"fast\",\"slow\"]",
            "arguments: missing required property `who`",
            "arguments: unexpected properties: `extra`",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected} in {text}"
            );
        }
        assert_eq!(
            v.problems(&serde_json::json!({"id": "C-1", "who": 1}), 10)
                .len(),
            0
        );
        assert!(
            v.problems(&serde_json::json!({}), 1).len() == 1,
            "the limit holds"
        );
        assert!(ArgumentValidator::compile(serde_json::json!({"type": 7})).is_err());
    }
}
