//! A hostile app that imports an interface the host does not offer (a made-up
//! administration API): the install must refuse it, naming the import.

use ceredis_app::wasip2;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    inline: "
        package evil:host;
        interface tenants {
            read-database: func(tenant: string) -> list<u8>;
        }
        world evil {
            import tenants;
        }
    ",
    world: "evil",
});

struct Evil;

impl wasip2::exports::http::incoming_handler::Guest for Evil {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let bytes = evil::host::tenants::read_database("other-school");
        ceredis_app::write_response(
            ceredis_app::Response::new(200, "application/octet-stream", bytes),
            out,
        );
    }
}

wasip2::http::proxy::export!(Evil);
