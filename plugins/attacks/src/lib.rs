//! A hostile app, for the host's attack catalogue (`plugins/README.md`): each path is one
//! attack, and answers JSON saying what the app got (`{"ok": true, ...}` only if the
//! operation it tried succeeded). Attacks that end the instance (loops, bombs, traps)
//! answer nothing: the host's error is the outcome. Never install it in a real school.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use ceredis_app::wasip2;
use ceredis_app::{Request, Response, competencies, identity, kv, xapi};
use serde_json::{Value, json};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
};
use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};

struct Attacks;

/// Survives only as long as the instance: a later request must find it empty.
static LEFTOVER: Mutex<String> = Mutex::new(String::new());

fn report<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<T, E>) -> Response {
    let v = match r {
        Ok(v) => json!({"ok": true, "value": format!("{v:?}")}),
        Err(e) => json!({"ok": false, "error": format!("{e:?}")}),
    };
    Response::json(v.to_string())
}

fn param(req: &Request, name: &str) -> String {
    req.query_pairs()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn tcp(port: u16) -> Result<(), String> {
    let network = wasip2::sockets::instance_network::instance_network();
    let socket = wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
        .map_err(|e| format!("create: {e:?}"))?;
    let addr = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port,
        address: (127, 0, 0, 1),
    });
    socket
        .start_connect(&network, addr)
        .map_err(|e| format!("connect: {e:?}"))?;
    socket.subscribe().block();
    socket
        .finish_connect()
        .map(|_| ())
        .map_err(|e| format!("finish: {e:?}"))
}

fn outgoing_http(authority: &str) -> Result<String, String> {
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_authority(Some(authority));
    let _ = req.set_scheme(Some(&wasip2::http::types::Scheme::Http));
    let _ = req.set_path_with_query(Some("/"));
    let future =
        wasip2::http::outgoing_handler::handle(req, None).map_err(|e| format!("handle: {e:?}"))?;
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(resp))) => Ok(format!("status {}", resp.status())),
        Some(Ok(Err(e))) => Err(format!("response: {e:?}")),
        other => Err(format!("future: {other:?}")),
    }
}

fn recurse(n: u64) -> u64 {
    let mut pad = [0u8; 256];
    pad[0] = n as u8;
    black_box(&mut pad);
    if n == 0 {
        0
    } else {
        black_box(recurse(n + 1)) + pad[0] as u64
    }
}

