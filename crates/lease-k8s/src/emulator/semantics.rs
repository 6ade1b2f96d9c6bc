//! The API server's rules for `coordination.k8s.io/v1` Leases, on JSON.
//!
//! Kept apart from HTTP so the rules are tested directly. Every rule here
//! was checked against a real kube-apiserver (v1.28.7 on etcd 3.4; the
//! `fidelity` test compares the two whenever `KUBEBUILDER_ASSETS` is set):
//! resourceVersion and UID preconditions, create-on-update, namespaces that
//! must exist, validation (422 with `causes`), MicroTime's exactly six
//! fractional digits (400), and the Status bodies with their `reason`.

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
#[derive(Debug)]
pub struct LeaseStore {
    objects: BTreeMap<(String, String), Value>,
    namespaces: std::collections::BTreeSet<String>,
    resource_version: u64,
    uids: u64,
    /// Changes not yet taken by the server's watch fan-out.
    changes: Vec<Change>,
}

/// One change of one Lease, as a watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// The object after the change (before it, for a deletion, with the
    /// deletion's resourceVersion).
    pub object: Value,
    /// The change's resourceVersion.
    pub resource_version: u64,
}

impl Default for LeaseStore {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            // The namespaces a fresh cluster has.
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            resource_version: 0,
            uids: 0,
            changes: Vec::new(),
        }
    }
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
    /// GET the collection with `watch=true` (served by the HTTP layer).
    Watch,
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

/// 422 names the kind (not the resource) and lists the invalid fields.
fn invalid(name: &str, field: &str, why: &str) -> Reply {
    Reply {
        status: 422,
        body: json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("Lease.{GROUP} \"{name}\" is invalid: {field}: {why}"),
            "reason": "Invalid",
            "details": {
                "name": name,
                "group": GROUP,
                "kind": "Lease",
                "causes": [{ "reason": "FieldValueInvalid", "message": why, "field": field }],
            },
            "code": 422,
        }),
    }
}

/// A Status without details (how the server answers requests it cannot decode).
fn bare_status(code: u16, reason: Option<&str>, message: String) -> Reply {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    });
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    Reply { status: code, body }
}

fn conflict(name: &str, why: &str) -> Reply {
    status(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on leases.{GROUP} \"{name}\": {why}"),
        name,
    )
}

