//! Serving: the HTTPS listener (the only public one), the plain-HTTP listener that only
//! redirects to HTTPS, and graceful shutdown. Tests call [`run`] with listeners bound on
//! port 0.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::RustlsAcceptor;

use crate::app::{AppState, router};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Listeners {
    pub main: TcpListener,
    pub redirect: Option<TcpListener>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("main", &self.main.local_addr().ok())
            .finish()
    }
}

pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Prepares TLS material (re-issuing the server certificate when needed).
pub fn prepare_tls(state: &AppState) -> Result<(), ServeError> {
    if state.config.insecure_http || !state.config.tls.acme.domain.is_empty() {
        return Ok(());
    }
    let names = tls::server_names(&state.config.tls.server_names);
    let constrained = tls::ca_dns_constraints(&state.config.data_dir);
    for name in names
        .iter()
        .filter(|n| constrained.as_ref().is_some_and(|c| !tls::ca_permits(n, c)))
    {
        tracing::warn!(
            name = %name,
            "the local CA is limited to local names and addresses and to the names given at first boot; browsers will refuse `{name}`: use ACME for a public name"
        );
    }
    if tls::ensure_server_cert(&state.config.data_dir, &names)? {
        tracing::info!(names = ?names, "issued a new server certificate from the local CA");
    }
    Ok(())
}

/// Serves until `shutdown` completes, then drains connections for up to 10 s.
pub async fn run(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let main_addr = listeners.main.local_addr()?;
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let mut redirect_task = None;
    if let Some(redirect) = listeners.redirect {
        let https_port = main_addr.port();
        let r =
            Router::new().fallback(move |req: Request| async move { to_https(req, https_port) });
        let redirect_handle = handle.clone();
        redirect_task = Some(tokio::spawn(async move {
            axum_server::from_tcp(redirect)?
                .handle(redirect_handle)
                .serve(r.into_make_service())
                .await
        }));
    }
    let stopper = handle.clone();
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing open requests");
        let _ = stopping.send(true);
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let tls_config = if state.config.insecure_http {
        None
    } else if state.config.tls.acme.domain.is_empty() {
        Some(tls::server_config(&state.config.data_dir)?)
    } else {
        let acme = &state.config.tls.acme;
        let resolver = Arc::new(crate::acme::CertResolver::new(
            crate::acme::initial_certificate(&state.config.data_dir, &acme.domain)?,
        ));
        tokio::spawn(crate::acme::run(
            acme.clone(),
            state.config.data_dir.clone(),
            resolver.clone(),
            stop_signal,
        ));
        Some(crate::acme::server_config(resolver)?)
    };
    state.set_ready(true);
    let result = match tls_config {
        None => {
            tracing::warn!(
                "serving PLAIN HTTP (--insecure-http): passwords and sessions cross the network in clear; never use this on a school network"
            );
            axum_server::from_tcp(listeners.main)?
                .acceptor(NoDelayAcceptor::new())
                .handle(handle)
                .serve(app)
                .await
        }
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            // TCP_NODELAY: TLS handshakes and small responses leave at once instead of
            // waiting on the peer's delayed ACK (~40 ms).
            let acceptor = RustlsAcceptor::new(config)
                .handshake_timeout(Duration::from_secs(10))
                .acceptor(NoDelayAcceptor::new());
            axum_server::from_tcp(listeners.main)?
                .acceptor(acceptor)
                .handle(handle)
                .serve(app)
                .await
        }
    };
    state.set_ready(false);
    if let Some(t) = redirect_task {
        let _ = t.await;
    }
    Ok(result?)
}

/// Serves `router` over TLS on `listener` until `shutdown` completes (the hub's server).
pub async fn serve_router(
    router: Router,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing open requests");
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let acceptor = RustlsAcceptor::new(config)
        .handshake_timeout(Duration::from_secs(10))
        .acceptor(NoDelayAcceptor::new());
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(router.into_make_service())
        .await?;
    Ok(())
}

fn to_https(req: Request, https_port: u16) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map(|(name, _)| name)
                .unwrap_or(h)
                .to_string()
        });
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "use https://").into_response();
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    Redirect::permanent(&format!("https://{host}{port}{path}")).into_response()
}
