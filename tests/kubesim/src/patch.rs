//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch for the fields kubesim's
//! clients patch (metadata maps, status, spec scalars: merge semantics plus `$patch: delete`
//! and list merging by `name` for containers/volumes/conditions, as in
//! staging/src/k8s.io/apimachinery/pkg/util/strategicpatch), and JSON patch (RFC 6902).

use serde_json::Value;

use crate::errors::ApiError;

pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// List fields whose strategic-merge key is `name` (containers, volumes, env, ports…) or
/// `type` (conditions). Other lists are replaced, as their patchStrategy is `replace`.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "volumeMounts"
        | "env"
        | "containerStatuses"
        | "initContainerStatuses" => Some("name"),
        "conditions" => Some("type"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v, t.get_mut(k)) {
            (Some(mk), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = item.get(mk).cloned();
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match existing
                        .iter()
                        .position(|e| id.is_some() && e.get(mk) == id.as_ref())
                    {
                        Some(i) if delete => {
                            existing.remove(i);
                        }
                        Some(i) => strategic_merge_patch(&mut existing[i], item),
                        None if !delete => existing.push(item.clone()),
                        None => {}
                    }
                }
            }
            (_, Value::Object(_), _) => {
                strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v)
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for p in &parts[..parts.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!("jsonpatch: path component {p:?} does not exist"))
        })?;
    }
    Ok(cur)
}

pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let parts = pointer_parts(op["path"].as_str().unwrap_or_default())?;
        let last = parts.last().cloned().unwrap_or_default();
        match kind {
            "add" | "replace" => {
                let value = op["value"].clone();
                let parent = parent_mut(doc, &parts)?;
                match parent {
                    Value::Object(m) => {
                        if kind == "replace" && !m.contains_key(&last) {
                            return Err(ApiError::bad_request(format!("jsonpatch replace operation does not apply: doc is missing key: {}", op["path"])));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) => {
                        if last == "-" {
                            a.push(value);
                        } else {
                            let i: usize = last
                                .parse()
                                .map_err(|_| ApiError::bad_request("jsonpatch: bad array index"))?;
                            if kind == "add" && i <= a.len() {
                                a.insert(i, value);
                            } else if i < a.len() {
                                a[i] = value;
                            } else {
                                return Err(ApiError::bad_request(
                                    "jsonpatch: array index out of bounds",
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(ApiError::bad_request(
                            "jsonpatch: parent is not a container",
                        ))
                    }
                }
            }
            "remove" => {
                let parent = parent_mut(doc, &parts)?;
                let removed = match parent {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(ApiError::bad_request(format!(
                        "jsonpatch remove operation does not apply: doc is missing path: {}",
                        op["path"]
                    )));
                }
            }
            "test" => {
                if doc.pointer(op["path"].as_str().unwrap_or_default()) != Some(&op["value"]) {
                    return Err(ApiError::bad_request(
                        "jsonpatch test operation does not apply",
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported JSON patch operation {other:?}"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_removes_nulls_and_merges_maps() {
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        merge_patch(
            &mut d,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(d, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn strategic_merges_lists_by_key() {
        let mut d = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        strategic_merge_patch(
            &mut d,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}]}}),
        );
        assert_eq!(d["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(d["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": [1, 2]});
        json_patch(&mut d, &json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/a/0", "value": 0}])).unwrap();
        assert_eq!(d, json!({"a": [0, 2, 3]}));
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
