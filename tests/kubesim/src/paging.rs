//! Paged lists: `limit` and `continue`, as the API server serves them from etcd
//! (kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks;
//! staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go `GetList`, `storage/continue.go`).
//!
//! * A list with `limit=N` returns at most N items and, when more remain, `metadata.continue`;
//!   without selectors also `metadata.remainingItemCount`. kubectl asks with `limit=500`.
//! * Every page of one list reads the same state: the first page's resourceVersion, kept in
//!   the continue token. kubesim keeps that snapshot ([`crate::store::Store::keep_snapshot`])
//!   for as long as etcd keeps a revision before the API server compacts it (5 minutes); after
//!   that the next page gets 410 `Expired` with a token that continues at the same key from the
//!   current state, which a client may use knowing the list is then inconsistent.
//! * A page may hold fewer than `limit` items when selectors filter some out; only the absence
//!   of `continue` says the list is complete.
//! * The token is etcd3's: base64url (no padding) of
//!   `{"v":"meta.k8s.io/v1","rv":<rv>,"start":"<key after the last item>\u0000"}`, the key
//!   relative to the resource's prefix (`<namespace>/<name>` across namespaces). `rv` -1 means
//!   "from the current state" (the token handed out with a 410).

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Snapshot;

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

#[derive(Debug, Serialize, Deserialize)]
struct Token {
    v: String,
    rv: i64,
    start: String,
}

/// Where a continued list resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The resourceVersion of the first page; -1 for "the current state".
    pub rv: i64,
    /// The first key (relative to the resource's prefix) the next page may hold.
    pub start: String,
}

pub fn encode(start: &str, rv: i64) -> String {
    let t = Token {
        v: TOKEN_VERSION.into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).expect("a token serializes"))
}

/// The continue token's content, or why it is not one (the text after `invalid continue
/// token: ` in the 400 the API server answers).
pub fn decode(token: &str) -> Result<Continue, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| format!("continue key is not valid: {e}"))?;
    let t: Token =
        serde_json::from_slice(&bytes).map_err(|e| format!("continue key is not valid: {e}"))?;
    if t.v != TOKEN_VERSION {
        return Err(format!(
            "continue key is not valid: server does not recognize this encoded version \"{}\"",
            t.v
        ));
    }
    if t.rv == 0 {
        return Err("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into());
    }
    if t.start.is_empty() {
        return Err(
            "continue key is not valid: encoded start key empty (version meta.k8s.io/v1)".into(),
        );
    }
    // etcd3's decoder refuses keys that path-cleaning would change (`..`, `//`), so a token
    // cannot reach outside the resource's prefix.
    if t.start.split('/').any(|s| s == ".." || s == ".") || t.start.contains("//") {
        return Err(format!("continue key is not valid: {}", t.start));
    }
    Ok(Continue {
        rv: t.rv,
        start: t.start,
    })
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Arc<Value>>,
    /// The token for the next page, when more items remain.
    pub continue_token: Option<String>,
    /// How many objects follow this page; only for a list without selectors.
    pub remaining: Option<usize>,
}

/// The page of `snap` that starts at key `start` (or at the beginning), with at most `limit`
/// items that `keep` selects. `counted`: the list has no selectors, so the number of remaining
/// items is known.
pub fn page(
    snap: &Snapshot,
    start: Option<&str>,
    limit: Option<usize>,
    keep: impl Fn(&Value) -> bool,
    counted: bool,
) -> Page {
    let from = match start {
        Some(s) => snap
            .items
            .partition_point(|(k, _)| k.as_bytes() < s.as_bytes()),
        None => 0,
    };
    let mut items = Vec::new();
    let mut last = None;
    for (i, (_, v)) in snap.items.iter().enumerate().skip(from) {
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
        if keep(v) {
            items.push(v.clone());
            last = Some(i);
        }
    }
    // More remain when an item after the last one returned exists, whether or not the
    // selectors will keep it (etcd3 cannot know either: the next page may come back empty).
    let more = limit.is_some() && last.is_some_and(|i| i + 1 < snap.items.len());
    let continue_token = match last {
        Some(i) if more => Some(encode(&format!("{}\u{0}", snap.items[i].0), snap.rv as i64)),
        _ => None,
    };
    let remaining = match last {
        Some(i) if more && counted => Some(snap.items.len() - i - 1),
        _ => None,
    };
    Page {
        items,
        continue_token,
        remaining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(keys: &[&str]) -> Snapshot {
        Snapshot {
            rv: 42,
            items: Arc::new(
                keys.iter()
                    .map(|k| (k.to_string(), Arc::new(json!({"metadata": {"name": k}}))))
                    .collect(),
            ),
        }
    }

    fn names(p: &Page) -> Vec<String> {
        p.items
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn pages_walk_the_snapshot_once_in_key_order() {
        let s = snap(&["a/1", "a/2", "b/1", "b/2", "c/1"]);
        let mut seen = Vec::new();
        let mut start: Option<String> = None;
        let mut pages = 0;
        loop {
            let p = page(&s, start.as_deref(), Some(2), |_| true, true);
            pages += 1;
            seen.extend(names(&p));
            match p.continue_token {
                Some(t) => {
                    assert_eq!(p.remaining, Some(5 - seen.len()));
                    let c = decode(&t).unwrap();
                    assert_eq!(c.rv, 42);
                    start = Some(c.start);
                }
                None => {
                    assert_eq!(p.remaining, None);
                    break;
                }
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ["a/1", "a/2", "b/1", "b/2", "c/1"]);
    }

    #[test]
    fn a_filtered_page_may_be_short_and_has_no_count() {
        let s = snap(&["a", "b", "c", "d"]);
        let p = page(&s, None, Some(1), |v| v["metadata"]["name"] != "a", false);
        assert_eq!(names(&p), ["b"]);
        assert!(p.continue_token.is_some());
        assert_eq!(p.remaining, None);
        // The last matching item is the last item: no token.
        let p = page(&s, None, Some(5), |v| v["metadata"]["name"] == "d", false);
        assert_eq!(names(&p), ["d"]);
        assert!(p.continue_token.is_none());
    }

    #[test]
    fn without_limit_everything_comes_and_no_token() {
        let s = snap(&["a", "b"]);
        let p = page(&s, None, None, |_| true, true);
        assert_eq!(names(&p), ["a", "b"]);
        assert!(p.continue_token.is_none() && p.remaining.is_none());
    }

    #[test]
    fn tokens_are_etcd3_tokens_and_bad_ones_are_refused() {
        let t = encode("shop/web-0\u{0}", 7);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            r#"{"v":"meta.k8s.io/v1","rv":7,"start":"shop/web-0\u0000"}"#
        );
        assert_eq!(
            decode(&t).unwrap(),
            Continue {
                rv: 7,
                start: "shop/web-0\u{0}".into()
            }
        );
        assert!(decode("not base64!").is_err());
        assert!(decode(&encode("x", 0)).is_err());
        assert!(decode(&encode("", 3)).is_err());
        assert!(decode(&encode("../secrets/x", 3)).is_err());
    }
}
