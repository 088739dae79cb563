//! The smallest app: one page, no capability. The benchmark's trivial app
//! (`benches/apps.rs`), and a starting point.

use ceredis_app::{App, Request, Response};

struct Hello;

impl App for Hello {
    fn handle(_req: Request) -> Response {
        Response::text(200, "ok")
    }
}

ceredis_app::export_app!(Hello);
