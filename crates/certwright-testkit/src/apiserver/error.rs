//! The error every operation of the test API server answers with, rendered as the
//! `Status` object the real API server sends (which kube turns into `kube::Error::Api`).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A failed API call: the HTTP code, the machine-readable `reason` and the message of
/// the `Status` body the server answers with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The HTTP status code, also the Status `code`.
    pub code: u16,
    /// The Status `reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`,
    /// `BadRequest`, `Expired`, `TooManyRequests`, `InternalError`, ...
    pub reason: String,
    /// The human-readable message.
    pub message: String,
    /// The Status `details` (name, group, kind), when the error is about one object.
    pub details: Option<Value>,
    /// For 429: the `Retry-After` header and `details.retryAfterSeconds`.
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    /// An error with this code, reason and message.
    pub fn new(code: u16, reason: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }

    /// The error a fault rule injects for `code`, with the reason upstream uses for it.
    pub(crate) fn injected(code: u16) -> ApiError {
        let reason = reason_for(code);
        let mut err = ApiError::new(
            code,
            reason,
            format!("injected fault: {reason} ({code}) from the certwright test API server"),
        );
        if code == 429 {
            err.retry_after_seconds = Some(1);
        }
        err
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    pub(crate) fn not_found_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// Attaches `details` naming the object.
    pub(crate) fn with_details(mut self, name: &str, group: &str, kind: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// The `Status` object for this error, as upstream renders it.
    pub fn status_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        // Upstream omits an empty reason (a webhook's denial may carry none).
        if !self.reason.is_empty() {
            status["reason"] = json!(self.reason);
        }
        let mut details = self.details.clone();
        if let Some(secs) = self.retry_after_seconds {
            let d = details.get_or_insert_with(|| json!({}));
            d["retryAfterSeconds"] = json!(secs);
        }
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status_json()).unwrap_or_default();
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = code;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// One problem with one field of an object, as upstream's `field.Error`: a 422 Invalid
/// lists them in its message and in `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The field's path, e.g. `spec` or `webhooks[0].clientConfig.url`.
    pub(crate) field: String,
    pub(crate) kind: FieldErrorKind,
    /// What is wrong, after the kind's own words.
    pub(crate) detail: String,
}

/// The kinds of [`FieldError`] this server reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FieldErrorKind {
    /// `Invalid value: <value>: <detail>`; the value as upstream prints it (a string
    /// in quotes, a number bare).
    Invalid(String),
    /// `Required value: <detail>`
    Required,
    /// `Forbidden: <detail>`
    Forbidden,
    /// `Unsupported value: <value>: supported values: <detail>`
    NotSupported(String),
    /// `Duplicate value: <value>`
    Duplicate(String),
}

impl FieldError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value.into()),
            detail: detail.into(),
        }
    }

    pub(crate) fn required(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    pub(crate) fn not_supported(
        field: impl Into<String>,
        value: impl Into<String>,
        supported: &[&str],
    ) -> FieldError {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(value.into()),
            detail: supported.join(", "),
        }
    }

    /// The `reason` of the Status cause.
    pub(crate) fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
        }
    }

    /// The error without its field: the Status cause's `message`.
    pub(crate) fn body(&self) -> String {
        let with_detail = |head: String| {
            if self.detail.is_empty() {
                head
            } else {
                format!("{head}: {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Invalid(value) => with_detail(format!("Invalid value: {value}")),
            FieldErrorKind::Required => with_detail("Required value".to_string()),
            FieldErrorKind::Forbidden => with_detail("Forbidden".to_string()),
            FieldErrorKind::NotSupported(value) => {
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    self.detail
                )
            }
            FieldErrorKind::Duplicate(value) => format!("Duplicate value: {value}"),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.body())
        } else {
            write!(f, "{}: {}", self.field, self.body())
        }
    }
}

/// The 422 upstream answers for an object with field errors: `<Kind>.<group> "<name>"
/// is invalid: <error>` (several errors in `[...]`, comma-separated), each error also a
/// `details.causes` entry.
pub(crate) fn invalid_object(
    group: &str,
    kind: &str,
    name: &str,
    errors: &[FieldError],
) -> ApiError {
    let group_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let what = match listed.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
        .collect();
    let mut err = ApiError::invalid(format!("{group_kind} \"{name}\" is invalid: {what}"));
    err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
    err
}

/// The Status reason upstream uses with an HTTP code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