/// MicroTime on the wire: RFC 3339 with exactly six fractional digits.
fn is_micro_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let zone = &text.get(26..).unwrap_or("");
    b.len() >= 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && (*zone == "Z"
            || (zone.len() == 6
                && (zone.starts_with('+') || zone.starts_with('-'))
                && zone.as_bytes()[3] == b':'))
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

    /// The changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The current resourceVersion of the whole store.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    fn record_change(&mut self, kind: &'static str, namespace: &str, name: &str, object: &Value) {
        self.changes.push(Change {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            object: object.clone(),
            resource_version: self.resource_version,
        });
    }

    /// The stored object, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Decoding errors (400) come before validation errors (422), as on the server.
    fn validate(name: &str, object: &Value) -> Option<Reply> {
        for field in ["acquireTime", "renewTime"] {
            if let Some(Value::String(t)) = object.pointer(&format!("/spec/{field}")) {
                if !is_micro_time(t) {
                    return Some(bare_status(
                        400,
                        Some("BadRequest"),
                        format!(
                            "Lease in version \"v1\" cannot be handled as a Lease: parsing time {t:?}: want RFC 3339 with six fractional digits"
                        ),
                    ));
                }
            }
        }
        if !is_dns1123_subdomain(name) {
            return Some(invalid(
                name,
                "metadata.name",
                "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        match object.pointer("/spec/leaseDurationSeconds") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_i64().is_some_and(|n| n > 0) => {}
            Some(_) => {
                return Some(invalid(
                    name,
                    "spec.leaseDurationSeconds",
                    "Invalid value: must be greater than 0",
                ));
            }
        }
        match object.pointer("/spec/leaseTransitions") {
            None | Some(Value::Null) => None,
            Some(v) if v.as_i64().is_some_and(|n| n >= 0) => None,
            Some(v) => Some(invalid(
                name,
                "spec.leaseTransitions",
                &format!("Invalid value: {v}: must be greater than or equal to 0"),
            )),
        }
    }

    /// Makes `namespace` exist (the server refuses writes into a missing one).
    pub fn create_namespace(&mut self, namespace: &str) {
        self.namespaces.insert(namespace.to_owned());
    }

    fn missing_namespace(&self, namespace: &str) -> Option<Reply> {
        (!self.namespaces.contains(namespace)).then(|| Reply {
            status: 404,
            body: json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("namespaces \"{namespace}\" not found"),
                "reason": "NotFound",
                "details": { "name": namespace, "kind": "namespaces" },
                "code": 404,
            }),
        })
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
            (Verb::List | Verb::Watch, _) => Reply {
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
                if body
                    .pointer("/metadata/resourceVersion")
                    .is_some_and(|v| !v.is_null())
                {
                    return bare_status(
                        500,
                        None,
                        "resourceVersion should not be set on objects to be created".into(),
                    );
                }
                if let Some(reply) = Self::validate(&name, &body) {
                    return reply;
                }
                if let Some(reply) = self.missing_namespace(namespace) {
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
                self.record_change("ADDED", namespace, &name, &object);
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
                if let Some(reply) = self.missing_namespace(namespace) {
                    return reply;
                }
                let key = (namespace.to_owned(), name.to_owned());
                let uid = body.pointer("/metadata/uid").and_then(Value::as_str);
                let existing = self.objects.get(&key).cloned();
                let existing_uid = existing
                    .as_ref()
                    .and_then(|e| e.pointer("/metadata/uid"))
                    .and_then(Value::as_str);
                // A UID in the body is a precondition: an object deleted (and
                // perhaps re-created) since it was read is not this one.
                if let Some(uid) = uid {
                    if Some(uid) != existing_uid {
                        return conflict(
                            name,
                            &format!(
                                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                                existing_uid.unwrap_or("")
                            ),
                        );
                    }
                }
                let Some(existing) = existing else {
                    // Create-on-update: a PUT to a missing name creates it,
                    // whatever resourceVersion it carries.
                    let object = self.stamp(namespace, name, body, now, None);
                    self.record_change("ADDED", namespace, name, &object);
                    self.objects.insert(key, object.clone());
                    return Reply {
                        status: 201,
                        body: object,
                    };
                };
                let Some(precondition) = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                else {
                    return invalid(
                        name,
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    );
                };
                let current = existing
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if precondition != current {
                    return conflict(
                        name,
                        "the object has been modified; please apply your changes to the latest version and try again",
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
                self.record_change("MODIFIED", namespace, name, &object);
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
                Some(mut gone) => {
                    // A deletion is a revision of its own.
                    self.resource_version += 1;
                    gone["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
                    self.record_change("DELETED", namespace, name, &gone);
                    Reply {
                        status: 200,
                        body: json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": { "name": name, "group": GROUP, "kind": "leases" } }),
                    }
                }
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
        let r = s.handle(Verb::Create, "default", None, Some(lease("a", "x")), NOW);
        assert_eq!(r.status, 201);
        assert_eq!(r.body["kind"], "Lease");
        assert_eq!(rv(&r.body), "1");
        let again = s.handle(Verb::Create, "default", None, Some(lease("a", "y")), NOW);
        assert_eq!(again.status, 409);
        assert_eq!(again.body["reason"], "AlreadyExists");
        assert_eq!(again.body["kind"], "Status");
        assert_eq!(again.body["details"]["name"], "a");
    }

    #[test]
    fn get_missing_is_404_not_found() {
        let mut s = LeaseStore::new();
        let r = s.handle(Verb::Get, "default", Some("nope"), None, NOW);
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
            .handle(Verb::Create, "default", None, Some(lease("a", "x")), NOW)
            .body;
        let mut stale = created.clone();
        stale["spec"]["holderIdentity"] = json!("y");
        let ok = s.handle(Verb::Update, "default", Some("a"), Some(stale.clone()), NOW);
        assert_eq!(ok.status, 200);
        assert_eq!(rv(&ok.body), "2");
        // The same precondition again is stale now.
        stale["spec"]["holderIdentity"] = json!("z");
        let conflict = s.handle(Verb::Update, "default", Some("a"), Some(stale), NOW);
        assert_eq!(conflict.status, 409);
        assert_eq!(conflict.body["reason"], "Conflict");
        assert_eq!(
            s.get("default", "a").unwrap()["spec"]["holderIdentity"],
            "y"
        );
    }

    #[test]
    fn an_identical_write_keeps_the_resource_version() {
        let mut s = LeaseStore::new();
        let created = s
            .handle(Verb::Create, "default", None, Some(lease("a", "x")), NOW)
            .body;
        let same = s.handle(
            Verb::Update,
            "default",
            Some("a"),
            Some(created.clone()),
            NOW,
        );
        assert_eq!(same.status, 200);
        assert_eq!(rv(&same.body), rv(&created));
    }

    #[test]
    fn update_without_resource_version_is_422() {
        let mut s = LeaseStore::new();
        s.handle(Verb::Create, "default", None, Some(lease("a", "x")), NOW);
        let r = s.handle(
            Verb::Update,
            "default",
            Some("a"),
            Some(lease("a", "y")),
            NOW,
        );
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (422, Some("Invalid"))
        );
    }

    #[test]
    fn invalid_names_and_durations_are_422() {
        let mut s = LeaseStore::new();
        for bad in ["Upper", "-lead", "trail-", "under_score", ""] {
            let r = s.handle(Verb::Create, "default", None, Some(lease(bad, "x")), NOW);
            assert_eq!(r.status, 422, "{bad:?}");
        }
        let mut zero = lease("a", "x");
        zero["spec"]["leaseDurationSeconds"] = json!(0);
        assert_eq!(
            s.handle(Verb::Create, "default", None, Some(zero), NOW)
                .status,
            422
        );
    }

    #[test]
    fn put_to_a_missing_name_creates_it() {
        let mut s = LeaseStore::new();
        let mut body = lease("new", "x");
        assert_eq!(
            s.handle(
                Verb::Update,
                "default",
                Some("new"),
                Some(body.clone()),
                NOW
            )
            .status,
            201
        );
        body["metadata"]["name"] = json!("new-rv");
        body["metadata"]["resourceVersion"] = json!("7");
        let r = s.handle(Verb::Update, "default", Some("new-rv"), Some(body), NOW);
        assert_eq!(r.status, 201);
        assert!(s.get("default", "new-rv").is_some());
    }

    #[test]
    fn put_of_a_deleted_object_is_a_uid_conflict() {
        let mut s = LeaseStore::new();
        let created = s
            .handle(Verb::Create, "default", None, Some(lease("a", "x")), NOW)
            .body;
        assert_eq!(
            s.handle(Verb::Delete, "default", Some("a"), None, NOW)
                .status,
            200
        );
        let r = s.handle(Verb::Update, "default", Some("a"), Some(created), NOW);
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (409, Some("Conflict"))
        );
        assert!(
            s.get("default", "a").is_none(),
            "no create-on-update with a UID"
        );
    }

    #[test]
    fn list_is_per_namespace() {
        let mut s = LeaseStore::new();
        s.handle(Verb::Create, "default", None, Some(lease("x", "1")), NOW);
        s.handle(
            Verb::Create,
            "kube-system",
            None,
            Some(lease("y", "1")),
            NOW,
        );
        let r = s.handle(Verb::List, "default", None, None, NOW);
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
