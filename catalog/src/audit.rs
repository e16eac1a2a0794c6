//! `GET /v1/audit-log`: who changed what, newest first; operators see all, admins their partner's.

use anika_shared::{
    Problem,
    audit::{self, Action, Entry, Filter, TargetId, TargetType, Visibility},
    auth::Principal,
    domain::Timestamp,
    extract::Query,
    page::{Limit, Page, decode_time_cursor},
};
use axum::extract::State as AxumState;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{State, error::Result};

pub(crate) fn routes() -> OpenApiRouter<State> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

/// Filters of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Only this action, e.g. `grant.created`.
    #[param(value_type = Option<Action>)]
    action: Option<Action>,
    /// Only targets of this type.
    #[param(value_type = Option<TargetType>)]
    target_type: Option<TargetType>,
    /// Only this target (a UUID, or a signing key's `kid`; a grant's id is its topic's).
    #[param(value_type = Option<String>)]
    target_id: Option<TargetId>,
    /// Only entries at or after this time (RFC 3339, years 1–9999).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<Timestamp>,
    /// Only entries before this time.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<Timestamp>,
    /// Page size (1–1000, default 50).
    #[param(value_type = Option<u32>)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The filter a query asks for; an empty window is a 400.
fn filter_of(query: &AuditQuery) -> Result<Filter, Problem> {
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        return Err(Problem::bad_request(format!(
            "`since` ({since}) must be before `until` ({until})"
        )));
    }
    Ok(Filter {
        action: query.action,
        target_type: query.target_type,
        target_id: query.target_id.clone(),
        since: query.since.map(Timestamp::get),
        until: query.until.map(Timestamp::get),
    })
}

/// Read the audit log, newest first.
///
/// Operators see every entry; a partner's admins see the entries about their
/// partner's resources (the partner itself, its keys, topics, grants and
/// subscriptions); publishers get 403.
#[utoipa::path(
    get,
    path = "/v1/audit-log",
    tag = "audit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of entries, newest first", body = Page<Entry>),
        (status = 400, description = "A malformed filter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Publishers may not read the audit log", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_audit_log(
    AxumState(state): AxumState<State>,
    principal: Principal,
    Query(query): Query<AuditQuery>,
) -> Result<axum::Json<Page<Entry>>> {
    let visibility = Visibility::decide(principal.role(), principal.partner())?;
    let filter = filter_of(&query)?;
    let limit = query.limit.unwrap_or_default();
    let before = query
        .cursor
        .as_deref()
        .map(decode_time_cursor)
        .transpose()?;
    let entries = audit::list(&state.ctx.pool, visibility, &filter, before, limit.fetch()).await?;
    Ok(axum::Json(Page::from_rows(entries, limit, |e| {
        (e.at, e.id)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since: &str, until: &str) -> AuditQuery {
        AuditQuery {
            action: None,
            target_type: None,
            target_id: None,
            since: Some(Timestamp::parse(since).unwrap()),
            until: Some(Timestamp::parse(until).unwrap()),
            limit: None,
            cursor: None,
        }
    }

    #[test]
    fn an_empty_window_is_refused() {
        assert!(filter_of(&query("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")).is_ok());
        let err = filter_of(&query("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z")).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(filter_of(&query("2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z")).is_err());
    }
}
