//! Fleet mode (`[fleet]`): several gateways holding one quota and one rate per API key through
//! one Redis, each still deciding every request in its own kernel.
//!
//! Every `sync_ms` the agent reports, for each API key its kernel counted in the window now,
//! what this host's requests added to the local count since the last sync, in one pipelined
//! round trip (a Lua script per key keeps each update atomic): Redis adds it to the key's fleet
//! count and answers the host's lease — what it may pass until its next report, out of what
//! neither the count nor the other hosts' leases hold. The agent moves its kernel's count to
//! `limit − lease` with the quota-adjust program, so the request path is the one without a
//! fleet. Rates are shared alike (`rates`): each host enforces its share of a key's rate. What
//! operators change goes through a stream (`events`). See docs/fleet.md.

pub mod events;
mod rates;

use super::config::fleet::FleetSection;
use super::datapath::Datapath;
use super::events::webhook::{Alert, FleetAlert};
use super::overrides::now_ms;
use super::state::AgentState;
use limiter_common::quota;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Redis keys are `limiter:{HASH}:…`: a key's state in one Cluster slot (the braces).
const PREFIX: &str = "limiter";
/// The format of what this build keeps in Redis; another in `limiter:meta` is refused.
const FORMAT: &str = "1";
/// A host counts as using a key while it reported requests of it this recently, and its lease
/// as held while it reported at all (or three of its syncs, if longer).
const ACTIVE: Duration = Duration::from_secs(5);
/// How long a connection (and the format check) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts to reconnect come at most this far apart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Adds this host's requests to a key's fleet count of a window and gives the host its lease:
/// what it may pass until its next report. What each host holds is kept beside its last report
/// and its last request (`:h:TAG`, host → "REPORT_MS USE_MS HELD": its lease, or what its
/// previous lease left if more — the host may pass that while the answer is on its way). What
/// other hosts hold (those that reported within ARGV[5] ms) comes out of what remains first,
/// so the count and what hosts hold never sum to more than the limit. Of the rest, a host takes a
/// lease sized to its demand — four times what it reported (its next few syncs at its rate) —
/// within an equal share among the hosts using the key, and at least an eighth of that share
/// (one request at least): a host without demand keeps enough for its next requests to count,
/// and leaves the rest to the hosts that use the key.
/// KEYS: the count, the hosts. ARGV: requests, host, now (ms), ttl (s), active (ms), limit.
/// Answers the lease.
const REPORT: &str = r"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local now = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
local used_at = 0
local held = 0
local others = 0
local users = 0
local hosts = redis.call('HGETALL', KEYS[2])
for i = 1, #hosts, 2 do
  local reported, sent, lease = string.match(hosts[i + 1], '^(%d+) (%d+) (%d+)$')
  if reported then
    if hosts[i] == ARGV[2] then
      used_at = tonumber(sent)
      held = tonumber(lease)
    elseif now - tonumber(reported) <= window then
      others = others + tonumber(lease)
      if now - tonumber(sent) <= window then users = users + 1 end
    end
  end
end
local own = tonumber(ARGV[1])
if own > 0 then used_at = now end
local remaining = math.max(tonumber(ARGV[6]) - used, 0)
local fair = math.ceil(remaining / (users + 1))
local demand = math.max(4 * own, math.ceil(fair / 8), 1)
local lease = math.min(fair, demand, math.max(remaining - others, 0))
-- Until its count is moved, the host may still pass what its previous lease left it: that stays
-- reserved (it fits: it was reserved before) until its next report.
held = math.max(lease, held - own)
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d %d %d', now, used_at, held))
redis.call('EXPIRE', KEYS[2], ARGV[4])
return lease
";

/// What `limiter fleet` and `status` show.
#[derive(Clone, Debug, Default)]
pub struct FleetStatus {
    pub redis: String,
    pub host: String,
    pub connected: bool,
    pub last_sync: Option<Instant>,
    /// How long the last sync took.
    pub lag: Duration,
    /// Why this host does not share (the Redis holds data of another format), if so.
    pub refused: Option<String>,
    /// The hosts seen: when they last synced (ms since the epoch), the keys they reported
    /// then, the requests they reported since their agent started.
    pub hosts: Vec<(String, u64, u64, u64)>,
}

