//! The login socket's per-uid call rate (`login_socket.calls_per_second`, `call_burst`,
//! `max_call_wait`): a tower layer around [`crate::call_rate`]. A call within the uid's budget
//! goes on at once; one over it waits for its turn, without holding a calls-in-progress slot
//! meanwhile; one whose turn is more than `max_call_wait` away is answered RESOURCE_EXHAUSTED
//! at once. Admin uids get the same budget: the daemon cannot tell an admin tool from a
//! runaway script running as root.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::UdsConnectInfo;
use tower::ServiceExt;

use crate::call_rate::{Admission, CallRate, CallRates};

/// The budgets of the login socket's uids (a peer without credentials shares one, `None`).
#[derive(Debug)]
pub struct UidRates {
    rates: Mutex<CallRates<Option<u32>>>,
    origin: Instant,
    refused: AtomicU64,
}

impl UidRates {
    pub fn new(rate: CallRate) -> Arc<Self> {
        Arc::new(UidRates {
            rates: Mutex::new(CallRates::new(rate)),
            origin: Instant::now(),
            refused: AtomicU64::new(0),
        })
    }

    fn reserve(&self, uid: Option<u32>) -> (Admission, CallRate) {
        let now = self.origin.elapsed();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        (rates.reserve(uid, now), *rates.rate())
    }
}

#[derive(Debug, Clone)]
pub struct CallRateLayer(pub Arc<UidRates>);

impl<S> tower::Layer<S> for CallRateLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            rates: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    rates: Arc<UidRates>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RateLimited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    // Readiness is the inner service's business once the call's turn has come (below): a call
    // waiting for its turn must not hold a calls-in-progress slot.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        let (admission, rate) = self.rates.reserve(uid);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let wait = match admission {
            Admission::Now => None,
            Admission::After(wait) => Some(wait),
            Admission::Refused { wait } => {
                let refused = self.rates.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let uid = uid.map_or_else(|| "unknown".to_owned(), |uid| uid.to_string());
                if refused == 1 || refused.is_multiple_of(1000) {
                    tracing::warn!(
                        %uid,
                        calls_per_second = rate.per_second,
                        call_burst = rate.burst,
                        refused,
                        "call refused: this uid is over its login_socket call rate"
                    );
                }
                let status = Status::resource_exhausted(format!(
                    "uid {uid} is over login_socket.calls_per_second ({} a second after a burst of {}): \
                     this call's turn is {} away, more than login_socket.max_call_wait ({})",
                    rate.per_second,
                    rate.burst,
                    humantime::format_duration(round_ms(wait)),
                    humantime::format_duration(rate.max_wait),
                ));
                let response = status.into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        Box::pin(async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            inner.ready().await?.call(request).await
        })
    }
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
