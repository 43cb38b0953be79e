//! go-grpc-prometheus's server counters as a tower layer: `grpc_server_started_total` when a gRPC
//! call arrives, `grpc_server_handled_total{grpc_code}` when it ends. The code is the
//! `grpc-status` of a trailers-only answer, or of the trailers after the last message; a response
//! dropped before its trailers (the client went away) counts as `Canceled`. Requests that are not
//! gRPC (the JSON gateway shares the listener) pass through untouched.

use crate::metrics::{GrpcCall, GrpcMethod};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct MeteredLayer;

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metered<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut call = if is_grpc(req.headers()) {
            GrpcMethod::from_path(req.uri().path()).map(GrpcCall::start)
        } else {
            None
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(c) = call.as_mut() {
                if let Some(code) = grpc_status(resp.headers()) {
                    c.done(code);
                } else if !resp.status().is_success() {
                    c.done(tonic::Code::Unknown);
                }
            }
            Ok(resp.map(|body| MeteredBody {
                inner: Box::pin(body),
                call,
            }))
        })
    }
}

/// The response body, watched for the trailers that carry the call's status.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    call: Option<GrpcCall>,
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        call.done(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => call.done(tonic::Code::Unknown),
                // Ended without trailers: a gRPC response always has them, so this is a
                // broken call.
                Poll::Ready(None) => call.done(tonic::Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