impl FleetStatus {
    /// As the API shows it.
    pub fn info(&self) -> crate::api::FleetInfo {
        let now_ms = now_ms();
        crate::api::FleetInfo {
            redis: self.redis.clone(),
            host: self.host.clone(),
            connected: self.connected,
            refused: self.refused.clone(),
            lag_ms: self.last_sync.map(|_| self.lag.as_millis() as u64),
            hosts: self
                .hosts
                .iter()
                .map(|(host, at_ms, keys, requests)| crate::api::FleetHost {
                    host: host.clone(),
                    last_sync_ms_ago: now_ms.saturating_sub(*at_ms),
                    keys: *keys,
                    requests: *requests,
                })
                .collect(),
        }
    }
}

/// One key's lease as this host last set it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    tag: u32,
    /// The local count right after the agent moved it: what the kernel counts beyond it is
    /// this host's own.
    baseline: u32,
    /// This host's requests below the baseline not reported yet (the count was moved while
    /// Redis was unreachable).
    pending: u32,
}

/// What the sync task keeps between syncs.
struct Local {
    leases: HashMap<u64, Lease>,
    activity: rates::RateActivity,
    /// How many hosts synced lately, as of the last sync that reached Redis: while Redis is
    /// unreachable, a key new to this host gets that share of its limit.
    hosts_last_seen: u32,
}

/// Keeps a sync task running as `[fleet]` says: started with the agent when the section is
/// there, and started anew, stopped or started by a reload that changes it.
pub async fn supervise(state: Arc<AgentState>) {
    let mut config = state.watch_config();
    let mut running: Option<(FleetSection, tokio::task::JoinHandle<()>)> = None;
    loop {
        let wanted = config.borrow_and_update().fleet.clone();
        if running.as_ref().map(|(s, _)| s) != wanted.as_ref() {
            if let Some((old, task)) = running.take() {
                task.abort();
                let _ = task.await;
                info!(redis = %old.shown_url(), "fleet: stopped (the configuration changed)");
            }
            *state.fleet.lock().unwrap_or_else(|p| p.into_inner()) = None;
            // Every key back to its whole rate; a new task shares them again.
            let datapath_state = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || {
                let datapath = datapath_state.datapath();
                rates::apply_shares(&datapath, &HashMap::new())
            })
            .await;
            if let Some(section) = wanted {
                let status = Arc::new(Mutex::new(FleetStatus {
                    redis: section.shown_url(),
                    host: section.host_name(),
                    ..FleetStatus::default()
                }));
                *state.fleet.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&status));
                let task = tokio::spawn(run(section.clone(), Arc::clone(&state), status));
                running = Some((section, task));
            }
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}

