//! HTTP basic authentication for the findings page, from a file only bedside can read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("web.password_file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "web.password_file {path} can be read by others (mode {mode:o}): chmod 600 it, owned by bedside's user"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("web.password_file {path}: its first line must be user:password")]
    Format { path: PathBuf },
}

/// The one user and password the page accepts.
#[derive(Clone)]
pub struct Credentials {
    /// sha256 of `user:password`, compared in constant time.
    digest: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

impl Credentials {
    /// Reads `user:password` from the first line of `path`, which must not be readable by
    /// group or others.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| AuthError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AuthError::Readable {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(err)?;
        let line = text.lines().next().unwrap_or_default();
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Self::new(line))
            }
            _ => Err(AuthError::Format {
                path: path.to_owned(),
            }),
        }
    }

    fn new(user_password: &str) -> Self {
        Credentials {
            digest: Sha256::digest(user_password.as_bytes()).into(),
        }
    }

    /// Whether an `Authorization` header carries these credentials.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
        else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(&given).into();
        d.iter()
            .zip(&self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Middleware: every request carries the credentials, when the page has some.
pub(super) async fn require(
    State(app): State<Arc<super::App>>,
    request: Request,
    next: Next,
) -> Response {
    match &app.credentials {
        Some(c) if !c.accepts(request.headers().get(header::AUTHORIZATION)) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"bedside\", charset=\"UTF-8\"",
            )],
            "authentication required\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_checked_and_a_readable_file_refused() {
        let c = Credentials::new("nurse:s3cret");
        let header = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert!(c.accepts(Some(&header("nurse:s3cret"))));
        assert!(!c.accepts(Some(&header("nurse:s3cret2"))));
        assert!(!c.accepts(Some(&HeaderValue::from_static("Bearer x"))));
        assert!(!c.accepts(None));

        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.password");
        std::fs::write(&path, "nurse:s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Credentials::load(&path),
            Err(AuthError::Readable { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            Credentials::load(&path)
                .unwrap()
                .accepts(Some(&header("nurse:s3cret")))
        );
        std::fs::write(&path, "no colon\n").unwrap();
        assert!(matches!(
            Credentials::load(&path),
            Err(AuthError::Format { .. })
        ));
    }
}
