//! Where requests go: the routing cache (topic -> leader, catalog leader, cluster members) and
//! [`RoutedCall`], the loop that follows "not leader" answers to the node that leads.
//!
//! The rule that keeps this safe: a request is resent only when it provably was not acted on —
//! the node answered `NotLeader` (it appended nothing), or the request never left the client
//! (no connection to the node, or the connection was found dead before the request was
//! written). A request whose connection broke after it was sent is never resent.

use crate::client::Inner;
use crate::session::{Answer, NotSent, OnAnswer, PendingReply, Session};
use crate::{ClientError, LeaderRetryPolicy};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_proto::{ClusterInfo, ErrorCode, ErrorReply, ProducerId, PutResult, Reply, Request};

/// Who must answer a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The leader of this topic's Raft group (PUTs). Shared: a producer clones it per PUT.
    Topic(Arc<str>),
    /// The leader of the metadata group: topic and cluster administration.
    Catalog,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(topic) => write!(f, "topic {topic:?}"),
            Self::Catalog => f.write_str("the catalog"),
        }
    }
}

/// What the client believes about the cluster: learned from leader hints, successful replies
/// and `Cluster` answers. Only ever a hint: a wrong entry costs one redirection.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    leaders: HashMap<String, SocketAddr>,
    catalog: Option<SocketAddr>,
    /// Members from the last `Cluster` answer.
    nodes: Vec<SocketAddr>,
}

impl RouteTable {
    /// The node believed to lead `target`.
    pub(crate) fn route(&self, target: &Target) -> Option<SocketAddr> {
        match target {
            Target::Topic(topic) => self.leaders.get(&**topic).copied(),
            Target::Catalog => self.catalog,
        }
    }

    pub(crate) fn set(&mut self, target: &Target, addr: SocketAddr) {
        match target {
            Target::Topic(topic) => {
                // Looked up first: the common case (a PUT's leader confirmed) allocates nothing.
                match self.leaders.get_mut(&**topic) {
                    Some(leader) => *leader = addr,
                    None => {
                        self.leaders.insert(topic.to_string(), addr);
                    }
                }
            }
            Target::Catalog => self.catalog = Some(addr),
        }
    }

    /// Forgets the route of `target` if it still points at `addr` (another task may have
    /// learned a newer one meanwhile).
    pub(crate) fn forget(&mut self, target: &Target, addr: SocketAddr) {
        match target {
            Target::Topic(topic) => {
                if self.leaders.get(&**topic) == Some(&addr) {
                    self.leaders.remove(&**topic);
                }
            }
            Target::Catalog => {
                if self.catalog == Some(addr) {
                    self.catalog = None;
                }
            }
        }
    }

    /// Forgets every route to `addr` (its node was lost).
    pub(crate) fn forget_node(&mut self, addr: SocketAddr) {
        self.leaders.retain(|_, leader| *leader != addr);
        if self.catalog == Some(addr) {
            self.catalog = None;
        }
    }

    pub(crate) fn forget_topic(&mut self, topic: &str) {
        self.leaders.remove(topic);
    }

    /// Takes in a `Cluster` answer whose node addresses resolved to `view.addrs`; `true` if it
    /// named a leader not known before.
    pub(crate) fn apply(&mut self, view: &ClusterView) -> bool {
        let info = &view.info;
        let catalog = info.metadata_leader.and_then(|id| view.addr_of(id));
        let mut learned = catalog.is_some() && catalog != self.catalog;
        self.catalog = catalog;
        for placement in &info.topics {
            match placement.leader.and_then(|id| view.addr_of(id)) {
                Some(addr) => {
                    let before = self.leaders.insert(placement.name.clone(), addr);
                    learned |= before != Some(addr);
                }
                None => {
                    self.leaders.remove(&placement.name);
                }
            }
        }
        self.nodes = info
            .nodes
            .iter()
            .filter_map(|n| view.addr_of(n.node_id))
            .collect();
        learned
    }

    /// The members last heard of, for falling back when no seed answers.
    pub(crate) fn known_nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }
}

/// A `Cluster` answer with the members' addresses resolved.
#[derive(Clone, Debug)]
pub(crate) struct ClusterView {
    pub(crate) info: ClusterInfo,
    addrs: HashMap<u64, SocketAddr>,
}