async fn run(section: FleetSection, state: Arc<AgentState>, status: Arc<Mutex<FleetStatus>>) {
    let host = section.host_name();
    let shown = section.shown_url();
    let client = match redis::Client::open(section.redis.as_str()) {
        Ok(client) => client,
        Err(err) => {
            warn!(redis = %shown, "fleet: {err}: this host counts alone");
            return;
        }
    };
    let who = Who {
        state: Arc::clone(&state),
        shown: shown.clone(),
        host: host.clone(),
    };
    let every = Duration::from_millis(section.sync_ms as u64);
    let rate_active = rates::active_window(every);
    // A host's lease holds while it reported within this: several of its syncs.
    let lease_window = ACTIVE.max(every * 3);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<redis::aio::ConnectionManager> = None;
    let local = Arc::new(Mutex::new(Local {
        leases: HashMap::new(),
        activity: rates::RateActivity::default(),
        hosts_last_seen: 1,
    }));
    let mut down_said = false;
    let mut connecting = None;
    let mut next_attempt = Instant::now();
    let mut backoff = every;
    let mut syncs: u64 = 0;
    let mut reader = events::Reader::default();
    // Requests of quota keys this host reported since the agent started.
    let mut reported: u64 = 0;
    let idle_every = (1000 / section.sync_ms.max(1) as u64).max(1);
    let quota_script = redis::Script::new(REPORT);
    let rate_script = redis::Script::new(rates::RATE_REPORT);
    loop {
        tick.tick().await;
        if conn.is_none() {
            // Connecting goes on beside the syncs: while Redis is unreachable the host keeps
            // giving new keys their offline share, every tick.
            if connecting.is_none() && Instant::now() >= next_attempt {
                let client = client.clone();
                connecting = Some(tokio::spawn(connect(client)));
            }
            if connecting.as_ref().is_some_and(|t| t.is_finished()) {
                let attempt = connecting.take().expect("checked").await;
                match attempt.unwrap_or_else(|err| Attempt::Failed(err.to_string())) {
                    Attempt::Ready(c) => {
                        if down_said {
                            info!(
                                redis = %shown,
                                "fleet: reconnected; what this host counted meanwhile is \
                                 reported now"
                            );
                            who.alert(FleetAlert::RECONNECTED, None);
                        } else {
                            info!(redis = %shown, host, "fleet: connected");
                        }
                        down_said = false;
                        backoff = every;
                        conn = Some(c);
                    }
                    Attempt::Refused(why) => {
                        warn!(redis = %shown, "fleet: refusing to share: {why}; this host counts alone");
                        status.lock().unwrap_or_else(|p| p.into_inner()).refused = Some(why);
                        return;
                    }
                    Attempt::Failed(why) => {
                        say_down(&mut down_said, &who, &why, &status);
                        // Tried again later and later, up to every few seconds.
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        let started = Instant::now();
        // What the operators changed: this host's changes out, the others' in — before the
        // counts are read, so that a quota reset's keys are reported from their new count.
        if let Some(c) = conn.as_mut() {
            match events::exchange(c, &mut reader, &state.fleet_outbox, &host).await {
                Ok((texts, own_resets)) => {
                    let (applying, shared) = (Arc::clone(&state), Arc::clone(&local));
                    // Applied as the API calls were (each takes the locks it needs).
                    let _ = tokio::task::spawn_blocking(move || {
                        let mut reset = own_resets;
                        for text in &texts {
                            reset.extend(events::apply(&applying, text));
                        }
                        // A quota reset gives the keys their whole quota back: their leases
                        // start anew.
                        let mut local = shared.lock().unwrap_or_else(|p| p.into_inner());
                        for hash in &reset {
                            local.leases.remove(hash);
                        }
                    })
                    .await;
                }
                Err(err) => {
                    say_down(&mut down_said, &who, &err.to_string(), &status);
                    conn = None;
                }
            }
        }
        syncs += 1;
        let idle_too = syncs.is_multiple_of(idle_every);
        // What the kernel counted since the last sync.
        let (reading, shared) = (Arc::clone(&state), Arc::clone(&local));
        let read = tokio::task::spawn_blocking(move || {
            let datapath = reading.datapath();
            let mut local = shared.lock().unwrap_or_else(|p| p.into_inner());
            let quotas = collect(&datapath, &local.leases, idle_too)?;
            let rates = local.activity.sample(&datapath, rate_active)?;
            anyhow::Ok((quotas, rates))
        })
        .await;
        let (reports, rate_reports) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(err)) => {
                warn!("fleet: reading the kernel's counts: {err:#}");
                continue;
            }
            Err(_) => continue,
        };
        let answers = match conn.as_mut() {
            None => None,
            Some(c) => {
                let now_ms = now_ms();
                let mut pipe = redis::pipe();
                pipe.load_script(&quota_script).ignore();
                pipe.load_script(&rate_script).ignore();
                for report in &reports {
                    let key = redis_key(report.hash);
                    pipe.invoke_script(
                        quota_script
                            .key(format!("{key}:q:{}", report.tag))
                            .key(format!("{key}:h:{}", report.tag))
                            .arg(report.own)
                            .arg(&host)
                            .arg(now_ms)
                            .arg(report.ttl_s)
                            .arg(lease_window.as_millis() as u64)
                            .arg(report.limit),
                    );
                }
                for report in &rate_reports {
                    pipe.invoke_script(
                        rate_script
                            .key(format!("{}:r", redis_key(report.hash)))
                            .arg(u8::from(report.sent))
                            .arg(&host)
                            .arg(now_ms)
                            .arg(rate_active.as_millis() as u64 * 2)
                            .arg(rate_active.as_millis() as u64),
                    );
                }
                pipe.hset(
                    format!("{PREFIX}:hosts"),
                    &host,
                    format!(
                        "{now_ms} {} {}",
                        reports.len().max(rate_reports.len()),
                        reported + reports.iter().map(|r| r.own).sum::<u64>()
                    ),
                )
                .ignore();
                pipe.hgetall(format!("{PREFIX}:hosts"));
                // A Redis that stopped answering (a partition) is down too: its count may then
                // hold a report the host sends again (the fleet counts too many, never too
                // few).
                let answer = tokio::time::timeout(
                    (every * 4).max(CONNECT_TIMEOUT),
                    pipe.query_async::<Vec<redis::Value>>(c),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                });
                match answer {
                    Ok(answers) => Some(answers),
                    Err(err) => {
                        say_down(&mut down_said, &who, &err.to_string(), &status);
                        conn = None;
                        None
                    }
                }
            }
        };
        let Some(answers) = answers else {
            // Redis unreachable: keys new to this host get their share as of the hosts last
            // seen; what it counts stays to be reported.
            let (writing, shared) = (Arc::clone(&state), Arc::clone(&local));
            let _ = tokio::task::spawn_blocking(move || {
                let datapath = writing.datapath();
                let mut local = shared.lock().unwrap_or_else(|p| p.into_inner());
                offline(&datapath, &mut local, &reports, &rate_reports);
            })
            .await;
            continue;
        };
        let (quota_answers, rest) = answers.split_at(reports.len().min(answers.len()));
        let (rate_answers, hosts) = rest.split_at(rate_reports.len().min(rest.len()));
        let leases: Vec<u64> = quota_answers
            .iter()
            .map(|v| redis::from_redis_value::<u64>(v.clone()))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let sharing: HashMap<u64, u32> = rate_reports
            .iter()
            .zip(rate_answers)
            .filter_map(|(report, v)| {
                let active = redis::from_redis_value::<u64>(v.clone()).ok()?;
                Some((report.hash, rates::hosts_sharing(active, report.sent)))
            })
            .collect();
        let hosts = hosts
            .first()
            .and_then(|v| redis::from_redis_value::<HashMap<String, String>>(v.clone()).ok())
            .unwrap_or_default();
        reported += reports.iter().map(|r| r.own).sum::<u64>();
        let mut shown_hosts: Vec<(String, u64, u64, u64)> = hosts
            .into_iter()
            .map(|(name, value)| {
                let mut parts = value.split(' ').map(|p| p.parse().unwrap_or(0));
                let mut next = || parts.next().unwrap_or(0);
                (name, next(), next(), next())
            })
            .collect();
        shown_hosts.sort();
        let recent = (every * 3).max(Duration::from_secs(10)).as_millis() as u64;
        let now = now_ms();
        let seen = shown_hosts
            .iter()
            .filter(|(_, at, _, _)| now.saturating_sub(*at) <= recent)
            .count()
            .max(1) as u32;
        let (writing, shared) = (Arc::clone(&state), Arc::clone(&local));
        let _ = tokio::task::spawn_blocking(move || {
            let datapath = writing.datapath();
            let mut local = shared.lock().unwrap_or_else(|p| p.into_inner());
            local.hosts_last_seen = seen;
            for (report, &lease) in reports.iter().zip(&leases) {
                apply(&datapath, &mut local.leases, report, lease);
            }
            if let Err(err) = rates::apply_shares(&datapath, &sharing) {
                warn!("fleet: writing a key's share of its rate: {err:#}");
            }
        })
        .await;
        let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
        status.connected = true;
        status.last_sync = Some(Instant::now());
        status.lag = started.elapsed();
        status.hosts = shown_hosts;
    }
}

/// A key's state in Redis is under `limiter:{HASH}`: the braces put all of it in one slot of a
/// Redis Cluster.
fn redis_key(hash: u64) -> String {
    redis_key_hex(&format!("{hash:016x}"))
}

fn redis_key_hex(hash: &str) -> String {
    format!("{PREFIX}:{{{hash}}}")
}

/// The window now of the quota of the API key of token hash `hash`, if it has one: what a
/// reset of its quota names for the fleet.
pub fn quota_window(datapath: &Datapath, hash: u64) -> Option<u32> {
    let (plan_quota, _) = datapath.api().quota_of(hash)?;
    Some(quota::window(plan_quota.period, now_ms() / 1000).tag)
}

/// How an attempt to connect ended.
enum Attempt {
    Ready(redis::aio::ConnectionManager),
    /// Another format under the prefix, or a Redis that refuses the agent's password: trying
    /// again would not change its mind.
    Refused(String),
    /// Unreachable for now.
    Failed(String),
}

async fn connect(client: redis::Client) -> Attempt {
    let manager = redis::aio::ConnectionManager::new(client);
    match tokio::time::timeout(CONNECT_TIMEOUT, manager).await {
        Err(_) => Attempt::Failed(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs())),
        Ok(Err(err)) if err.kind() == redis::ErrorKind::AuthenticationFailed => {
            Attempt::Refused(err.to_string())
        }
        Ok(Err(err)) => Attempt::Failed(err.to_string()),
        Ok(Ok(c)) => match check_format(&mut c.clone()).await {
            Ok(()) => Attempt::Ready(c),
            Err(why) => Attempt::Refused(why),
        },
    }
}

