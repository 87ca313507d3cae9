//! API errors shaped like the real API server's `metav1.Status` responses.
//!
//! Message formats follow k8s.io/apimachinery/pkg/api/errors/errors.go (`NewNotFound`,
//! `NewAlreadyExists`, `NewConflict`, `NewInvalid`, `NewForbidden`) and the RBAC authorizer's
//! denial text (plugin/pkg/auth/authorizer/rbac/rbac.go via
//! staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go `forbiddenMessage`).

use serde_json::{json, Value};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status: the token to finish a list whose snapshot expired.
    pub continue_token: Option<String>,
}

/// One `details.causes[]` item of a 422 Invalid.
#[derive(Debug, Clone)]
pub struct Cause {
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueDuplicate`, `FieldValueForbidden`.
    pub reason: &'static str,
    /// The text after the field path, e.g. `Required value` or `Invalid value: "x": ...`.
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `pods "x" not found` (the qualified resource, e.g. `storageclasses.storage.k8s.io`).
    pub fn not_found(qualified_resource: &str, name: &str) -> Self {
        let (kind, group) = split_qualified(qualified_resource);
        Self::new(
            404,
            "NotFound",
            format!("{qualified_resource} \"{name}\" not found"),
        )
        .with_details(details(name, group, kind))
    }

    /// A path the server does not serve: the generic 404 body (`the server could not find the requested resource`).
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(qualified_resource: &str, name: &str) -> Self {
        let (kind, group) = split_qualified(qualified_resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified_resource} \"{name}\" already exists"),
        )
        .with_details(details(name, group, kind))
    }

    pub fn conflict(qualified_resource: &str, name: &str, why: &str) -> Self {
        let (kind, group) = split_qualified(qualified_resource);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified_resource} \"{name}\": {why}"),
        )
        .with_details(details(name, group, kind))
    }

    /// `Pod "x" is invalid: [spec.a: Required value, spec.b: Invalid value: ...]`
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut d = details(name, group, kind);
        d["causes"] = Value::Array(causes_json);
        Self::new(
            422,
            "Invalid",
            // errors.go NewInvalid names the qualified kind: `Pod`, `CronJob.batch`.
            if group.is_empty() {
                format!("{kind} \"{name}\" is invalid: {joined}")
            } else {
                format!("{kind}.{group} \"{name}\" is invalid: {joined}")
            },
        )
        .with_details(d)
    }

    /// A Forbidden with a ready-made message (admission plugins such as PodSecurity).
    pub fn forbidden_message(qualified_resource: &str, name: &str, message: String) -> Self {
        let (kind, group) = split_qualified(qualified_resource);
        Self::new(403, "Forbidden", message).with_details(details(name, group, kind))
    }

    /// RBAC denial: `pods "x" is forbidden: User "alice" cannot create resource "pods/exec" in API group "" in the namespace "shop"`.
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let full = match subresource {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_string(),
        };
        let subject = match name {
            Some(n) => format!("{qualified} \"{n}\" is forbidden"),
            None => format!("{qualified} is forbidden"),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!("{subject}: User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{group}\" {scope}"),
        )
        .with_details(details(name.unwrap_or(""), group, resource))
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 for a PATCH of a type the server does not apply; the text of apimachinery
    /// `negotiation.NewUnsupportedMediaTypeError` (which does not repeat the type sent).
    pub fn unsupported_media_type(content_type: &str) -> Self {
        tracing::debug!(content_type, "unsupported patch type");
        Self::new(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")
    }

    /// 415 for a create/update body in an encoding kubesim cannot decode.
    pub fn unsupported_body(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 410 for a watch from a resourceVersion the server no longer has history for.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 for a list continued after its snapshot was compacted away, with a token that
    /// continues from the current state (etcd3 `handleCompactedErrorForPaging`; the text is
    /// its `inconsistentContinue`).
    pub fn continue_expired(token: String) -> Self {
        let mut e = Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
        );
        e.continue_token = Some(token);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if let Some(c) = &self.continue_token {
            v["metadata"]["continue"] = json!(c);
        }
        v
    }
}

fn split_qualified(q: &str) -> (&str, &str) {
    match q.split_once('.') {
        Some((r, g)) => (r, g),
        None => (q, ""),
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({ "kind": kind });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_text_matches_rbac_denials() {
        let e = ApiError::forbidden("alice", "create", "", "pods", None, Some("shop"), None);
        assert_eq!(
            e.message,
            "pods is forbidden: User \"alice\" cannot create resource \"pods\" in API group \"\" in the namespace \"shop\""
        );
        assert_eq!(e.to_status()["code"], 403);
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "Pod",
            "",
            "x",
            vec![Cause {
                field: "spec.containers[0].image".into(),
                reason: "FieldValueRequired",
                message: "Required value".into(),
            }],
        );
        assert_eq!(
            e.message,
            "Pod \"x\" is invalid: spec.containers[0].image: Required value"
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
    }
}
