//! HTTP plumbing common to every role: service endpoints, problem fallbacks, middleware, serving.

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnFailure, TraceLayer},
};
use utoipa::{
    Modify,
    openapi::{
        OpenApi,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{amqp::Broker, problem::Problem};

/// What `/readyz` checks.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// PostgreSQL.
    pub pool: PgPool,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    latency_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ReadyReport {
    status: &'static str,
    checks: ReadyChecks,
}

#[derive(Serialize)]
struct ReadyChecks {
    postgres: Check,
    rabbitmq: Check,
    /// Each node of `ANIKA_AMQP_URL`: whether it accepts connections, and which one this
    /// process uses. A node down does not make the process unready while another serves.
    rabbitmq_nodes: Vec<NodeCheck>,
}

#[derive(Serialize)]
struct NodeCheck {
    node: String,
    ok: bool,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn timed<F, E>(check: F) -> Check
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(3), check).await;
    let latency_ms = started.elapsed().as_millis();
    match result {
        Ok(Ok(())) => Check {
            ok: true,
            latency_ms,
            error: None,
        },
        Ok(Err(e)) => Check {
            ok: false,
            latency_ms,
            error: Some(e.to_string()),
        },
        Err(_) => Check {
            ok: false,
            latency_ms,
            error: Some("timed out after 3 s".into()),
        },
    }
}

/// Whether the process is alive (no dependency is checked).
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, description = "Alive")))]
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether PostgreSQL and RabbitMQ answer, each reported with its latency.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses((status = 200, description = "Ready"), (status = 503, description = "A dependency is unreachable"))
)]
async fn readyz(State(readiness): State<Readiness>) -> Response {
    let pool = readiness.pool.clone();
    let (postgres, rabbitmq, nodes) = tokio::join!(
        timed(async move { crate::store::schema::ping(&pool).await }),
        timed(readiness.broker.ping()),
        readiness.broker.probe_nodes(),
    );
    let connected = readiness.broker.connected_node().await;
    let rabbitmq_nodes = nodes
        .into_iter()
        .map(|(node, error)| NodeCheck {
            connected: connected.as_deref() == Some(node.as_str()),
            ok: error.is_none(),
            node,
            error,
        })
        .collect();
    let ready = postgres.ok && rabbitmq.ok;
    let report = ReadyReport {
        status: if ready { "ready" } else { "unavailable" },
        checks: ReadyChecks {
            postgres,
            rabbitmq,
            rabbitmq_nodes,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
async fn metrics(State(metrics): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        metrics.render(),
    )
}

/// `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs`; `api` gets the first three added.
pub fn service_router(
    readiness: Readiness,
    mut api: OpenApi,
    metrics_handle: PrometheusHandle,
) -> Router {
    #[derive(utoipa::OpenApi)]
    #[openapi(paths(healthz, readyz, metrics))]
    struct Service;
    api.merge(<Service as utoipa::OpenApi>::openapi());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(readiness))
        .route("/metrics", get(metrics).with_state(metrics_handle))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
}

/// The OpenAPI document's frame: title, version and the bearer scheme; routes are merged in.
pub fn openapi_base() -> OpenApi {
    #[derive(utoipa::OpenApi)]
    #[openapi(
        info(
            title = "anika",
            description = "Event broker for partner companies: publish events into topics, grant partners read access, deliver them to webhooks (signed, retried, dead-lettered).",
            version = "1",
        ),
        modifiers(&BearerAuth),
        components(schemas(crate::problem::Problem, crate::problem::FieldError)),
    )]
    struct Base;
    <Base as utoipa::OpenApi>::openapi()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::method_not_allowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ))
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(crate::meters::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::meters::HTTP_REQUEST_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Wraps the composed routes with what every role needs: problem fallbacks, metrics,
/// request ids, tracing, a panic guard that answers a problem document, and the resource
/// bounds of [`crate::edge`] on every `/v1` route (a deadline for request bodies, caps on
/// requests and body bytes in flight, and the admission limit).
///
/// The layers are one [`ServiceBuilder`] stack, applied once: each `Router::layer` boxes the
/// routes again, and a boxed route is cloned (an allocation) per request and per box.
/// The admission limit wraps the router itself, so that a refusal is decided before routing.
pub fn finish_with(router: Router, config: &crate::config::Config) -> App {
    let limits = crate::edge::EdgeLimits::new(config);
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            Problem::internal().into_response()
        }))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn_with_state(
            limits.clone(),
            crate::edge::enforce,
        ));
    let routes = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(stack);
    // Outside everything else, routing included: under twice its capacity the process refuses
    // about as many requests as it accepts, so what a refusal costs is taken from the accepted.
    tower::Layer::layer(&crate::edge::ShedLayer::new(limits), routes)
}

/// The service a role serves: its routes behind the admission limit ([`finish_with`]).
pub type App = crate::edge::Shed<Router>;

/// Serves `app` on an already-bound listener until `shutdown` fires, then drains open requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Every connection gets a clone of the one service (what `Router` itself does).
    axum::serve(listener, tower::make::Shared::new(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