/// Checks (and on first use, writes) the format of what is kept in Redis.
async fn check_format(conn: &mut redis::aio::ConnectionManager) -> Result<(), String> {
    let key = format!("{PREFIX}:meta");
    let set: bool = redis::cmd("SET")
        .arg(&key)
        .arg(FORMAT)
        .arg("NX")
        .query_async::<Option<String>>(conn)
        .await
        .map(|r| r.is_some())
        .map_err(|err| err.to_string())?;
    if set {
        return Ok(());
    }
    let format: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|err| format!("{key} is not a string: {err}"))?;
    match format.as_deref() {
        Some(FORMAT) => Ok(()),
        other => Err(format!(
            "{key} says format {other:?}, this build keeps format {FORMAT:?} (another version \
             of limiter, or another program's data under the prefix)"
        )),
    }
}

/// Says once per outage that Redis is unreachable: in the log and, with `[alerts] webhook`, to
/// the webhook.
fn say_down(said: &mut bool, who: &Who, why: &str, status: &Mutex<FleetStatus>) {
    status.lock().unwrap_or_else(|p| p.into_inner()).connected = false;
    if !*said {
        warn!(
            redis = %who.shown,
            "fleet: Redis is unreachable ({why}): this host enforces the leases it holds and \
             reconnects; what it counts meanwhile is reported when Redis is back"
        );
        who.alert(FleetAlert::UNREACHABLE, Some(why.to_owned()));
        *said = true;
    }
}

