//! The Devices service: what `tillctl devices` shows.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tillgate_proto::v1 as pb;
use tillgate_proto::v1::devices_server::Devices;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use super::timestamp;
use crate::config::DeviceRole;
use crate::hardware::registry::DeviceKind;
use crate::hardware::{ActivityKind, DeviceRegistry, DeviceState, InputActivity};

#[derive(Debug)]
pub struct DevicesService {
    pub registry: Arc<DeviceRegistry>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub fn device_to_pb(state: DeviceState) -> pb::InputDevice {
    let kind = match state.kind {
        DeviceKind::Evdev => "evdev",
        DeviceKind::Serial => "serial",
    };
    let is_evdev = state.kind == DeviceKind::Evdev;
    pb::InputDevice {
        vendor_product: if is_evdev {
            state.info.vendor_product()
        } else {
            String::new()
        },
        path: state.info.path.display().to_string(),
        name: state.info.name,
        phys: state.info.phys,
        uniq: state.info.uniq,
        links: state
            .info
            .by_id
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        kind: kind.into(),
        rule: state.rule.unwrap_or_default(),
        role: match state.role {
            Some(DeviceRole::PinPad) => "pin_pad".into(),
            Some(DeviceRole::KeyReader) => "key_reader".into(),
            None => String::new(),
        },
        grabbed: state.grabbed,
        attached: state.attached,
        last_seen: state.last_seen.map(timestamp),
        error: state.error,
    }
}

fn activity_to_pb(activity: InputActivity) -> pb::InputActivity {
    pb::InputActivity {
        at: Some(timestamp(activity.at)),
        device: activity.device,
        path: activity.path.display().to_string(),
        kind: match activity.kind {
            ActivityKind::Attached => pb::InputActivityKind::Attached,
            ActivityKind::Detached => pb::InputActivityKind::Detached,
            ActivityKind::Pin => pb::InputActivityKind::Pin,
            ActivityKind::Key => pb::InputActivityKind::Key,
            ActivityKind::Removal => pb::InputActivityKind::Removal,
            ActivityKind::BadRead => pb::InputActivityKind::BadRead,
            ActivityKind::Rejected => pb::InputActivityKind::Rejected,
        } as i32,
        masked: activity.masked,
        outcome: activity.outcome,
    }
}

type ActivityStream = Pin<Box<dyn Stream<Item = Result<pb::InputActivity, Status>> + Send>>;

#[tonic::async_trait]
impl Devices for DevicesService {
    async fn list_devices(
        &self,
        _request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        Ok(Response::new(pb::ListDevicesResponse {
            devices: self.registry.list().into_iter().map(device_to_pb).collect(),
        }))
    }

    type WatchInputStream = ActivityStream;

    async fn watch_input(
        &self,
        _request: Request<pb::WatchInputRequest>,
    ) -> Result<Response<Self::WatchInputStream>, Status> {
        let mut shutdown = self.shutdown.clone();
        let stopping = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        // A watcher that falls behind skips what it missed: this is a live view for installers.
        let stream = BroadcastStream::new(self.registry.subscribe())
            .filter_map(|item| std::future::ready(item.ok().map(|a| Ok(activity_to_pb(a)))))
            .take_until(stopping);
        Ok(Response::new(Box::pin(stream)))
    }
}
