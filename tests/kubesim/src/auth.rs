//! Bearer-token authentication and a small RBAC model: each token maps to a user whose rules
//! grant verbs on resources (`pods`, `pods/exec`, `*`) in namespaces (or cluster-wide).
//! Denials produce the RBAC authorizer's message; SelfSubjectAccessReview answers from the
//! same rules, as the real authorizer chain does.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rule {
    pub verbs: Vec<String>,
    /// `pods`, `pods/exec`, `persistentvolumeclaims`, `*`.
    pub resources: Vec<String>,
    /// Namespaces the rule applies in; empty means every namespace and cluster-scoped resources.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

impl Rule {
    pub fn new(verbs: &[&str], resources: &[&str], namespaces: &[&str]) -> Self {
        Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn allows(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let verb_ok = self.verbs.iter().any(|v| v == "*" || v == verb);
        let res_ok = self.resources.iter().any(|r| {
            r == "*"
                || r == resource
                || (r.ends_with("/*") && resource.starts_with(&r[..r.len() - 1]))
        });
        let ns_ok = self.namespaces.is_empty()
            || namespace.is_some_and(|ns| self.namespaces.iter().any(|n| n == ns));
        verb_ok && res_ok && ns_ok
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub rules: Vec<Rule>,
}

impl User {
    pub fn admin() -> Self {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            rules: vec![Rule::new(&["*"], &["*"], &[])],
        }
    }

    /// `resource` includes the subresource (`pods/exec`). Discovery and health endpoints are
    /// open to every authenticated user (system:discovery / system:basic-user in real RBAC).
    pub fn can(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        if self.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        // Everyone may ask about themselves (system:basic-user ClusterRole).
        if verb == "create"
            && (resource == "selfsubjectaccessreviews"
                || resource == "selfsubjectrulesreviews"
                || resource == "selfsubjectreviews")
        {
            return true;
        }
        self.rules
            .iter()
            .any(|r| r.allows(verb, resource, namespace))
    }
}

#[derive(Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, User>>,
}

impl Authenticator {
    pub fn add(&self, token: String, user: User) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, user);
    }

    /// The token already issued to the user `name`, if any.
    pub fn token_of(&self, name: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, u)| u.name == name)
            .map(|(t, _)| t.clone())
    }

    pub fn user_for(&self, authorization: Option<&str>) -> Option<User> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
}

pub fn new_token() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_scope_verbs_resources_namespaces() {
        let u = User {
            name: "viewer".into(),
            groups: vec![],
            rules: vec![Rule::new(
                &["get", "list"],
                &["pods", "persistentvolumeclaims"],
                &["shop"],
            )],
        };
        assert!(u.can("list", "pods", Some("shop")));
        assert!(!u.can("create", "pods", Some("shop")));
        assert!(!u.can("list", "pods", Some("payments")));
        assert!(!u.can("list", "pods", None));
        assert!(!u.can("create", "pods/exec", Some("shop")));
        assert!(User::admin().can("delete", "nodes", None));
    }
}
