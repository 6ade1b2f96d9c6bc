//! The HTTP API: counters, `/status`, `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cluster::Transport;
use serde_json::json;
use sharding_core::durable::DurableError;
use sharding_core::{ShardingError, TypeName};

use crate::{CounterMsg, Node, TopMsg};

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/counters/{id}", get(read))
        .route("/counters/{id}/add/{amount}", post(add))
        .route("/counters/{id}/tell/{amount}", post(tell))
        .route("/top", get(top))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// Not saved, so not acknowledged: the caller may retry.
fn unsaved(e: &DurableError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

fn error(e: &ShardingError) -> Response {
    let code = match e {
        ShardingError::BufferFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        ShardingError::AskTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(json!({ "error": e.to_string() }))).into_response()
}

async fn read(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    match node.region.ask(CounterMsg::Get { id }).await {
        Ok(Ok(value)) => Json(json!({ "value": value })).into_response(),
        Ok(Err(e)) => unsaved(&e),
        Err(e) => error(&e),
    }
}

async fn add(State(node): State<Arc<Node>>, Path((id, amount)): Path<(String, i64)>) -> Response {
    match node
        .region
        .ask(CounterMsg::Add {
            id: id.clone(),
            amount,
        })
        .await
    {
        Ok(Err(e)) => unsaved(&e),
        Ok(Ok(value)) => {
            // The singleton learns it too; losing this is harmless (the
            // next add reports the counter again), so it is only logged.
            if let Err(e) = node.top.proxy().tell(TopMsg::Record { id, value }) {
                tracing::warn!(error = %e, "top-counters singleton not told");
            }
            Json(json!({ "value": value })).into_response()
        }
        Err(e) => error(&e),
    }
}

/// The ten largest counters, from the cluster singleton wherever it runs.
async fn top(State(node): State<Arc<Node>>) -> Response {
    match node.top.proxy().ask(TopMsg::Top { n: 10 }).await {
        Ok(top) => Json(json!({ "top": top })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn tell(State(node): State<Arc<Node>>, Path((id, amount)): Path<(String, i64)>) -> Response {
    match node.region.tell(CounterMsg::Add { id, amount }) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(&e),
    }
}

async fn status(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let view = &node.view;
    let coordinator = node
        .sharding
        .coordinator(&TypeName::from("counter"))
        .map(|c| c.status());
    let region = node.region.stats();
    let transport = node.transport.stats();
    Json(json!({
        "node": node.config.node_id,
        "incarnation": node.incarnation,
        "members": view.members().iter().map(|m| m.0).collect::<Vec<_>>(),
        "leader": view.leader().map(|l| l.0),
        "singleton_running": node.top.is_running_here(),
        "coordinator": {
            "phase": coordinator.map(|c| format!("{:?}", c.phase)),
            "active": coordinator.is_some_and(|c| c.phase == sharding_coordinator::Phase::Active),
            "epoch": coordinator.and_then(|c| c.epoch).map(|e| e.0),
        },
        "lease": node.lease.as_ref().map(|l| json!({
            "name": l.settings().lease_name(),
            "owner": l.settings().owner_name(),
            "held": l.check_alive(),
            "fencing_token": l.fencing_token().map(|t| t.get()),
        })),
        "hosted_shards": node.region.hosted_shards().iter().map(|s| s.0).collect::<Vec<_>>(),
        "region": {
            "buffered": region.buffered,
            "delivered_local": region.delivered_local,
            "forwarded": region.forwarded,
            "dropped_buffer_full": region.dropped_buffer_full,
            "dropped_undeliverable": region.dropped_undeliverable,
            "refused_directives": region.refused_directives,
            "max_epoch": node.region.max_epoch().0,
        },
        "transport": {
            "sent": transport.sent,
            "delivered": transport.delivered,
            "dropped_queue_full": transport.dropped_queue_full,
            "lost_in_failed_writes": transport.lost_in_failed_writes,
            "dropped_inbox_full": transport.dropped_inbox_full,
            "bad_frames": transport.bad_frames,
            "refused_handshakes": transport.refused_handshakes,
            "tls": node.config.tls_ca.is_some(),
            "inbound_connections": node.transport.inbound_connections(),
        },
        "state_store": if node.config.database_url.is_some() { "postgres" } else { "memory" },
    }))
}

async fn metrics(State(node): State<Arc<Node>>) -> String {
    node.metrics.render()
}