/// This host and its Redis, as alerts name them.
struct Who {
    state: Arc<AgentState>,
    shown: String,
    host: String,
}

impl Who {
    fn alert(&self, kind: &'static str, reason: Option<String>) {
        let webhook = self.state.config().alerts.webhook.is_some();
        let Some(queue) = self.state.alerts.get().filter(|_| webhook) else {
            return;
        };
        let alert = Alert::Fleet(FleetAlert {
            kind,
            redis: self.shown.clone(),
            host: self.host.clone(),
            reason,
            at: crate::api::rfc3339(std::time::SystemTime::now()),
        });
        if queue.try_send(alert).is_err() {
            warn!("webhook queue full: a fleet alert dropped");
        }
    }
}

/// What this host reports for one key.
struct Report {
    hash: u64,
    tag: u32,
    /// This host's requests since the last sync.
    own: u64,
    /// The local count when it was read: the count is moved from there (requests counted
    /// since stay on top, and are this host's own at the next sync).
    local_used: u32,
    /// The key's limit this window as the kernel applies it (the plan's quota, its top-up).
    limit: u32,
    /// How long Redis keeps the window's count: to its end and a minute.
    ttl_s: u64,
}

/// The reports of the keys whose count is of the window now.
/// A key this host did not count requests of since the last sync is reported only when
/// `idle_too` (about once a second): its lease stays reserved in Redis meanwhile.
fn collect(
    datapath: &Datapath,
    leases: &HashMap<u64, Lease>,
    idle_too: bool,
) -> anyhow::Result<Vec<Report>> {
    let api = datapath.api();
    let utc_secs = now_ms() / 1000;
    let mut reports = Vec::new();
    for (hash, words) in datapath.quota_words()? {
        let Some((plan_quota, _)) = api.quota_of(hash) else {
            continue;
        };
        let window = quota::window(plan_quota.period, utc_secs);
        let usage = quota::Usage::from_word(words.usage);
        if usage.tag != window.tag {
            continue;
        }
        let lease = leases.get(&hash).filter(|l| l.tag == window.tag);
        let (baseline, pending) = lease.map_or((0, 0), |l| (l.baseline, l.pending));
        let own = u64::from(usage.used.saturating_sub(baseline)) + u64::from(pending);
        if own == 0 && lease.is_some() && !idle_too {
            continue;
        }
        reports.push(Report {
            hash,
            tag: window.tag,
            own,
            local_used: usage.used,
            limit: quota::limit_with_top_up(
                plan_quota.limit,
                words.top_up,
                words.usage,
                window.tag,
            ),
            ttl_s: window.end.saturating_sub(utc_secs) + 60,
        });
    }
    Ok(reports)
}