impl ClusterView {
    pub(crate) fn new(info: ClusterInfo, addrs: HashMap<u64, SocketAddr>) -> Self {
        Self { info, addrs }
    }

    pub(crate) fn addr_of(&self, node_id: u64) -> Option<SocketAddr> {
        self.addrs.get(&node_id).copied()
    }

    /// Whether the catalog this answer reflects has `topic`.
    pub(crate) fn has_topic(&self, topic: &str) -> bool {
        self.info.topics.iter().any(|t| t.name == topic)
    }

    /// The nodes hosting `topic`: its leader first (if known), then the other replicas. Empty
    /// if the topic is not in this answer or no replica's address is known.
    pub(crate) fn hosts_of(&self, topic: &str) -> Vec<SocketAddr> {
        let Some(placement) = self.info.topics.iter().find(|t| t.name == topic) else {
            return Vec::new();
        };
        let mut hosts: Vec<SocketAddr> = Vec::with_capacity(placement.replicas.len());
        let ids = placement
            .leader
            .into_iter()
            .chain(placement.replicas.iter().copied());
        for addr in ids.filter_map(|id| self.addr_of(id)) {
            if !hosts.contains(&addr) {
                hosts.push(addr);
            }
        }
        hosts
    }
}

/// Resolves a node's advertised client address: `ip:port` as nodes send it, or `host:port`
/// (looked up, bounded by `timeout`). An unspecified IP (a node listening on `0.0.0.0`) is
/// replaced by the IP of the node the address came from.
pub(crate) async fn resolve_node_addr(
    addr: &str,
    answered_by: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    let resolved = match addr.parse::<SocketAddr>() {
        Ok(resolved) => resolved,
        Err(_) => {
            let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host(addr)).await;
            match lookup {
                Ok(Ok(mut addrs)) => addrs.next()?,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "cannot resolve a node address");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%addr, "resolving a node address timed out");
                    return None;
                }
            }
        }
    };
    if resolved.ip().is_unspecified() {
        return Some(SocketAddr::new(answered_by.ip(), resolved.port()));
    }
    Some(resolved)
}

/// One request that must reach the leader of [`Target`], with its retry state. Bounded by the
/// request timeout (counted from [`RoutedCall::new`]) and by [`LeaderRetryPolicy`].
#[derive(Clone)]
pub(crate) struct RoutedCall {
    inner: Arc<Inner>,
    target: Target,
    started: Instant,
    deadline: Instant,
    policy: LeaderRetryPolicy,
    /// Resends so far.
    retries: u32,
    /// Resends that waited; the backoff grows with this.
    waits: u32,
    /// Redirections followed without waiting since the last wait.
    hops: u32,
    /// Nodes that answered "not leader" without naming one during this call (cut off, or
    /// electing): while the leader is unknown the request goes to another node if there is one.
    clueless: Vec<SocketAddr>,
}

impl fmt::Debug for RoutedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedCall")
            .field("target", &self.target)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// Whether a resend goes to a node that was named as the leader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// To the leader a node named: at once (up to [`LeaderRetryPolicy::IMMEDIATE_HOPS`]).
    Redirected,
    /// Anywhere else: after a backoff (ended early if a leader is learned meanwhile).
    Later,
    /// To the same leader: after a backoff (it was busy, or the producer's earlier PUTs had
    /// not arrived yet).
    Backoff,
}

/// Whether a batch's results call for resending it whole: some PUT was not taken for a reason
/// that passes (`NotLeader`, `Busy`, `OutOfOrderSequence`: nothing was appended for it) and none
/// failed for good. `Ok` gives the error to settle it as (a `NotLeader` first: it redirects);
/// `Err` the results, untouched, as the batch's final answer.
pub(crate) fn to_resend(results: Vec<PutResult>) -> Result<ErrorReply, Vec<PutResult>> {
    let errors = || {
        results.iter().filter_map(|r| match r {
            PutResult::Error(e) => Some(e),
            PutResult::Committed(_) => None,
        })
    };
    let passes = |code| {
        matches!(
            code,
            ErrorCode::NotLeader | ErrorCode::Busy | ErrorCode::OutOfOrderSequence
        )
    };
    if errors().any(|e| !passes(e.code)) {
        return Err(results);
    }
    // The first error, or the first `NotLeader` if there is one.
    match errors().min_by_key(|e| e.code != ErrorCode::NotLeader) {
        Some(why) => Ok(why.clone()),
        None => Err(results),
    }
}

