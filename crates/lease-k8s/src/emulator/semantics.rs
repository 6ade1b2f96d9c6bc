//! The API server's rules for `coordination.k8s.io/v1` Leases, on JSON.
//!
//! Kept apart from HTTP so the rules are tested directly against what the
//! Kubernetes API documents: resourceVersion preconditions, Status bodies with
//! their `reason`, 404/409/422, and create-on-update.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub use crate::names::is_dns1123_subdomain;

const GROUP: &str = "coordination.k8s.io";
const API_VERSION: &str = "coordination.k8s.io/v1";

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// JSON body (an object or a `Status`).
    pub body: Value,
}

/// Every Lease the emulated API server stores.
#[derive(Debug, Default)]
pub struct LeaseStore {
    objects: BTreeMap<(String, String), Value>,
    resource_version: u64,
    uids: u64,
}

/// The verbs the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET one lease.
    Get,
    /// GET the collection.
    List,
    /// POST to the collection.
    Create,
    /// PUT one lease.
    Update,
    /// DELETE one lease.
    Delete,
}

fn status(code: u16, reason: &str, message: String, name: &str) -> Reply {
    Reply {
        status: code,
        body: json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": { "name": name, "group": GROUP, "kind": "leases" },
            "code": code,
        }),
    }
}

fn not_found(name: &str) -> Reply {
    status(
        404,
        "NotFound",
        format!("leases.{GROUP} \"{name}\" not found"),
        name,
    )
}

fn invalid(name: &str, why: &str) -> Reply {
    status(
        422,
        "Invalid",
        format!("Lease.{GROUP} \"{name}\" is invalid: {why}"),
        name,
    )
}

/// What a write may change: everything but server-managed metadata.
fn user_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            meta.remove(key);
        }
    }
    if let Some(obj) = copy.as_object_mut() {
        obj.remove("kind");
        obj.remove("apiVersion");
    }
    copy
}