/// Moves the kernel's count of a key so that it passes `lease` more requests in the window.
/// The report is in Redis's count by now: what the kernel counts from here on is this host's
/// own, whether the count could be moved or not (requests counted since the report was read
/// stay on top, and come out of the new lease).
fn apply(datapath: &Datapath, leases: &mut HashMap<u64, Lease>, report: &Report, lease: u64) {
    let target = u64::from(report.limit).saturating_sub(lease);
    let delta = target as i64 - i64::from(report.local_used);
    let moved = match delta {
        0 => Ok(true),
        _ => datapath.adjust_quota(report.hash, report.tag, delta),
    };
    let baseline = match moved {
        Ok(true) => target as u32,
        // Its count is of a later window already: the next sync reports that one.
        Ok(false) => report.local_used,
        Err(err) => {
            warn!("fleet: moving a key's count: {err:#}");
            report.local_used
        }
    };
    leases.insert(
        report.hash,
        Lease {
            tag: report.tag,
            baseline,
            pending: 0,
        },
    );
}

/// While Redis is unreachable: a key this host has no lease of in its window yet gets the
/// limit divided by the hosts last seen (its count moved up by `limit − share`),
/// and a key it starts sending gets that share of its rate. What the host counted stays to be
/// reported when Redis is back.
fn offline(
    datapath: &Datapath,
    local: &mut Local,
    reports: &[Report],
    rate_reports: &[rates::RateReport],
) {
    let hosts = local.hosts_last_seen.max(1);
    for report in reports {
        if local
            .leases
            .get(&report.hash)
            .is_some_and(|l| l.tag == report.tag)
        {
            continue;
        }
        // What the host counted of the window so far is all its own (it has no lease of it):
        // it comes out of its share.
        let share = u64::from(report.limit).div_ceil(u64::from(hosts));
        let delta = (u64::from(report.limit) - share) as i64;
        let baseline = match datapath.adjust_quota(report.hash, report.tag, delta) {
            Ok(true) => report.local_used + delta as u32,
            Ok(false) => continue,
            Err(err) => {
                warn!("fleet: moving a key's count: {err:#}");
                continue;
            }
        };
        local.leases.insert(
            report.hash,
            Lease {
                tag: report.tag,
                baseline,
                pending: report.own.min(u64::from(u32::MAX)) as u32,
            },
        );
    }
    if hosts > 1 {
        let mut shares = datapath.fleet_shares();
        for report in rate_reports.iter().filter(|r| r.sent) {
            shares.entry(report.hash).or_insert(hosts);
        }
        if let Err(err) = rates::apply_shares(datapath, &shares) {
            warn!("fleet: writing a key's share of its rate: {err:#}");
        }
    }
}
