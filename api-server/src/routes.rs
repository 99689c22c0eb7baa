//! The route table and the request parser: from (method, path, body) to a
//! [`VmmAction`], without sockets.
//!
//! [`ROUTES`] is the single source of truth for which endpoint takes which
//! method and body: the server's 404/405 answers and `Allow` headers come
//! from it, and a test checks `openapi.yaml` against it.

use serde::de::DeserializeOwned;

use snp_certs_types::CertsConfig;
use vmm_api::{ApiError, ApiErrorKind, SnpCertsUpdate, VmConfig, VmmAction};

/// Prefix of every endpoint path.
pub const API_ROOT: &str = "/api/v1/";

/// Largest accepted request body: 64 KiB. Larger bodies get 413.
pub const MAX_BODY_SIZE: usize = 64 * 1024;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `GET`: read, no body.
    Get,
    /// `PUT`: act or change, with or without a body.
    Put,
}

impl Method {
    /// The method's name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }

    /// Parses a wire name; `None` for methods the API never uses.
    pub fn from_name(name: &str) -> Option<Method> {
        match name {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            _ => None,
        }
    }
}

/// What a successful call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// 200 with a JSON body of the named schema.
    Json(&'static str),
    /// 204 No Content.
    NoContent,
    /// 204 No Content, or 200 with a JSON body of the named schema when
    /// there is something to say (`vm.create`'s warnings).
    NoContentOrJson(&'static str),
}

/// One (endpoint, method) pair.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The endpoint, such as `vm.snp-certs`; the path is [`API_ROOT`] + it.
    pub endpoint: &'static str,
    /// The method.
    pub method: Method,
    /// The schema of the JSON request body, if the route takes one.
    pub request: Option<&'static str>,
    /// What a successful call returns.
    pub success: Success,
    parse: fn(&Route, &[u8]) -> Result<VmmAction, ApiError>,
}

impl Route {
    /// The full path, such as `/api/v1/vm.info`.
    pub fn path(&self) -> String {
        format!("{API_ROOT}{}", self.endpoint)
    }

    /// Decodes `body` into this route's action.
    pub fn parse(&self, body: &[u8]) -> Result<VmmAction, ApiError> {
        if body.len() > MAX_BODY_SIZE {
            return Err(too_large());
        }
        (self.parse)(self, body)
    }
}

macro_rules! route {
    ($endpoint:literal, $method:ident, $request:expr, $success:expr, $parse:expr) => {
        Route {
            endpoint: $endpoint,
            method: Method::$method,
            request: $request,
            success: $success,
            parse: $parse,
        }
    };
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    route!(
        "vmm.ping",
        Get,
        None,
        Success::Json("PingResponse"),
        |r, b| { no_body(r, b, VmmAction::Ping) }
    ),
    route!("vmm.shutdown", Put, None, Success::NoContent, |r, b| {
        no_body(r, b, VmmAction::ShutdownVmm)
    }),
    route!(
        "vm.create",
        Put,
        Some("VmConfig"),
        Success::NoContentOrJson("Warnings"),
        parse_create
    ),
    route!("vm.boot", Put, None, Success::NoContent, |r, b| {
        no_body(r, b, VmmAction::BootVm)
    }),
    route!("vm.info", Get, None, Success::Json("VmInfo"), |r, b| {
        no_body(r, b, VmmAction::VmInfo)
    }),
    route!("vm.shutdown", Put, None, Success::NoContent, |r, b| {
        no_body(r, b, VmmAction::ShutdownVm)
    }),
    route!("vm.delete", Put, None, Success::NoContent, |r, b| {
        no_body(r, b, VmmAction::DeleteVm)
    }),
    route!(
        "vm.snp-certs",
        Get,
        None,
        Success::Json("SnpCertsInfo"),
        |r, b| { no_body(r, b, VmmAction::GetSnpCerts) }
    ),
    route!(
        "vm.snp-certs",
        Put,
        Some("SnpCertsUpdate"),
        Success::Json("SnpCertsInfo"),
        parse_put_certs
    ),
    route!(
        "vm.counters",
        Get,
        None,
        Success::Json("CounterMap"),
        |r, b| { no_body(r, b, VmmAction::VmCounters) }
    ),
];

impl Route {
    /// Every error status this route can answer, by rule: 400 (a bad body,
    /// or any body where none is taken), 405 (the same path with another
    /// method), 413 and 500 everywhere; 404 (no VM) on every `vm.*`
    /// endpoint but `vm.create` and `vm.delete` (which, as in Cloud
    /// Hypervisor, succeeds without a VM); 409 where the VM's state
    /// matters or a certs file is validated (it may be locked for an
    /// update). `openapi.yaml` lists exactly these.
    pub fn error_statuses(&self) -> Vec<u16> {
        let mut statuses = vec![400, 405, 413, 500];
        if self.endpoint.starts_with("vm.") && !matches!(self.endpoint, "vm.create" | "vm.delete") {
            statuses.push(404);
        }
        let conflicts = matches!(
            (self.endpoint, self.method),
            (
                "vm.create" | "vm.boot" | "vm.shutdown" | "vm.snp-certs",
                Method::Put
            )
        );
        if conflicts {
            statuses.push(409);
        }
        statuses.sort_unstable();
        statuses
    }
}