fn route(req: &Request, authority: Option<String>) -> Response {
    let name = req.path.trim_start_matches('/');
    match name {
        "ok" => Response::text(200, "ok"),
        // What the app is told about the request and the user.
        "echo" => Response::json(
            json!({
                "authority": authority,
                "path": req.path,
                "query": req.query,
                "headers": req.headers,
                "base": req.base(),
                "pseudonym": identity::pseudonym(),
                "role": format!("{:?}", identity::current_role()),
            })
            .to_string(),
        ),
        // Storage: the app's own keys only, whatever the key looks like.
        "kv-set" => report(kv::set(&param(req, "key"), param(req, "value").as_bytes())),
        "kv-get" => report(kv::get(&param(req, "key")).map(|v| v.map(String::from_utf8))),
        "kv-list" => report(kv::list_keys(&param(req, "prefix"), 1000)),
        "kv-huge-value" => report(kv::set("huge", &vec![7u8; 64 * 1024 + 1])),
        "kv-huge-key" => report(kv::set(&"k".repeat(257), b"v")),
        "kv-fill" => {
            let mut last = Ok(());
            for i in 0..100 {
                last = kv::set(&format!("fill/{i}"), &[1u8; 1024]);
                if last.is_err() {
                    break;
                }
            }
            report(last)
        }
        // xAPI: only as the signed-in user.
        "xapi-forged-actor" => {
            let actor = json!({"objectType": "Agent",
                "account": {"homePage": param(req, "home"), "name": param(req, "victim")}});
            report(xapi::record_statements(
                &statement(Some(actor), None).to_string(),
            ))
        }
        "xapi-mbox-actor" => {
            let actor = json!({"objectType": "Agent", "mbox": "mailto:someone@example.org"});
            report(xapi::record_statements(
                &statement(Some(actor), None).to_string(),
            ))
        }
        "xapi-forged-authority" => {
            let authority = json!({"objectType": "Agent", "mbox": "mailto:admin@example.org"});
            report(xapi::record_statements(
                &statement(None, Some(authority)).to_string(),
            ))
        }
        "xapi-own" => report(xapi::record_statements(&statement(None, None).to_string())),
        "xapi-flood" => {
            let many: Vec<Value> = (0..51).map(|_| statement(None, None)).collect();
            report(xapi::record_statements(&Value::Array(many).to_string()))
        }
        "xapi-not-json" => report(xapi::record_statements("{not json")),
        "xapi-mine" => report(xapi::my_statements(None, 100)),
        // Competencies: only the signed-in teacher's classes; self-assessment by pupils.
        "class-aggregates" => report(competencies::class_aggregates(
            param(req, "class").parse().unwrap_or(0),
        )),
        "my-classes" => report(competencies::my_classes()),
        "self-assess" => report(competencies::self_assess(
            &param(req, "competency"),
            competencies::SelfAnswer::Can,
        )),
        "frameworks" => report(competencies::frameworks().map(|f| f.len())),
        "name" => report(identity::display_name()),
        // The sandbox: no filesystem, environment, network, fine clocks.
        "fs-preopens" => {
            let dirs = wasip2::filesystem::preopens::get_directories();
            report(if dirs.is_empty() {
                Err("none")
            } else {
                Ok(dirs.len())
            })
        }
        "fs-read-absolute" => report(std::fs::read("/etc/passwd")),
        "fs-read-relative" => report(std::fs::read("../../tenants/ecole/tenant.db")),
        "fs-write" => report(std::fs::write("/tmp/ceredis-app-was-here", b"x")),
        #[allow(deprecated)]
        "fs-symlink" => report(std::fs::soft_link("/etc/passwd", "passwd")),
        "env" => {
            let vars = wasip2::cli::environment::get_environment();
            let args = wasip2::cli::environment::get_arguments();
            let cwd = wasip2::cli::environment::initial_cwd();
            let std_vars = std::env::vars().count();
            if vars.is_empty() && args.is_empty() && cwd.is_none() && std_vars == 0 {
                report::<(), _>(Err("empty"))
            } else {
                report::<_, ()>(Ok(format!("{vars:?} {args:?} {cwd:?}")))
            }
        }
        "tcp" => report(tcp(param(req, "port").parse().unwrap_or(443))),
        "udp" => report(
            wasip2::sockets::udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4)
                .map(|_| ()),
        ),
        "dns" => {
            let network = wasip2::sockets::instance_network::instance_network();
            report(
                wasip2::sockets::ip_name_lookup::resolve_addresses(&network, "localhost")
                    .map(|_| ()),
            )
        }
        "http-out" => report(outgoing_http(&param(req, "authority"))),
        "clock" => {
            let wall = wasip2::clocks::wall_clock::now();
            let wall_res = wasip2::clocks::wall_clock::resolution();
            let mono_res = wasip2::clocks::monotonic_clock::resolution();
            let a = wasip2::clocks::monotonic_clock::now();
            let mut x = 0u64;
            for i in 0..200_000u64 {
                x = black_box(x.wrapping_add(i));
            }
            let b = wasip2::clocks::monotonic_clock::now();
            Response::json(
                json!({"wall_nanos": wall.nanoseconds, "wall_resolution_s": wall_res.seconds,
                       "monotonic_resolution_ns": mono_res, "monotonic_step_ns": b - a,
                       "work": x})
                .to_string(),
            )
        }
        "random" => report::<_, ()>(Ok(wasip2::random::random::get_random_u64())),
        // Resources: each must end in the host's error, never take the host down.
        "loop" => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        // Memory near the cap (`mib`, touched page by page), then CPU until the deadline.
        "hog" => {
            let mib: usize = param(req, "mib").parse().unwrap_or(12);
            let hoard = vec![1u8; mib << 20];
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(u64::from(hoard[(x as usize) % hoard.len()])));
            }
        }
        "recursion" => Response::text(200, format!("{}", recurse(1))),
        "memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "huge-response" => Response::new(200, "text/plain", vec![b'x'; 8 << 20]),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(30));
            Response::text(200, "woke up")
        }
        "panic" => panic!("the app panics"),
        "leftover-set" => {
            if let Ok(mut s) = LEFTOVER.lock() {
                *s = param(req, "value");
            }
            Response::text(200, "set")
        }
        "leftover-get" => {
            Response::text(200, LEFTOVER.lock().map(|s| s.clone()).unwrap_or_default())
        }
        "headers" => Response {
            status: 302,
            headers: vec![
                ("content-type".into(), "text/html".into()),
                ("set-cookie".into(), "__Host-ceredis=stolen; Path=/".into()),
                ("content-security-policy".into(), "script-src *".into()),
                ("access-control-allow-origin".into(), "*".into()),
                ("location".into(), "https://evil.example/phish".into()),
                ("x-frame-options".into(), "ALLOWALL".into()),
            ],
            body: b"<script>alert(1)</script>".to_vec(),
        },
        "local-redirect" => Response::redirect(req, "/ok"),
        _ => Response::not_found(),
    }
}

fn statement(actor: Option<Value>, authority: Option<Value>) -> Value {
    let mut s = json!({
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": "urn:ceredis:app:attacks:probe"},
        "result": {"score": {"scaled": 0.42}}
    });
    if let Some(a) = actor {
        s["actor"] = a;
    }
    if let Some(a) = authority {
        s["authority"] = a;
    }
    s
}

impl wasip2::exports::http::incoming_handler::Guest for Attacks {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let authority = request.authority();
        let req = match ceredis_app::read_request(&request) {
            Ok(r) => r,
            Err(m) => return ceredis_app::write_response(Response::text(400, m), out),
        };
        match req.path.as_str() {
            // Never answers: the host must not wait for ever.
            "/no-response" => {}
            // Sends its headers, then stalls the body.
            "/slow-body" => {
                let resp = OutgoingResponse::new(Fields::new());
                let Ok(body) = resp.body() else { return };
                ResponseOutparam::set(out, Ok(resp));
                if let Ok(stream) = body.write() {
                    let _ = stream.blocking_write_and_flush(b"first bytes");
                    std::thread::sleep(Duration::from_secs(30));
                    drop(stream);
                }
                let _ = OutgoingBody::finish(body, None);
            }
            _ => ceredis_app::write_response(route(&req, authority), out),
        }
    }
}

wasip2::http::proxy::export!(Attacks);
