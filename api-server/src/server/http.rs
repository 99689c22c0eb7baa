//! One HTTP request: route, read the body under the size cap, call the
//! VMM on a blocking thread, and build the JSON response, in the bytes
//! Cloud Hypervisor's client reads (see [`super::wire`]).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::wire::{empty_reason, to_ascii_json};
use crate::routes::{self, MAX_BODY_SIZE};
use vmm_api::{ApiError, ApiErrorKind, ErrorBody, VmmApi, VmmData};

/// How long a client may take to send its body.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The response body type.
pub(crate) type ResponseBody = Full<Bytes>;

/// Answers one request. Never fails: every error becomes a JSON error
/// response.
pub(crate) async fn handle<B>(request: Request<B>, api: Arc<dyn VmmApi>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path().to_owned();
    match answer(request, api).await {
        Ok(data) => data_response(data),
        Err(error) => error_response(&error, &path),
    }
}

async fn answer<B>(request: Request<B>, api: Arc<dyn VmmApi>) -> Result<VmmData, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let route = routes::find(request.method().as_str(), request.uri().path())?;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_SIZE as u64) {
        return Err(routes::too_large());
    }
    let body = Limited::new(request.into_body(), MAX_BODY_SIZE).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Err(_) => return Err(ApiError::bad_request("Timed out reading the request body")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(routes::too_large());
        }
        Ok(Err(e)) => {
            return Err(ApiError::bad_request(format!(
                "Cannot read the request body: {e}"
            )));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let action = route.parse(&body)?;
    log::debug!(
        "API {} {}: {action:?}",
        route.method.as_str(),
        route.endpoint
    );
    match tokio::task::spawn_blocking(move || api.handle(action)).await {
        Ok(result) => result,
        Err(e) => {
            log::error!("The VMM failed handling {}: {e}", route.endpoint);
            Err(ApiError::internal(format!(
                "The VMM failed handling {}",
                route.endpoint
            )))
        }
    }
}

fn data_response(data: VmmData) -> Response<ResponseBody> {
    match data {
        VmmData::Empty => response(StatusCode::NO_CONTENT, None),
        VmmData::Warnings(w) => json_response(StatusCode::OK, &w),
        VmmData::Ping(p) => json_response(StatusCode::OK, &p),
        VmmData::VmInfo(i) => json_response(StatusCode::OK, &i),
        VmmData::SnpCerts(c) => json_response(StatusCode::OK, &c),
        VmmData::Counters(c) => json_response(StatusCode::OK, &c),
    }
}

/// The response for `error`, with an `Allow` header on 405.
pub(crate) fn error_response(error: &ApiError, path: &str) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if error.kind == ApiErrorKind::Internal {
        log::error!("API {path}: {error}");
    } else {
        log::debug!("API {path}: {status}: {error}");
    }
    let mut response = json_response(status, &ErrorBody::from(error));
    if error.kind == ApiErrorKind::MethodNotAllowed {
        let allowed: Vec<&str> = routes::allowed_methods(path)
            .iter()
            .map(|m| m.as_str())
            .collect();
        if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(ALLOW, value);
        }
    }
    response
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match to_ascii_json(value) {
        Ok(body) => response(status, Some(body)),
        Err(e) => {
            log::error!("Cannot encode an API response: {e}");
            let body = br#"["Cannot encode the response"]"#.to_vec();
            response(StatusCode::INTERNAL_SERVER_ERROR, Some(body))
        }
    }
}

fn response(status: StatusCode, json: Option<Vec<u8>>) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(json.clone().unwrap_or_default())));
    *response.status_mut() = status;
    empty_reason(&mut response);
    if json.is_some() {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use vmm_api::{PingResponse, VmmAction};

    /// Records actions; answers ping, fails boot with 409, and panics on
    /// vm.delete.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<VmmAction>>);

    impl VmmApi for Recorder {
        fn handle(&self, action: VmmAction) -> Result<VmmData, ApiError> {
            self.0.lock().unwrap().push(action.clone());
            match action {
                VmmAction::Ping => Ok(VmmData::Ping(PingResponse {
                    build_version: "1".into(),
                    version: "1".into(),
                    features: vec!["mock".into()],
                    pid: 1,
                    hypervisor: "mock".into(),
                    snp_req_certs_supported: false,
                })),
                VmmAction::BootVm => Err(ApiError::conflict("VM is not created")),
                VmmAction::DeleteVm => panic!("test panic"),
                _ => Ok(VmmData::Empty),
            }
        }
    }

    async fn call(
        method: &str,
        path: &str,
        body: Vec<u8>,
        length: Option<&str>,
    ) -> (Response<ResponseBody>, Vec<VmmAction>) {
        let recorder = Arc::new(Recorder::default());
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(length) = length {
            builder = builder.header(CONTENT_LENGTH, length);
        }
        let request = builder.body(Full::new(Bytes::from(body))).unwrap();
        let response = handle(request, recorder.clone()).await;
        let actions = recorder.0.lock().unwrap().clone();
        (response, actions)
    }

    async fn body_json(response: Response<ResponseBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn success_statuses() {
        run(async {
            let (r, actions) = call("GET", "/api/v1/vmm.ping", vec![], None).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(actions, [VmmAction::Ping]);
            assert_eq!(body_json(r).await["hypervisor"], "mock");
            let (r, actions) = call("PUT", "/api/v1/vm.shutdown", vec![], None).await;
            assert_eq!(r.status(), 204);
            assert_eq!(actions, [VmmAction::ShutdownVm]);
        });
    }

    #[test]
    fn error_statuses() {
        run(async {
            let (r, actions) = call("PUT", "/api/v1/vm.boot", vec![], None).await;
            assert_eq!(r.status(), 409);
            assert_eq!(actions, [VmmAction::BootVm]);
            assert_eq!(body_json(r).await, serde_json::json!(["VM is not created"]));

            let (r, actions) = call("PUT", "/api/v1/vm.delete", vec![], None).await;
            assert_eq!(r.status(), 500);
            assert_eq!(actions, [VmmAction::DeleteVm]);

            let (r, actions) = call("DELETE", "/api/v1/vm.snp-certs", vec![], None).await;
            assert_eq!(r.status(), 405);
            assert_eq!(r.headers()[ALLOW], "GET, PUT");
            assert!(actions.is_empty());

            let (r, _) = call("GET", "/api/v1/vm.bogus", vec![], None).await;
            assert_eq!(r.status(), 404);
            assert_eq!(
                body_json(r).await,
                serde_json::json!(["Unknown endpoint /api/v1/vm.bogus"])
            );

            let (r, actions) =
                call("PUT", "/api/v1/vm.snp-certs", b"{\"x\":1}".to_vec(), None).await;
            assert_eq!(r.status(), 400);
            assert!(actions.is_empty());
        });
    }

    #[test]
    fn oversized_bodies_are_413() {
        run(async {
            let big = vec![b' '; MAX_BODY_SIZE + 1];
            // Caught by the size cap while reading.
            let (r, actions) = call("PUT", "/api/v1/vm.snp-certs", big, None).await;
            assert_eq!(r.status(), 413);
            assert!(actions.is_empty());
            // Caught from Content-Length before reading.
            let (r, _) = call("PUT", "/api/v1/vm.snp-certs", vec![], Some("1000000")).await;
            assert_eq!(r.status(), 413);
            assert_eq!(
                body_json(r).await[0],
                "Request body is larger than 65536 bytes"
            );
        });
    }
}
