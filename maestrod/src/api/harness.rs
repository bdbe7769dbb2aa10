//! `maestro.v1.HarnessService`: a project's policy, the decision dry run and budget usage.

use std::path::Path;
use std::sync::Arc;

use maestro_shared::v1::{self, harness_service_server::HarnessService};
use tonic::{Request, Response, Status};

use super::status::{IntoStatus, gate_status};
use crate::harness::sandbox::Confinement;
use crate::harness::validator::Applies;
use crate::harness::{Action, Decision, Gate};
use crate::ssot::Ssot;

pub(crate) struct Harness {
    pub(crate) ssot: Arc<Ssot>,
    pub(crate) confinement: Confinement,
}

pub(crate) fn confinement(c: &Confinement) -> v1::SandboxConfinement {
    v1::SandboxConfinement {
        filesystem: c.filesystem,
        network: c.network,
        notes: c.notes.clone(),
        layers: c.layers.clone(),
    }
}

impl Harness {
    async fn gate(&self, project: &str) -> Result<(Gate, String), Status> {
        let project = self.ssot.get_project(project).await.status()?.value;
        if project.workspace.is_empty() {
            return Err(Status::failed_precondition(format!(
                "project {} has no workspace; set one (maestroctl project create --workspace DIR)",
                project.id
            )));
        }
        let gate = Gate::open(Path::new(&project.workspace)).map_err(gate_status)?;
        Ok((gate, project.workspace))
    }
}

#[tonic::async_trait]
impl HarnessService for Harness {
    async fn get_policy(&self, request: Request<v1::GetPolicyRequest>) -> Result<Response<v1::HarnessPolicy>, Status> {
        let project_id = request.into_inner().project_id;
        let (gate, workspace) = self.gate(&project_id).await?;
        let policy = gate.policy();
        let roles = policy
            .roles
            .values()
            .map(|role| v1::RolePolicy {
                name: role.name.clone(),
                read: role.source.read.clone().unwrap_or_default(),
                write: role.source.write.clone().unwrap_or_default(),
                deny: role.source.deny.clone().unwrap_or_default(),
                commands: role.commands.iter().map(|argv| v1::CommandPrefix { argv: argv.clone() }).collect(),
                shell: role.shell,
                network: role.network,
                ssot: role.ssot.clone(),
            })
            .collect();
        let rules = policy
            .validator
            .rules
            .iter()
            .map(|rule| v1::ValidatorRule {
                id: rule.id.clone(),
                applies_to: match rule.applies_to {
                    Applies::Content => "content",
                    Applies::Command => "command",
                }
                .to_string(),
                pattern: rule.pattern.as_str().to_string(),
                reason: rule.reason.clone(),
            })
            .collect();
        Ok(Response::new(v1::HarnessPolicy {
            project_id,
            workspace,
            roles,
            deny: policy.deny_globs.clone(),
            protected: crate::harness::policy::DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            rules,
            max_deleted_files: policy.validator.max_deleted_files as u64,
            max_deleted_lines: policy.validator.max_deleted_lines as u64,
            confinement: Some(confinement(&self.confinement)),
        }))
    }

    async fn check_action(
        &self,
        request: Request<v1::CheckActionRequest>,
    ) -> Result<Response<v1::CheckActionResponse>, Status> {
        let r = request.into_inner();
        let action = match r.action {
            Some(v1::check_action_request::Action::Read(path)) => Action::ReadFile { path },
            Some(v1::check_action_request::Action::List(path)) => Action::ListDir { path },
            Some(v1::check_action_request::Action::Write(w)) => Action::WriteFile { path: w.path, content: w.content },
            Some(v1::check_action_request::Action::Delete(path)) => Action::DeleteFile { path },
            Some(v1::check_action_request::Action::Run(command)) => Action::RunCommand { argv: command.argv },
            Some(v1::check_action_request::Action::SsotWrite(w)) => {
                Action::SsotWrite { collection: w.collection, target: w.target }
            }
            None => {
                return Err(Status::invalid_argument(
                    "action: one of read, list, write, delete, run or ssot_write is required",
                ));
            }
        };
        let (gate, _) = self.gate(&r.project_id).await?;
        let decision = gate.check(&r.role, &action).map_err(gate_status)?;
        Ok(Response::new(match decision {
            Decision::Allow => v1::CheckActionResponse { allowed: true, rule: String::new(), reason: String::new() },
            Decision::Deny(v) => v1::CheckActionResponse { allowed: false, rule: v.rule, reason: v.reason },
        }))
    }

    async fn list_budget_usage(
        &self,
        request: Request<v1::ListBudgetUsageRequest>,
    ) -> Result<Response<v1::ListBudgetUsageResponse>, Status> {
        let r = request.into_inner();
        let page = self.ssot.list_budgets(&r.project_id, &r.loop_id, r.page_size, &r.page_token).await.status()?;
        Ok(Response::new(v1::ListBudgetUsageResponse {
            usage: page
                .items
                .into_iter()
                .map(|b| {
                    let b = b.value;
                    v1::BudgetUsage {
                        loop_id: b.loop_id,
                        epoch: b.epoch,
                        agent: b.agent,
                        tokens: b.tokens,
                        steps: b.steps,
                        elapsed_ms: b.elapsed_ms,
                        token_limit: b.token_limit,
                        step_limit: b.step_limit,
                        wall_limit_ms: b.wall_limit_ms,
                        exhausted: b.exhausted,
                        update_time_ms: b.update_time_ms,
                    }
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