/// Whether `request` may be sent again after its connection was lost with it in flight (it
/// may have been appended): only a producer's PUTs, which the node de-duplicates by producer
/// id and sequence number (a resend of one it committed is answered with the original offset).
fn resend_is_safe(request: &Request) -> bool {
    match request {
        Request::PutBatch(batch) => batch.producer_id != ProducerId(0),
        Request::Put(put) => put.producer_id != ProducerId(0),
        _ => false,
    }
}

impl RoutedCall {
    pub(crate) fn new(inner: Arc<Inner>, target: Target) -> Self {
        let started = Instant::now();
        Self {
            deadline: started + inner.config.request_timeout,
            policy: inner.config.leader_retry.clone(),
            inner,
            target,
            started,
            retries: 0,
            waits: 0,
            hops: 0,
            clueless: Vec::new(),
        }
    }

    /// Sends `request` and waits for the reply, following `NotLeader` answers.
    pub(crate) async fn run(mut self, request: Request) -> Result<Reply, ClientError> {
        let pending = self.dispatch(request).await?;
        self.settle(pending).await
    }

    /// Sends `request` to the node believed to lead the target, or to any node if none is
    /// known (preferring one that has not answered "not leader" without naming one yet). If
    /// that leader cannot be reached, or its connection turns out dead before the request is
    /// written, the request (which never left) goes to another node. The reply is not
    /// awaited: see [`RoutedCall::settle`].
    pub(crate) async fn dispatch(
        &mut self,
        mut request: Request,
    ) -> Result<PendingReply, ClientError> {
        loop {
            let (session, routed) = self.session().await?;
            let slot = self.inner.in_flight_slot(self.deadline).await?;
            match session.send(request, vec![slot], self.deadline, true).await {
                Ok(pending) => return Ok(pending),
                Err(not_sent) => request = self.not_sent(not_sent, &session, routed).await?,
            }
        }
    }

    /// Like [`RoutedCall::dispatch`], with the answer (kept request included) going to
    /// `on_answer` instead of a [`PendingReply`]: no task waits for it. `Ok` means `on_answer`
    /// will be called; `Err` gives it back uncalled, with the error that ended the call.
    pub(crate) async fn dispatch_then(
        &mut self,
        mut request: Request,
        mut on_answer: OnAnswer,
    ) -> Result<(), (ClientError, OnAnswer)> {
        loop {
            let (session, routed) = match self.session().await {
                Ok(found) => found,
                Err(e) => return Err((e, on_answer)),
            };
            let slot = match self.inner.in_flight_slot(self.deadline).await {
                Ok(slot) => slot,
                Err(e) => return Err((e, on_answer)),
            };
            let sent = session
                .send_then(request, vec![slot], self.deadline, true, on_answer)
                .await;
            match sent {
                Ok(()) => return Ok(()),
                Err((not_sent, back)) => {
                    on_answer = back;
                    request = match self.not_sent(not_sent, &session, routed).await {
                        Ok(request) => request,
                        Err(e) => return Err((e, on_answer)),
                    };
                }
            }
        }
    }

