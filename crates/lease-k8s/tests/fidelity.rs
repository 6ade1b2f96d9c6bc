//! The emulator answers like the real API server: the same request
//! sequences, sent over HTTP to both, give the same status codes, Status
//! reasons and resourceVersion behaviour. Without `KUBEBUILDER_ASSETS` the
//! emulator is checked against the answers recorded from kube-apiserver
//! v1.28.7 (the `expected` column).

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{Value, json};

const BASE: &str = "/apis/coordination.k8s.io/v1/namespaces";

async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = client.send(request.map(Into::into)).await.unwrap();
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn lease(name: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name },
        "spec": { "holderIdentity": "a", "leaseDurationSeconds": 10, "leaseTransitions": 0 }
    })
}

fn rv(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap()
        .parse()
        .unwrap()
}

/// One observation: a label and what the server answered.
type Row = (&'static str, String);

async fn observe(client: &kube::Client, tag: &str) -> Vec<Row> {
    let ns = format!("{BASE}/default/leases");
    let one = |name: &str| format!("{ns}/{tag}-{name}");
    let mut rows: Vec<Row> = Vec::new();

    // PUT of the old object after a DELETE.
    let (_, created) = call(client, "POST", &ns, Some(&lease(&format!("{tag}-deleted")))).await;
    assert_eq!(call(client, "DELETE", &one("deleted"), None).await.0, 200);
    let (code, body) = call(client, "PUT", &one("deleted"), Some(&created)).await;
    rows.push(("put after delete", format!("{code} {}", body["reason"])));

    // PUT with a wrong uid.
    let (_, mut created) = call(client, "POST", &ns, Some(&lease(&format!("{tag}-uid")))).await;
    created["metadata"]["uid"] = json!("00000000-0000-0000-0000-00000000beef");
    let (code, body) = call(client, "PUT", &one("uid"), Some(&created)).await;
    rows.push(("put with a wrong uid", format!("{code} {}", body["reason"])));

    // PUT to a missing name, without and with a resourceVersion.
    let (code, _) = call(
        client,
        "PUT",
        &one("fresh"),
        Some(&lease(&format!("{tag}-fresh"))),
    )
    .await;
    rows.push(("put to a missing name", code.to_string()));
    let mut with_rv = lease(&format!("{tag}-fresh-rv"));
    with_rv["metadata"]["resourceVersion"] = json!("1");
    let (code, body) = call(client, "PUT", &one("fresh-rv"), Some(&with_rv)).await;
    rows.push((
        "put to a missing name with a resourceVersion",
        format!("{code} {}", body["reason"]),
    ));

    // PUT to an existing name without a resourceVersion.
    let (code, body) = call(
        client,
        "PUT",
        &one("fresh"),
        Some(&lease(&format!("{tag}-fresh"))),
    )
    .await;
    rows.push((
        "put without a resourceVersion",
        format!("{code} {}", body["reason"]),
    ));

    // POST into a namespace that does not exist.
    let (code, body) = call(
        client,
        "POST",
        &format!("{BASE}/no-such-namespace/leases"),
        Some(&lease(&format!("{tag}-nons"))),
    )
    .await;
    rows.push((
        "post into a missing namespace",
        format!("{code} {}", body["reason"]),
    ));

    // POST carrying a resourceVersion.
    let mut with_rv = lease(&format!("{tag}-post-rv"));
    with_rv["metadata"]["resourceVersion"] = json!("5");
    let (code, body) = call(client, "POST", &ns, Some(&with_rv)).await;
    rows.push((
        "post with a resourceVersion",
        format!("{code} {}", body["reason"]),
    ));

    // Invalid fields: a negative leaseTransitions, nine fractional digits.
    let mut negative = lease(&format!("{tag}-negative"));
    negative["spec"]["leaseTransitions"] = json!(-1);
    let (code, body) = call(client, "POST", &ns, Some(&negative)).await;
    rows.push(("leaseTransitions -1", format!("{code} {}", body["reason"])));
    rows.push(("422 details.kind", body["details"]["kind"].to_string()));
    let cause = body["details"]["causes"][0]["field"].to_string();
    rows.push(("422 first cause field", cause));
    let mut nanos = lease(&format!("{tag}-nanos"));
    nanos["spec"]["renewTime"] = json!("2026-11-27T10:00:00.123456789Z");
    let (code, body) = call(client, "POST", &ns, Some(&nanos)).await;
    rows.push((
        "renewTime with 9 fractional digits",
        format!("{code} {}", body["reason"]),
    ));

    // resourceVersion: a no-op PUT keeps it; a re-created object's is higher.
    let (_, first) = call(client, "POST", &ns, Some(&lease(&format!("{tag}-rv")))).await;
    let (_, same) = call(client, "PUT", &one("rv"), Some(&first)).await;
    rows.push((
        "no-op put keeps the resourceVersion",
        (rv(&same) == rv(&first)).to_string(),
    ));
    call(client, "DELETE", &one("rv"), None).await;
    let (_, again) = call(client, "POST", &ns, Some(&lease(&format!("{tag}-rv")))).await;
    rows.push((
        "re-created object has a higher resourceVersion",
        (rv(&again) > rv(&first)).to_string(),
    ));
    let (code, body) = call(client, "PUT", &one("rv"), Some(&first)).await;
    rows.push((
        "put of the first incarnation",
        format!("{code} {}", body["reason"]),
    ));
    rows
}

/// What kube-apiserver v1.28.7 answered, row by row.
const EXPECTED: &[(&str, &str)] = &[
    ("put after delete", "409 \"Conflict\""),
    ("put with a wrong uid", "409 \"Conflict\""),
    ("put to a missing name", "201"),
    ("put to a missing name with a resourceVersion", "201 null"),
    ("put without a resourceVersion", "422 \"Invalid\""),
    ("post into a missing namespace", "404 \"NotFound\""),
    ("post with a resourceVersion", "500 null"),
    ("leaseTransitions -1", "422 \"Invalid\""),
    ("422 details.kind", "\"Lease\""),
    ("422 first cause field", "\"spec.leaseTransitions\""),
    ("renewTime with 9 fractional digits", "400 \"BadRequest\""),
    ("no-op put keeps the resourceVersion", "true"),
    ("re-created object has a higher resourceVersion", "true"),
    ("put of the first incarnation", "409 \"Conflict\""),
];

fn compare(server: &str, rows: &[Row]) {
    let expected: Vec<(&str, String)> = EXPECTED
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    let differ: Vec<String> = rows
        .iter()
        .zip(&expected)
        .filter(|(got, want)| got != want)
        .map(|(got, want)| {
            format!(
                "{}: {server} answered {}, kube-apiserver {}",
                got.0, got.1, want.1
            )
        })
        .collect();
    assert_eq!(rows.len(), expected.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_like_kube_apiserver() {
    let store = common::Store::emulator();
    let rows = observe(&store.client_for("fidelity"), "e").await;
    compare("the emulator", &rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_still_answers_as_recorded() {
    let Some(store) = common::Store::real().await else {
        return;
    };
    let rows = observe(&store.client_for("fidelity"), "r").await;
    compare("the real server", &rows);
}