impl LeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored object, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    fn validate(name: &str, object: &Value) -> Option<Reply> {
        if !is_dns1123_subdomain(name) {
            return Some(invalid(
                name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        match object.pointer("/spec/leaseDurationSeconds") {
            None | Some(Value::Null) => None,
            Some(v) if v.as_i64().is_some_and(|n| n > 0) => None,
            Some(_) => Some(invalid(
                name,
                "spec.leaseDurationSeconds: Invalid value: must be greater than 0",
            )),
        }
    }

    fn stamp(
        &mut self,
        namespace: &str,
        name: &str,
        mut object: Value,
        now: &str,
        existing: Option<&Value>,
    ) -> Value {
        self.resource_version += 1;
        let (uid, created) = match existing {
            Some(old) => (
                old.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                old.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            None => {
                self.uids += 1;
                (
                    json!(format!("00000000-0000-0000-0000-{:012}", self.uids)),
                    json!(now),
                )
            }
        };
        if !object.is_object() {
            object = json!({});
        }
        let meta = object
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.insert("name".into(), json!(name));
            meta.insert("namespace".into(), json!(namespace));
            meta.insert(
                "resourceVersion".into(),
                json!(self.resource_version.to_string()),
            );
            meta.insert("uid".into(), uid);
            meta.insert("creationTimestamp".into(), created);
        }
        if let Some(obj) = object.as_object_mut() {
            obj.insert("kind".into(), json!("Lease"));
            obj.insert("apiVersion".into(), json!(API_VERSION));
        }
        object
    }

    /// Applies one request; `now` is the server's time in RFC 3339.
    pub fn handle(
        &mut self,
        verb: Verb,
        namespace: &str,
        name: Option<&str>,
        body: Option<Value>,
        now: &str,
    ) -> Reply {
        match (verb, name) {
            (Verb::List, _) => Reply {
                status: 200,
                body: json!({
                    "kind": "LeaseList",
                    "apiVersion": API_VERSION,
                    "metadata": { "resourceVersion": self.resource_version.to_string() },
                    "items": self.objects.iter()
                        .filter(|((ns, _), _)| ns == namespace)
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<_>>(),
                }),
            },
            (Verb::Get, Some(name)) => match self.get(namespace, name) {
                Some(object) => Reply {
                    status: 200,
                    body: object.clone(),
                },
                None => not_found(name),
            },
            (Verb::Create, _) => {
                let body = body.unwrap_or(Value::Null);
                let name = body
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if let Some(reply) = Self::validate(&name, &body) {
                    return reply;
                }
                if self.get(namespace, &name).is_some() {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("leases.{GROUP} \"{name}\" already exists"),
                        &name,
                    );
                }
                let object = self.stamp(namespace, &name, body, now, None);
                self.objects
                    .insert((namespace.to_owned(), name), object.clone());
                Reply {
                    status: 201,
                    body: object,
                }
            }
            (Verb::Update, Some(name)) => {
                let body = body.unwrap_or(Value::Null);
                let body_name = body
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(name);
                if body_name != name {
                    return status(
                        400,
                        "BadRequest",
                        format!(
                            "the name of the object ({body_name}) does not match the name on the URL ({name})"
                        ),
                        name,
                    );
                }
                if let Some(reply) = Self::validate(name, &body) {
                    return reply;
                }
                let Some(precondition) = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                else {
                    return invalid(
                        name,
                        "metadata.resourceVersion: Invalid value: 0: must be specified for an update",
                    );
                };
                let key = (namespace.to_owned(), name.to_owned());
                let Some(existing) = self.objects.get(&key).cloned() else {
                    // Create-on-update: a PUT to a missing name creates it.
                    let object = self.stamp(namespace, name, body, now, None);
                    self.objects.insert(key, object.clone());
                    return Reply {
                        status: 201,
                        body: object,
                    };
                };
                let current = existing
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if precondition != current {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on leases.{GROUP} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                        ),
                        name,
                    );
                }
                if user_part(&body) == user_part(&existing) {
                    // A no-op write does not change the resourceVersion.
                    return Reply {
                        status: 200,
                        body: existing,
                    };
                }
                let object = self.stamp(namespace, name, body, now, Some(&existing));
                self.objects.insert(key, object.clone());
                Reply {
                    status: 200,
                    body: object,
                }
            }
            (Verb::Delete, Some(name)) => match self
                .objects
                .remove(&(namespace.to_owned(), name.to_owned()))
            {
                Some(_) => Reply {
                    status: 200,
                    body: json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": { "name": name, "group": GROUP, "kind": "leases" } }),
                },
                None => not_found(name),
            },
            (_, None) => status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".into(),
                "",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-27T10:00:00.000000Z";

    fn lease(name: &str, holder: &str) -> Value {
        json!({ "metadata": { "name": name }, "spec": { "holderIdentity": holder, "leaseDurationSeconds": 10 } })
    }

    fn rv(v: &Value) -> String {
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    #[test]
    fn create_then_conflicting_create() {
        let mut s = LeaseStore::new();
        let r = s.handle(Verb::Create, "ns", None, Some(lease("a", "x")), NOW);
        assert_eq!(r.status, 201);
        assert_eq!(r.body["kind"], "Lease");
        assert_eq!(rv(&r.body), "1");
        let again = s.handle(Verb::Create, "ns", None, Some(lease("a", "y")), NOW);
        assert_eq!(again.status, 409);
        assert_eq!(again.body["reason"], "AlreadyExists");
        assert_eq!(again.body["kind"], "Status");
        assert_eq!(again.body["details"]["name"], "a");
    }

    #[test]
    fn get_missing_is_404_not_found() {
        let mut s = LeaseStore::new();
        let r = s.handle(Verb::Get, "ns", Some("nope"), None, NOW);
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (404, Some("NotFound"))
        );
        assert_eq!(r.body["code"], 404);
    }

    #[test]
    fn update_needs_the_current_resource_version() {
        let mut s = LeaseStore::new();
        let created = s
            .handle(Verb::Create, "ns", None, Some(lease("a", "x")), NOW)
            .body;
        let mut stale = created.clone();
        stale["spec"]["holderIdentity"] = json!("y");
        let ok = s.handle(Verb::Update, "ns", Some("a"), Some(stale.clone()), NOW);
        assert_eq!(ok.status, 200);
        assert_eq!(rv(&ok.body), "2");
        // The same precondition again is stale now.
        stale["spec"]["holderIdentity"] = json!("z");
        let conflict = s.handle(Verb::Update, "ns", Some("a"), Some(stale), NOW);
        assert_eq!(conflict.status, 409);
        assert_eq!(conflict.body["reason"], "Conflict");
        assert_eq!(s.get("ns", "a").unwrap()["spec"]["holderIdentity"], "y");
    }

    #[test]
    fn an_identical_write_keeps_the_resource_version() {
        let mut s = LeaseStore::new();
        let created = s
            .handle(Verb::Create, "ns", None, Some(lease("a", "x")), NOW)
            .body;
        let same = s.handle(Verb::Update, "ns", Some("a"), Some(created.clone()), NOW);
        assert_eq!(same.status, 200);
        assert_eq!(rv(&same.body), rv(&created));
    }

    #[test]
    fn update_without_resource_version_is_422() {
        let mut s = LeaseStore::new();
        s.handle(Verb::Create, "ns", None, Some(lease("a", "x")), NOW);
        let r = s.handle(Verb::Update, "ns", Some("a"), Some(lease("a", "y")), NOW);
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (422, Some("Invalid"))
        );
    }

    #[test]
    fn invalid_names_and_durations_are_422() {
        let mut s = LeaseStore::new();
        for bad in ["Upper", "-lead", "trail-", "under_score", ""] {
            let r = s.handle(Verb::Create, "ns", None, Some(lease(bad, "x")), NOW);
            assert_eq!(r.status, 422, "{bad:?}");
        }
        let mut zero = lease("a", "x");
        zero["spec"]["leaseDurationSeconds"] = json!(0);
        assert_eq!(
            s.handle(Verb::Create, "ns", None, Some(zero), NOW).status,
            422
        );
    }

    #[test]
    fn put_to_a_missing_name_creates_it() {
        let mut s = LeaseStore::new();
        let mut body = lease("new", "x");
        body["metadata"]["resourceVersion"] = json!("0");
        let r = s.handle(Verb::Update, "ns", Some("new"), Some(body), NOW);
        assert_eq!(r.status, 201);
        assert!(s.get("ns", "new").is_some());
    }

    #[test]
    fn list_is_per_namespace() {
        let mut s = LeaseStore::new();
        s.handle(Verb::Create, "a", None, Some(lease("x", "1")), NOW);
        s.handle(Verb::Create, "b", None, Some(lease("y", "1")), NOW);
        let r = s.handle(Verb::List, "a", None, None, NOW);
        assert_eq!(r.body["kind"], "LeaseList");
        assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns1123_subdomain("shard-coordinator.counter"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }
}
