//! `Admin.Acl*`: access tokens (`core::acl`), and the access check's view of them.
//!
//! A token is made on the leader (a follower forwards the request, and the leader's reply
//! carries the secret back): the secret is drawn there, only its hash is written, with a
//! compare-and-set on the key's absence. Every controller checks presented tokens against
//! its own applied state ([`StateTokens`]), so a revocation is honoured by each controller
//! as soon as it applied it (milliseconds on a healthy group).

use std::time::{SystemTime, UNIX_EPOCH};

use steward_core::acl::{self, NewToken, TokenRecord, BOOTSTRAP_KEY, MAX_TOKENS, TOKENS_PREFIX};
use steward_core::identity::Role;
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use steward_runtime::access::{Caller, TokenRoles};
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::kv::write_error;
use super::ApiContext;
use crate::raft::store::StateView;

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resolves bearer tokens against this controller's applied state.
pub struct StateTokens(pub StateView);

impl TokenRoles for StateTokens {
    fn role_of(&self, token: &str) -> Result<Role, String> {
        let presented = acl::parse(token).map_err(|e| e.to_string())?;
        let applied = self.0.read();
        let kv = &applied.state.kv;
        let record = kv
            .get(&acl::token_key(&presented.accessor))
            .and_then(|e| TokenRecord::decode(&e.value))
            .or_else(|| {
                kv.get(BOOTSTRAP_KEY)
                    .and_then(|e| TokenRecord::decode(&e.value))
                    .filter(|r| r.accessor == presented.accessor)
            })
            .ok_or_else(|| acl::AclError::Unknown.to_string())?;
        record
            .check(&presented, now_unix_ms())
            .map_err(|e| e.to_string())
    }
}

/// Who makes a token: the caller's identity URI, or "insecure" on a plaintext cluster.
fn creator<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "insecure".to_string(), |c| c.0.uri())
}

fn created_reply(token: &NewToken) -> AclTokenCreated {
    AclTokenCreated {
        accessor: token.record.accessor.clone(),
        token: token.text.clone(),
        role: token.record.role.to_string(),
        expires_unix_ms: token.record.expires_unix_ms.unwrap_or(0),
    }
}

fn new_token<T>(
    request: &Request<T>,
    role: Role,
    name: &str,
    ttl_seconds: u64,
) -> Result<NewToken, ApiError> {
    let ttl = (ttl_seconds > 0).then(|| ttl_seconds.saturating_mul(1000));
    NewToken::new(
        rand::random(),
        role,
        name,
        now_unix_ms(),
        ttl,
        &creator(request),
    )
    .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

pub async fn bootstrap(
    ctx: &ApiContext,
    request: Request<AclBootstrapRequest>,
) -> Result<Response<AclTokenCreated>, Status> {
    let token = new_token(&request, Role::Admin, "bootstrap", 0)?;
    let value = token.record.encode();
    ctx.write(
        request,
        |_| {
            Ok(Command::KvPut {
                key: BOOTSTRAP_KEY.to_string(),
                value,
                expected_revision: Some(0),
            })
        },
        |result| match result {
            CommandResult::KvPut { .. } => Ok(created_reply(&token)),
            CommandResult::RevisionMismatch { actual, .. } => {
                Err(ApiError::FailedPrecondition(format!(
                    "the cluster was bootstrapped already (revision {actual}); an admin makes more tokens with `steward acl token create`"
                )))
            }
            other => Err(write_error(other)),
        },
        |mut c, r| async move { c.acl_bootstrap(r).await },
    )
    .await
}

pub async fn create(
    ctx: &ApiContext,
    request: Request<CreateAclTokenRequest>,
) -> Result<Response<AclTokenCreated>, Status> {
    let req = request.get_ref();
    let role = Role::parse(&req.role).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let token = new_token(&request, role, &req.name, req.ttl_seconds)?;
    let key = acl::token_key(&token.record.accessor);
    let value = token.record.encode();
    ctx.write(
        request,
        |_| {
            // Expired tokens do not count (they are listed until revoked).
            let now = now_unix_ms();
            let count = ctx
                .raft
                .view()
                .read()
                .state
                .kv_list(TOKENS_PREFIX, None, usize::MAX)
                .filter_map(|(_, e)| TokenRecord::decode(&e.value))
                .filter(|r| r.expires_unix_ms.is_none_or(|at| now < at))
                .count();
            if count >= MAX_TOKENS {
                return Err(ApiError::FailedPrecondition(format!(
                    "the cluster holds {count} tokens, the limit is {MAX_TOKENS}: revoke unused ones first"
                )));
            }
            Ok(Command::KvPut {
                key,
                value,
                expected_revision: Some(0),
            })
        },
        |result| match result {
            CommandResult::KvPut { .. } => Ok(created_reply(&token)),
            other => Err(write_error(other)),
        },
        |mut c, r| async move { c.create_acl_token(r).await },
    )
    .await
}

fn token_pb(r: &TokenRecord, now: u64) -> AclTokenPb {
    AclTokenPb {
        accessor: r.accessor.clone(),
        name: r.name.clone(),
        role: r.role.to_string(),
        created_unix_ms: r.created_unix_ms,
        expires_unix_ms: r.expires_unix_ms.unwrap_or(0),
        created_by: r.created_by.clone(),
        expired: r.expires_unix_ms.is_some_and(|at| now >= at),
        revoked: r.revoked,
    }
}

pub async fn list(
    ctx: &ApiContext,
    request: Request<ListAclTokensRequest>,
) -> Result<Response<ListAclTokensReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.list_acl_tokens(r).await },
        |_, applied| {
            let now = now_unix_ms();
            let kv = &applied.state.kv;
            let tokens = kv
                .get(BOOTSTRAP_KEY)
                .into_iter()
                .chain(
                    applied
                        .state
                        .kv_list(TOKENS_PREFIX, None, usize::MAX)
                        .map(|(_, e)| e),
                )
                .filter_map(|e| TokenRecord::decode(&e.value))
                .map(|r| token_pb(&r, now))
                .collect();
            Ok(ListAclTokensReply { tokens })
        },
    )
    .await
}

pub async fn revoke(
    ctx: &ApiContext,
    request: Request<RevokeAclTokenRequest>,
) -> Result<Response<RevokeAclTokenReply>, Status> {
    acl::validate_accessor(&request.get_ref().accessor)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    ctx.write(
        request,
        |req| {
            let applied = ctx.raft.view().read();
            // The bootstrap token is kept, marked revoked: bootstrap stays done.
            let bootstrap = applied.state.kv.get(BOOTSTRAP_KEY).and_then(|e| {
                TokenRecord::decode(&e.value)
                    .filter(|r| r.accessor == req.accessor)
                    .map(|r| (r, e.mod_revision))
            });
            Ok(match bootstrap {
                Some((mut record, revision)) => {
                    record.revoked = true;
                    Command::KvPut {
                        key: BOOTSTRAP_KEY.to_string(),
                        value: record.encode(),
                        expected_revision: Some(revision),
                    }
                }
                None => Command::KvDelete {
                    key: acl::token_key(&req.accessor),
                    expected_revision: None,
                },
            })
        },
        |result| match result {
            CommandResult::KvPut { .. } => Ok(RevokeAclTokenReply { existed: true }),
            CommandResult::KvDeleted { existed, .. } => Ok(RevokeAclTokenReply { existed }),
            other => Err(write_error(other)),
        },
        |mut c, r| async move { c.revoke_acl_token(r).await },
    )
    .await
}