    /// The session to send to: the believed leader's (`routed` is its address), or any
    /// node's if no leader is known.
    async fn session(&mut self) -> Result<(Arc<Session>, Option<SocketAddr>), ClientError> {
        loop {
            let Some(addr) = self.inner.route(&self.target) else {
                let session = self.inner.session_avoiding(&self.clueless).await?;
                return Ok((session, None));
            };
            match self.inner.routed_session(addr).await {
                Ok(session) => return Ok((session, Some(addr))),
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(
                        target = %self.target, %addr, error = %e,
                        "cannot reach the node believed to lead; trying another node"
                    );
                    self.inner.forget_route(&self.target, addr);
                    // Nothing was sent: go to any node at once.
                    self.wait_before_resend(Resend::Redirected, e).await?;
                }
            }
        }
    }

    /// A request `session` refused (it never left): gives it back to be sent elsewhere after
    /// a backoff, or the error that ends the call.
    async fn not_sent(
        &mut self,
        not_sent: NotSent,
        session: &Session,
        routed: Option<SocketAddr>,
    ) -> Result<Request, ClientError> {
        let NotSent { err, request } = not_sent;
        if let ClientError::Timeout(_) = err {
            return Err(err);
        }
        tracing::debug!(
            target = %self.target, node = %session.remote(), error = %err,
            "connection found dead before sending; resending elsewhere"
        );
        if let Some(addr) = routed {
            self.inner.forget_route(&self.target, addr);
        }
        self.wait_before_resend(Resend::Later, err).await?;
        Ok(request)
    }

    /// Waits for the reply to a request sent by [`RoutedCall::dispatch`] and settles it: see
    /// [`RoutedCall::settle_answer`].
    pub(crate) async fn settle(&mut self, pending: PendingReply) -> Result<Reply, ClientError> {
        let answered_by = pending.remote();
        let answer = pending.wait_keeping().await;
        self.settle_answer(answer, answered_by).await
    }

    /// Settles the answer `answered_by` gave. A `NotLeader` answer (nothing was appended)
    /// resends the request: at once to the leader the node named, or, if it named none, after
    /// a backoff and a `Cluster` refresh. A `NotFound` answer to a PUT is final only once a
    /// `Cluster` refresh also lacks the topic (a node may not have applied a fresh topic yet).
    /// A PUT answered `Busy` or `OutOfOrderSequence` (nothing was appended: the node is
    /// overloaded or still applying its predecessors' entries, or an earlier PUT of the same
    /// producer has not arrived yet) is resent after a backoff; so is a batch some of whose
    /// PUTs were refused that way ([`to_resend`]). A producer's PUTs (not
    /// anonymous: the node de-duplicates them, see [`resend_is_safe`]) are also resent after
    /// the connection was lost with them in flight. Every other answer, and every other failure
    /// (a timeout: the deadline has passed), is returned as is.
    pub(crate) async fn settle_answer(
        &mut self,
        mut answer: Answer,
        mut answered_by: SocketAddr,
    ) -> Result<Reply, ClientError> {
        loop {
            let (result, request) = answer;
            let (reply, request) = match (result, request) {
                (Ok(reply), request) => (reply, request),
                (Err(e @ ClientError::ConnectionLost(_)), Some(request))
                    if resend_is_safe(&request) =>
                {
                    tracing::debug!(
                        target = %self.target, node = %answered_by, error = %e,
                        "connection lost with a producer's PUTs in flight; resending"
                    );
                    self.inner.forget_route(&self.target, answered_by);
                    self.wait_before_resend(Resend::Later, e).await?;
                    answer = self.resend(request, &mut answered_by).await?;
                    continue;
                }
                (Err(e), _) => return Err(e),
            };
            // A batch some of whose PUTs were not taken is settled as that refusal: resent.
            let reply = match reply {
                Reply::CommittedBatch(results) if request.is_some() => match to_resend(results) {
                    Ok(why) => Reply::Error(why),
                    Err(results) => Reply::CommittedBatch(results),
                },
                reply => reply,
            };
            let Reply::Error(err) = &reply else {
                // Only the leader acts on these requests: remember who did.
                self.inner.set_route(&self.target, answered_by);
                return Ok(reply);
            };
            let request = match (err.code, request) {
                (ErrorCode::NotLeader, Some(request)) => {
                    self.redirect(err, answered_by).await?;
                    request
                }
                (ErrorCode::NotFound, Some(request @ (Request::Put(_) | Request::PutBatch(_)))) => {
                    self.recheck_not_found(err, answered_by).await?;
                    request
                }
                (
                    ErrorCode::Busy | ErrorCode::OutOfOrderSequence,
                    Some(request @ (Request::Put(_) | Request::PutBatch(_))),
                ) => {
                    tracing::debug!(
                        target = %self.target, node = %answered_by, code = ?err.code,
                        message = %err.message, "PUT not taken; resending after a backoff"
                    );
                    self.wait_before_resend(Resend::Backoff, err.clone().into())
                        .await?;
                    request
                }
                _ => return Ok(reply),
            };
            answer = self.resend(request, &mut answered_by).await?;
        }
    }

    /// Dispatches `request` again and waits for its answer; `answered_by` becomes the node it
    /// went to.
    async fn resend(
        &mut self,
        request: Request,
        answered_by: &mut SocketAddr,
    ) -> Result<Answer, ClientError> {
        let pending = self.dispatch(request).await?;
        *answered_by = pending.remote();
        Ok(pending.wait_keeping().await)
    }

    /// The client this call goes through.
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Who must answer.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Follows a `NotLeader` answer from `answered_by`: routes to the named leader, or backs
    /// off, refreshes the routes and (if the leader is still unknown) tries another node next.
    /// `Err` when the policy says to stop.
    async fn redirect(
        &mut self,
        err: &ErrorReply,
        answered_by: SocketAddr,
    ) -> Result<(), ClientError> {
        let hint = match &err.leader {
            Some(hint) => {
                resolve_node_addr(&hint.addr, answered_by, self.inner.config.connect_timeout)
                    .await
                    // A node naming itself is no help: treat it as "leader unknown".
                    .filter(|addr| *addr != answered_by)
            }
            None => None,
        };
        let last = ClientError::NotLeader(format!("{answered_by}: {}", err.message));
        tracing::debug!(target = %self.target, %answered_by, leader = ?hint, "not leader");
        match hint {
            Some(leader) => {
                self.inner.set_route(&self.target, leader);
                self.wait_before_resend(Resend::Redirected, last).await
            }
            None => {
                self.inner.forget_route(&self.target, answered_by);
                if !self.clueless.contains(&answered_by) {
                    self.clueless.push(answered_by);
                }
                if self.inner.route(&self.target).is_some() {
                    // Another request learned the leader meanwhile.
                    return self.wait_before_resend(Resend::Redirected, last).await;
                }
                self.wait_before_resend(Resend::Later, last).await?;
                if self.inner.route(&self.target).is_none()
                    && let Err(e) = self.inner.refresh_cluster(self.deadline).await
                {
                    tracing::debug!(error = %e, "cluster refresh failed; resending anyway");
                }
                Ok(())
            }
        }
    }

    /// A PUT answered `NotFound`: `Ok` (resend) if the cluster lists the topic after all.
    async fn recheck_not_found(
        &mut self,
        err: &ErrorReply,
        answered_by: SocketAddr,
    ) -> Result<(), ClientError> {
        let Target::Topic(topic) = &self.target else {
            return Err(err.clone().into());
        };
        match self.inner.refresh_cluster(self.deadline).await {
            Ok(view) if view.has_topic(topic) => {
                tracing::debug!(%topic, %answered_by, "topic not found on a node that lags; resending");
                self.inner.forget_route(&self.target, answered_by);
                self.wait_before_resend(Resend::Later, err.clone().into())
                    .await
            }
            Ok(_) => Err(err.clone().into()),
            Err(e) => {
                tracing::debug!(%topic, error = %e, "cluster refresh failed; not found is final");
                Err(err.clone().into())
            }
        }
    }

    /// Counts a resend and waits as the policy says; `Err` (naming the target) once the policy
    /// is exhausted or the wait would pass the request deadline. `last` is why the previous
    /// attempt failed.
    async fn wait_before_resend(
        &mut self,
        resend: Resend,
        last: ClientError,
    ) -> Result<(), ClientError> {
        self.retries += 1;
        let delay = if resend == Resend::Redirected && self.hops < LeaderRetryPolicy::IMMEDIATE_HOPS
        {
            self.hops += 1;
            Duration::ZERO
        } else {
            self.hops = 0;
            self.waits += 1;
            self.policy.backoff(self.waits)
        };
        // The policy's budget is checked before waiting: an immediate resend (at most
        // IMMEDIATE_HOPS in a row) is always allowed within the request deadline, so a slow
        // failed connection to a dead leader still leaves a try on another node.
        let elapsed = self.started.elapsed();
        let out_of_budget = !delay.is_zero() && self.policy.exhausted(elapsed);
        if out_of_budget || Instant::now() + delay >= self.deadline {
            return Err(self.give_up(last, elapsed));
        }
        match resend {
            _ if delay.is_zero() => {}
            // The leader is unknown: learning it (from another request's answer, or the leader
            // check) ends the wait early.
            Resend::Later => {
                self.inner
                    .wait_for_leader(&self.target, Instant::now() + delay)
                    .await;
            }
            Resend::Redirected | Resend::Backoff => tokio::time::sleep(delay).await,
        }
        Ok(())
    }

    fn give_up(&self, last: ClientError, elapsed: Duration) -> ClientError {
        let tries = self.retries;
        match last {
            ClientError::NotLeader(why) => ClientError::NotLeader(format!(
                "no leader of {} answered after {tries} attempts in {elapsed:.1?} (last: {why})",
                self.target
            )),
            ClientError::Connect(why) => ClientError::Connect(format!(
                "no leader of {} could be reached after {tries} attempts in {elapsed:.1?} \
                 (last: {why})",
                self.target
            )),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::{NodeInfo, TopicPlacement};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn view() -> ClusterView {
        let info = ClusterInfo {
            node_id: 1,
            nodes: (1..=3)
                .map(|id| NodeInfo {
                    node_id: id,
                    addr: format!("127.0.0.1:700{id}"),
                })
                .collect(),
            metadata_leader: Some(2),
            topics: vec![
                TopicPlacement {
                    name: "led".into(),
                    group: 10,
                    replicas: vec![1, 2, 3],
                    leader: Some(3),
                },
                TopicPlacement {
                    name: "electing".into(),
                    group: 11,
                    replicas: vec![2, 1],
                    leader: None,
                },
            ],
        };
        let addrs = (1..=3).map(|id| (id, addr(7000 + id as u16))).collect();
        ClusterView::new(info, addrs)
    }

    #[test]
    fn a_cluster_answer_sets_leaders_and_the_catalog_and_clears_unknown_leaders() {
        let mut routes = RouteTable::default();
        let electing = Target::Topic("electing".into());
        routes.set(&electing, addr(9999));
        assert!(routes.apply(&view()), "leaders learned");
        assert!(!routes.apply(&view()), "nothing new the second time");
        assert_eq!(routes.route(&Target::Topic("led".into())), Some(addr(7003)));
        assert_eq!(routes.route(&Target::Catalog), Some(addr(7002)));
        assert_eq!(
            routes.route(&electing),
            None,
            "leader unknown: route cleared"
        );
        assert_eq!(routes.known_nodes(), [addr(7001), addr(7002), addr(7003)]);
    }

    #[test]
    fn forgetting_a_route_only_forgets_the_address_that_failed() {
        let mut routes = RouteTable::default();
        let t = Target::Topic("t".into());
        routes.set(&t, addr(1));
        routes.forget(&t, addr(2));
        assert_eq!(routes.route(&t), Some(addr(1)), "a newer route is kept");
        routes.forget(&t, addr(1));
        assert_eq!(routes.route(&t), None);
        routes.set(&Target::Catalog, addr(3));
        routes.forget(&Target::Catalog, addr(3));
        assert_eq!(routes.route(&Target::Catalog), None);
    }

    #[test]
    fn hosts_of_a_topic_list_the_leader_first_then_the_other_replicas() {
        let v = view();
        assert_eq!(v.hosts_of("led"), [addr(7003), addr(7001), addr(7002)]);
        assert_eq!(v.hosts_of("electing"), [addr(7002), addr(7001)]);
        assert!(v.hosts_of("missing").is_empty());
        assert!(v.has_topic("electing") && !v.has_topic("missing"));
    }

    #[tokio::test]
    async fn node_addresses_resolve_and_an_unspecified_ip_becomes_the_answering_nodes() {
        let t = Duration::from_secs(5);
        let from = SocketAddr::from(([10, 0, 0, 7], 7000));
        assert_eq!(
            resolve_node_addr("127.0.0.1:7001", from, t).await,
            Some(addr(7001))
        );
        assert_eq!(
            resolve_node_addr("0.0.0.0:7002", from, t).await,
            Some(SocketAddr::from(([10, 0, 0, 7], 7002)))
        );
        let localhost = resolve_node_addr("localhost:7003", from, t).await;
        assert!(localhost.is_some_and(|a| a.port() == 7003 && a.ip().is_loopback()));
        assert_eq!(resolve_node_addr("no port", from, t).await, None);
    }
}
