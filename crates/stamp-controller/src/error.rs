//! API errors: the one place where failures become HTTP statuses and `{"error": ...}` bodies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stamp_api_types::{ErrorBody, ErrorDetail, codes};
use stamp_artifact::ArtifactError;
use stamp_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: codes::INVALID,
            message: message.to_string(),
        }
    }

    pub fn limit(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: codes::LIMIT,
            message: message.to_string(),
        }
    }

    pub fn conflict(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: codes::CONFLICT,
            message: message.to_string(),
        }
    }

    pub fn unauthorized(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: codes::UNAUTHORIZED,
            message: message.to_string(),
        }
    }

    pub fn not_found(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: codes::NOT_FOUND,
            message: message.to_string(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!("failed to serve an API request: {e:#}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: codes::INTERNAL,
            message: "internal error; see the stamp process's log".to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e),
            StoreError::Conflict { kind, ref name } => ApiError::conflict(match kind {
                "plan with apps" => format!(
                    "plan {name} still has apps; delete them or move them to another plan first"
                ),
                _ => format!("{kind} {name} already exists; choose another name"),
            }),
            e => ApiError::internal(e),
        }
    }
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> ApiError {
        match e {
            ArtifactError::TooLarge { .. } => ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: codes::TOO_LARGE,
                message: e.to_string(),
            },
            ArtifactError::Io(_) => ApiError::internal(e),
            e => ApiError::invalid(e),
        }
    }
}

impl From<stamp_model::NameError> for ApiError {
    fn from(e: stamp_model::NameError) -> ApiError {
        ApiError::invalid(e)
    }
}

impl From<stamp_model::SettingError> for ApiError {
    fn from(e: stamp_model::SettingError) -> ApiError {
        ApiError::invalid(e)
    }
}
