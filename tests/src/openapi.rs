//! Validation of the daemon's responses against the API's schema, docs/openapi.json.

use serde_json::Value;

use crate::paths::workspace_root;

/// docs/openapi.json.
pub fn openapi() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("docs/openapi.json")).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Validate `body` against the documented response of `path` with `status` in `doc`
/// (docs/openapi.json), panicking with every mismatch.
pub fn check_openapi(doc: &Value, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path]["get"]["responses"][status.to_string()];
    assert!(response.is_object(), "{path} answered {status}, which docs/openapi.json does not document");
    let schema = &response["content"]["application/json"]["schema"];
    // The schema refers to #/components/schemas/..., so validate with the whole document as
    // the root.
    let mut root = doc.clone();
    root["$ref"] = Value::String("#/$defs/__response".into());
    root["$defs"] = serde_json::json!({ "__response": schema });
    let validator = jsonschema::draft202012::new(&root).expect("docs/openapi.json schemas compile");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{path} ({status}) does not match docs/openapi.json:\n{}\n{body:#}", errors.join("\n"));
}