/// The methods `path` accepts, in table order; empty for unknown paths.
pub fn allowed_methods(path: &str) -> Vec<Method> {
    let endpoint = path.strip_prefix(API_ROOT);
    ROUTES
        .iter()
        .filter(|r| Some(r.endpoint) == endpoint)
        .map(|r| r.method)
        .collect()
}

/// Cloud Hypervisor's endpoints that snp-vmm does not offer; a call to
/// one is a 404 (as CH answers an unknown endpoint) that says so.
pub const CH_ONLY_ENDPOINTS: &[&str] = &[
    "vm.add-device",
    "vm.add-disk",
    "vm.add-fs",
    "vm.add-generic-vhost-user",
    "vm.add-net",
    "vm.add-pmem",
    "vm.add-user-device",
    "vm.add-vdpa",
    "vm.add-vsock",
    "vm.coredump",
    "vm.nmi",
    "vm.pause",
    "vm.power-button",
    "vm.reboot",
    "vm.receive-migration",
    "vm.remove-device",
    "vm.resize",
    "vm.resize-disk",
    "vm.resize-zone",
    "vm.restore",
    "vm.resume",
    "vm.send-migration",
    "vm.snapshot",
];

/// Finds the route for `method` and `path`: 404 for an unknown path, 405
/// for a method the path does not take.
pub fn find(method: &str, path: &str) -> Result<&'static Route, ApiError> {
    let allowed = allowed_methods(path);
    if allowed.is_empty() {
        let error = ApiError::not_found(format!("Unknown endpoint {path}"));
        return Err(match path.strip_prefix(API_ROOT) {
            Some(endpoint) if CH_ONLY_ENDPOINTS.contains(&endpoint) => error.context_inner(
                format!("snp-vmm does not implement Cloud Hypervisor's {endpoint}"),
            ),
            _ => error,
        });
    }
    let wanted = Method::from_name(method);
    ROUTES
        .iter()
        .find(|r| Some(r.method) == wanted && path.strip_prefix(API_ROOT) == Some(r.endpoint))
        .ok_or_else(|| {
            let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            ApiError::new(
                ApiErrorKind::MethodNotAllowed,
                format!(
                    "{path} does not take {method}; allowed: {}",
                    names.join(", ")
                ),
            )
        })
}

/// Decodes a whole request: [`find`], then [`Route::parse`].
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, ApiError> {
    find(method, path)?.parse(body)
}

/// The 413 error.
pub fn too_large() -> ApiError {
    ApiError::new(
        ApiErrorKind::PayloadTooLarge,
        format!("Request body is larger than {MAX_BODY_SIZE} bytes"),
    )
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn no_body(route: &Route, body: &[u8], action: VmmAction) -> Result<VmmAction, ApiError> {
    if is_blank(body) {
        Ok(action)
    } else {
        Err(ApiError::bad_request(format!(
            "{} {} takes no request body",
            route.method.as_str(),
            route.endpoint
        )))
    }
}

/// Decodes a JSON body; messages name the field at fault.
fn json<T: DeserializeOwned>(route: &Route, body: &[u8]) -> Result<T, ApiError> {
    let prefix = format!("Invalid {} body", route.endpoint);
    if is_blank(body) {
        return Err(ApiError::bad_request(format!(
            "{} {} needs a JSON body",
            route.method.as_str(),
            route.endpoint
        )));
    }
    // serde also reads structs from arrays; the API speaks objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("Expected a JSON object").context(prefix));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if matches!(path.as_str(), "" | "." | "?") {
            ApiError::from_error(ApiErrorKind::BadRequest, &inner).context(prefix.clone())
        } else {
            ApiError::bad_request(format!("{path}: {inner}")).context(prefix.clone())
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::from_error(ApiErrorKind::BadRequest, &e).context(prefix))?;
    Ok(value)
}

fn parse_create(route: &Route, body: &[u8]) -> Result<VmmAction, ApiError> {
    let config: VmConfig = json(route, body)?;
    config.validate().map_err(|e| {
        ApiError::from_error(ApiErrorKind::BadRequest, &e)
            .context(format!("Invalid {} body", route.endpoint))
    })?;
    Ok(VmmAction::CreateVm(Box::new(config)))
}

fn parse_put_certs(route: &Route, body: &[u8]) -> Result<VmmAction, ApiError> {
    let update: SnpCertsUpdate = json(route, body)?;
    // snp-certs's rules, on a configuration holding just the values given.
    update.apply(&CertsConfig::default()).check().map_err(|e| {
        ApiError::from_error(ApiErrorKind::BadRequest, &e)
            .context(format!("Invalid {} body", route.endpoint))
    })?;
    Ok(VmmAction::PutSnpCerts(update))
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
