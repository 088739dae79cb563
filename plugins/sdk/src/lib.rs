//! Write CEREDIS Edge tenant apps in Rust.
//!
//! An app is a WebAssembly component (`cargo build --target wasm32-wasip2`) that serves
//! HTTP as a `wasi:http/incoming-handler` and calls the host interfaces of
//! `plugins/wit/ceredis-app.wit`, re-exported here as [`identity`], [`kv`], [`xapi`],
//! [`competencies`] and [`log`]. This crate adds a small request/response layer:
//!
//! ```ignore
//! struct Hello;
//! impl ceredis_app::App for Hello {
//!     fn handle(req: ceredis_app::Request) -> ceredis_app::Response {
//!         ceredis_app::Response::html(format!("<p>Bonjour, {}</p>", ceredis_app::identity::pseudonym()))
//!     }
//! }
//! ceredis_app::export_app!(Hello);
//! ```
//!
//! The host serves the app at `/t/{school}/apps/{app}/…`; [`Request::path`] is the part
//! after the app's root (always starting with `/`), and [`Request::base`] the root itself,
//! for links. Forms that POST must carry [`Request::csrf_field`].

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "ceredis:app/app",
    });
}

pub use bindings::ceredis::app::{competencies, identity, kv, log, types, xapi};
pub use types::{Error, ErrorCode};
#[doc(hidden)]
pub use wasip2;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// The largest request body an app reads; the host refuses larger ones before the app runs.
pub const MAX_BODY: usize = 1 << 20;

/// An HTTP request, read whole.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path under the app's root, starting with `/`.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The app's root URL path (`/t/{school}/apps/{app}`), for links.
    pub fn base(&self) -> &str {
        self.header("x-ceredis-base").unwrap_or("")
    }

    /// A hidden form field with the session's anti-forgery token: every form that POSTs
    /// back to the app must include it.
    pub fn csrf_field(&self) -> String {
        format!(
            r#"<input type="hidden" name="_csrf" value="{}">"#,
            escape(self.header("x-ceredis-csrf").unwrap_or(""))
        )
    }

    /// The query string's pairs, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_pairs(self.query.as_bytes())
    }

    /// The body's pairs, for `application/x-www-form-urlencoded` forms.
    pub fn form(&self) -> Vec<(String, String)> {
        form_pairs(&self.body)
    }

    /// The first value of a form field.
    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A page. The host wraps nothing around it: send a whole HTML document or a fragment.
    pub fn html(body: impl Into<String>) -> Response {
        Response::new(200, "text/html; charset=utf-8", body.into())
    }

    pub fn json(body: impl Into<String>) -> Response {
        Response::new(200, "application/json", body.into())
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// `303 See Other` to a path under the app's root.
    pub fn redirect(req: &Request, path: &str) -> Response {
        Response {
            status: 303,
            headers: vec![("location".into(), format!("{}{}", req.base(), path))],
            body: Vec::new(),
        }
    }

    pub fn not_found() -> Response {
        Response::text(404, "no such page in this app")
    }

    /// A host call's error, as the page the user sees.
    pub fn from_error(e: &Error) -> Response {
        let status = match e.code {
            ErrorCode::NotGranted => 403,
            ErrorCode::Invalid => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::QuotaExceeded => 507,
            ErrorCode::Unavailable => 503,
        };
        Response::text(status, e.message.clone())
    }
}

/// What an app implements.
pub trait App {
    fn handle(request: Request) -> Response;
}

/// Exports `$app` (an [`App`]) as the component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        struct __CeredisHandler;
        impl $crate::wasip2::exports::http::incoming_handler::Guest for __CeredisHandler {
            fn handle(
                request: $crate::wasip2::http::types::IncomingRequest,
                out: $crate::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::serve::<$app>(request, out)
            }
        }
        $crate::wasip2::http::proxy::export!(__CeredisHandler);
    };
}

/// Reads the request, runs the app, writes its response. Used by [`export_app!`].
#[doc(hidden)]
pub fn serve<A: App>(request: IncomingRequest, out: ResponseOutparam) {
    let response = match read_request(&request) {
        Ok(req) => A::handle(req),
        Err(message) => Response::text(400, message),
    };
    write_response(response, out);
}

/// Reads a raw request whole, for apps that implement the handler themselves.
pub fn read_request(request: &IncomingRequest) -> Result<Request, String> {
    let method = match request.method() {
        Method::Get => "GET".to_string(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Patch => "PATCH".into(),
        Method::Options => "OPTIONS".into(),
        Method::Connect => "CONNECT".into(),
        Method::Trace => "TRACE".into(),
        Method::Other(m) => m,
    };
    let full = request.path_with_query().unwrap_or_else(|| "/".into());
    let (path, query) = match full.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (full, String::new()),
    };
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume() {
        let stream = incoming
            .stream()
            .map_err(|_| "the request body could not be read".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_BODY {
                        return Err("the request body is too large".into());
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => {
                    return Err("the request body could not be read".into());
                }
            }
        }
        drop(stream);
        let _ = IncomingBody::finish(incoming);
    }
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Sends a whole response, for apps that implement the handler themselves.
pub fn write_response(response: Response, out: ResponseOutparam) {
    let fields: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let Ok(headers) = Fields::from_list(&fields) else {
        let fallback = OutgoingResponse::new(Fields::new());
        let _ = fallback.set_status_code(500);
        ResponseOutparam::set(out, Ok(fallback));
        return;
    };
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(stream) = body.write() {
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` pairs.
pub fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// A page in the appliance's look: the host serves `/assets/app.css` to apps too.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\
         <body><main>{body}</main></body></html>",
        t = escape(title)
    )
}
