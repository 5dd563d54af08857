//! The Identity service: who the driver is, what it offers, and whether it can serve.

use std::path::Path;

use tonic::{Request, Response, Status};

use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{Service, VolumeExpansion, service, volume_expansion};
use crate::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, plugin_capability,
};
use crate::server::Driver;
use crate::{DRIVER_NAME, Mode};

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    /// The controller service and online expansion, when this process serves the controller.
    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.mode().controller() {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            });
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    /// Ready when the database answers and, on a node, `/dev/fuse` exists.
    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        if let Err(e) = self.engine().list_tenants().await {
            return Err(Status::unavailable(format!(
                "the database does not answer: {e}"
            )));
        }
        if self.mode() != Mode::Controller && !Path::new("/dev/fuse").exists() {
            return Err(Status::failed_precondition(
                "/dev/fuse is missing: the node plugin needs it (a privileged container)",
            ));
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
