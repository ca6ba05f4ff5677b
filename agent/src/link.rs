//! The agent's link to the controller group: finding the leader, and keeping this
//! machine's registration while heartbeats go on.
//!
//! - The leader is found by asking every controller at once (`LeaderHint`) and taking the
//!   answer with the highest term: a deposed leader that has not noticed yet answers with
//!   its old term. The agent asks again every [`LEADER_RECHECK`], and at once when a
//!   heartbeat fails (a leader whose quorum lease lapsed refuses heartbeats).
//! - A failed registration never stops heartbeats: a transient failure is retried at once
//!   with the next leader; a refusal (an inventory too large, a full cluster state) is
//!   logged as an error, counted (`steward_agent_registration_errors`), and retried with
//!   back-off up to [`MAX_REGISTRATION_BACKOFF`].

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::LeaderHintRequest;
use steward_runtime::transport::{self, ClientOptions};
use tonic::transport::Channel;
use tonic::Code;

/// Connect timeout to a controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one call to a controller.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the agent asks the controllers again who leads.
pub const LEADER_RECHECK: Duration = Duration::from_secs(5);
/// Longest pause between registration attempts the leader refused.
pub const MAX_REGISTRATION_BACKOFF: Duration = Duration::from_secs(300);

/// The controller the agent believes leads.
pub struct Leader {
    pub addr: String,
    pub term: u64,
    pub client: AgentControlClient<Channel>,
}

/// How the agent reaches the controllers: connect and call deadlines, and the local
/// address its connections come from.
pub fn controller_options(
    source_ip: Option<std::net::IpAddr>,
    tls: Option<&steward_runtime::tls::Tls>,
) -> ClientOptions {
    let options = ClientOptions::new(CONNECT_TIMEOUT)
        .tls(tls.cloned(), steward_runtime::tls::ServerKind::Controller);
    match source_ip {
        Some(ip) => options.source_ip(ip),
        None => options,
    }
}

async fn client(
    addr: &str,
    source_ip: Option<std::net::IpAddr>,
    tls: Option<&steward_runtime::tls::Tls>,
) -> Option<AgentControlClient<Channel>> {
    let options = controller_options(source_ip, tls).call_timeout(CALL_TIMEOUT);
    let ch = transport::connect(addr, &options).await.ok()?;
    Some(transport::agent_control_client(ch))
}

/// Asks every controller at once where the leader is; the hint with the highest term wins.
/// It does not wait for the slowest: it stops once a majority has answered and the
/// highest term any answer carries (a controller that knows no leader still reports its
/// term) has a named leader. A leader is elected by a majority, so a majority's answers
/// include the newest term; a controller that hangs (stopped, overloaded) costs nothing
/// while the others answer. Failed calls do not count towards the majority.
pub async fn find_leader(
    controllers: &[String],
    source_ip: Option<std::net::IpAddr>,
    tls: Option<&steward_runtime::tls::Tls>,
) -> Option<Leader> {
    let mut asks: FuturesUnordered<_> = controllers
        .iter()
        .map(|addr| async move {
            let mut c = client(addr, source_ip, tls).await?;
            let hint = tokio::time::timeout(CALL_TIMEOUT, c.leader_hint(LeaderHintRequest {}))
                .await
                .ok()?
                .ok()?
                .into_inner();
            let named =
                (!hint.leader_api_addr.is_empty()).then_some((hint.leader_api_addr, addr, c));
            Some((hint.term, named))
        })
        .collect();
    let majority = controllers.len() / 2 + 1;
    let mut answered = 0;
    let mut newest_term = 0;
    let mut best: Option<(u64, String, &String, AgentControlClient<Channel>)> = None;
    while let Some(answer) = asks.next().await {
        let Some((term, named)) = answer else {
            continue;
        };
        answered += 1;
        newest_term = newest_term.max(term);
        if let Some((leader_addr, addr, c)) = named {
            if best.as_ref().is_none_or(|b| term > b.0) {
                best = Some((term, leader_addr, addr, c));
            }
        }
        if answered >= majority && best.as_ref().is_some_and(|b| b.0 >= newest_term) {
            break;
        }
    }
    let (term, leader_addr, asked, asked_client) = best?;
    let client = if leader_addr == *asked {
        asked_client
    } else {
        client(&leader_addr, source_ip, tls).await?
    };
    Some(Leader {
        addr: leader_addr,
        term,
        client,
    })
}

/// Whether a refused registration is the leader's final word (retrying at once would get
/// the same answer), as opposed to a leader change or a timeout.
pub fn is_refusal(code: Code) -> bool {
    match code {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::Unimplemented => true,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss
        | Code::Unauthenticated => false,
    }
}

/// Whether this machine's registration is needed, and when to try again after a refusal.
#[derive(Debug)]
pub struct Registration {
    /// The leader does not hold this registration (new node, changed inventory or labels).
    pub needed: bool,
    refusals: u32,
    next_attempt: Option<Instant>,
    /// The leader's last refusal, until a registration succeeds.
    pub refused: Option<String>,
}

impl Registration {
    /// A registration the leader may or may not hold: heartbeats will tell.
    pub fn unknown() -> Self {
        Registration {
            needed: false,
            refusals: 0,
            next_attempt: None,
            refused: None,
        }
    }

    /// Whether to try registering now.
    pub fn due(&self, now: Instant) -> bool {
        self.needed && self.next_attempt.is_none_or(|t| now >= t)
    }

    pub fn succeeded(&mut self) {
        *self = Registration::unknown();
    }

    /// The leader refused; the pause before the next attempt.
    pub fn refused(&mut self, now: Instant, why: String) -> Duration {
        self.refusals += 1;
        let pause = Duration::from_secs(1u64 << self.refusals.min(9).saturating_sub(1))
            .min(MAX_REGISTRATION_BACKOFF);
        self.next_attempt = Some(now + pause);
        self.refused = Some(why);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_and_success_resets() {
        let t0 = Instant::now();
        let mut r = Registration::unknown();
        assert!(!r.due(t0), "heartbeats decide whether it is needed");
        r.needed = true;
        assert!(r.due(t0));
        assert_eq!(r.refused(t0, "too large".into()), Duration::from_secs(1));
        assert!(!r.due(t0));
        assert!(r.due(t0 + Duration::from_secs(1)));
        for _ in 0..20 {
            r.refused(t0, "too large".into());
        }
        assert_eq!(
            r.refused(t0, "too large".into()),
            Duration::from_secs(256).min(MAX_REGISTRATION_BACKOFF)
        );
        r.succeeded();
        assert!(!r.needed && r.refused.is_none());
        assert!(is_refusal(Code::InvalidArgument) && !is_refusal(Code::Unavailable));
    }

    #[tokio::test]
    async fn no_controller_answers_no_leader() {
        assert!(find_leader(&["127.0.0.1:1".to_string()], None, None)
            .await
            .is_none());
    }
}
