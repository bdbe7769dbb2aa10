//! `maestro.v1.ContractService`.

use std::sync::Arc;

use maestro_shared::v1::{self, contract_service_server::ContractService};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::IntoStatus;
use crate::ssot::Ssot;
use crate::ssot::contracts::{ContractStatus, NewContract};

pub(crate) struct Contracts(pub(crate) Arc<Ssot>);

#[tonic::async_trait]
impl ContractService for Contracts {
    async fn put_contract(&self, request: Request<v1::PutContractRequest>) -> Result<Response<v1::Contract>, Status> {
        let r = request.into_inner();
        let new = NewContract {
            name: r.name,
            kind: convert::contract_kind_from_wire(r.kind)?,
            spec: r.spec,
            owner: r.owner,
            consumers: r.consumers,
            status: convert::contract_status_from_wire(r.status, Some(ContractStatus::Draft))?,
            etag: r.etag,
        };
        let stored = self.0.put_contract(&r.project_id, new).await.status()?;
        Ok(Response::new(convert::contract(&r.project_id, stored)))
    }

    async fn get_contract(&self, request: Request<v1::GetContractRequest>) -> Result<Response<v1::Contract>, Status> {
        let r = request.into_inner();
        let found = self.0.get_contract(&r.project_id, &r.name, r.version).await.status()?;
        Ok(Response::new(convert::contract(&r.project_id, found)))
    }

    async fn list_contracts(
        &self,
        request: Request<v1::ListContractsRequest>,
    ) -> Result<Response<v1::ListContractsResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list_contracts(&r.project_id, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListContractsResponse {
            contracts: page.items.into_iter().map(|c| convert::contract(&r.project_id, c)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_contract_versions(
        &self,
        request: Request<v1::ListContractVersionsRequest>,
    ) -> Result<Response<v1::ListContractsResponse>, Status> {
        let r = request.into_inner();
        let page = self.0.list_contract_versions(&r.project_id, &r.name, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListContractsResponse {
            contracts: page.items.into_iter().map(|c| convert::contract(&r.project_id, c)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn set_contract_status(
        &self,
        request: Request<v1::SetContractStatusRequest>,
    ) -> Result<Response<v1::Contract>, Status> {
        let r = request.into_inner();
        let status = convert::contract_status_from_wire(r.status, None)?;
        let updated =
            self.0.set_contract_status(&r.project_id, &r.name, r.version, status, &r.reason, &r.etag).await.status()?;
        Ok(Response::new(convert::contract(&r.project_id, updated)))
    }
}
