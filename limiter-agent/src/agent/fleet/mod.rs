//! Fleet mode (`[fleet]`): several gateways holding one quota per API key through one Redis,
//! each still deciding every request in its own kernel.
//!
//! Every `sync_ms` the agent reports, for each API key its kernel counted in the window now,
//! what this host's requests added to the local count since the last sync, in one pipelined
//! round trip (a Lua script per key keeps each update atomic): Redis adds it to the key's fleet
//! count and answers it, with how many hosts used the key lately. The agent then takes a lease —
//! its share of what remains — and moves its kernel's count to `limit − lease` with the
//! quota-adjust program, so the request path is the one without a fleet. See docs/fleet.md.

use super::config::fleet::FleetSection;
use super::datapath::Datapath;
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
/// A host counts as using a key while it reported requests of it this recently.
const ACTIVE: Duration = Duration::from_secs(5);

/// Adds this host's requests to a key's fleet count of a window and marks the host as using the
/// key; answers the fleet count and the hosts that used the key within ARGV[5] ms.
/// KEYS: the count, the hosts. ARGV: requests, host, now (ms), ttl (s), active (ms).
const REPORT: &str = r"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local hosts = redis.call('HGETALL', KEYS[2])
local active = 0
local me = 0
for i = 1, #hosts, 2 do
  if tonumber(ARGV[3]) - tonumber(hosts[i + 1]) <= tonumber(ARGV[5]) then
    active = active + 1
    if hosts[i] == ARGV[2] then me = 1 end
  end
end
return {used, active, me}
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
    /// The hosts seen, with when they last synced (ms since the epoch) and their keys.
    pub hosts: Vec<(String, u64, u64)>,
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
                .map(|(host, at_ms, keys)| crate::api::FleetHost {
                    host: host.clone(),
                    last_sync_ms_ago: now_ms.saturating_sub(*at_ms),
                    keys: *keys,
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
}

/// Starts the sync task; its status, shared.
pub fn spawn(section: FleetSection, state: Arc<AgentState>) -> Arc<Mutex<FleetStatus>> {
    let status = Arc::new(Mutex::new(FleetStatus {
        redis: section.shown_url(),
        host: section.host_name(),
        ..FleetStatus::default()
    }));
    tokio::spawn(run(section, state, Arc::clone(&status)));
    status
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
    let every = Duration::from_millis(section.sync_ms as u64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<redis::aio::ConnectionManager> = None;
    let mut leases: HashMap<u64, Lease> = HashMap::new();
    let mut down_said = false;
    let script = redis::Script::new(REPORT);
    loop {
        tick.tick().await;
        if conn.is_none() {
            match tokio::time::timeout(
                Duration::from_secs(2),
                redis::aio::ConnectionManager::new(client.clone()),
            )
            .await
            {
                Ok(Ok(c)) => match check_format(&mut c.clone()).await {
                    Ok(()) => {
                        if down_said {
                            info!(
                                redis = %shown,
                                "fleet: reconnected; what this host counted meanwhile is \
                                 reported now"
                            );
                        } else {
                            info!(redis = %shown, host, "fleet: connected");
                        }
                        down_said = false;
                        conn = Some(c);
                    }
                    Err(why) => {
                        warn!(redis = %shown, "fleet: refusing to share: {why}; this host counts alone");
                        status.lock().unwrap_or_else(|p| p.into_inner()).refused = Some(why);
                        return;
                    }
                },
                Ok(Err(err)) => {
                    say_down(&mut down_said, &shown, &err.to_string(), &status);
                    continue;
                }
                Err(_) => {
                    say_down(&mut down_said, &shown, "no answer in 2 s", &status);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        let state_now = Arc::clone(&state);
        let taken = std::mem::take(&mut leases);
        let (reports, kept) = match tokio::task::spawn_blocking(move || {
            let datapath = state_now.datapath();
            (collect(&datapath, &taken), taken)
        })
        .await
        {
            Ok((Ok(reports), kept)) => (reports, kept),
            Ok((Err(err), kept)) => {
                warn!("fleet: reading the quota counts: {err:#}");
                leases = kept;
                continue;
            }
            Err(_) => continue,
        };
        leases = kept;
        let now_ms = now_ms();
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        for report in &reports {
            let key = format!("{PREFIX}:{{{:016x}}}", report.hash);
            pipe.invoke_script(
                script
                    .key(format!("{key}:q:{}", report.tag))
                    .key(format!("{key}:h:{}", report.tag))
                    .arg(report.own)
                    .arg(&host)
                    .arg(now_ms)
                    .arg(report.ttl_s)
                    .arg(ACTIVE.as_millis() as u64),
            );
        }
        pipe.hset(
            format!("{PREFIX}:hosts"),
            &host,
            format!("{now_ms} {}", reports.len()),
        )
        .ignore();
        pipe.hgetall(format!("{PREFIX}:hosts"));
        let answer: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(c).await;
        let answers = match answer {
            Ok(answers) => answers,
            Err(err) => {
                say_down(&mut down_said, &shown, &err.to_string(), &status);
                conn = None;
                continue;
            }
        };
        let (fleet, hosts) = answers.split_at(reports.len());
        let fleet: Vec<(u64, u64, bool)> = fleet
            .iter()
            .map(|v| {
                redis::from_redis_value::<(u64, u64, u64)>(v.clone())
                    .map(|(u, a, m)| (u, a, m == 1))
            })
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let state_now = Arc::clone(&state);
        let taken = std::mem::take(&mut leases);
        leases = tokio::task::spawn_blocking(move || {
            let datapath = state_now.datapath();
            let mut leases = taken;
            for (report, &(used, active, me)) in reports.iter().zip(&fleet) {
                apply(
                    &datapath,
                    &mut leases,
                    report,
                    used,
                    active + u64::from(!me),
                );
            }
            leases
        })
        .await
        .unwrap_or_default();
        let hosts = hosts
            .first()
            .and_then(|v| redis::from_redis_value::<HashMap<String, String>>(v.clone()).ok())
            .unwrap_or_default();
        let mut shown_hosts: Vec<(String, u64, u64)> = hosts
            .into_iter()
            .map(|(name, value)| {
                let mut parts = value.split(' ').map(|p| p.parse().unwrap_or(0));
                (name, parts.next().unwrap_or(0), parts.next().unwrap_or(0))
            })
            .collect();
        shown_hosts.sort();
        let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
        status.connected = true;
        status.last_sync = Some(Instant::now());
        status.lag = started.elapsed();
        status.hosts = shown_hosts;
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

fn say_down(said: &mut bool, shown: &str, why: &str, status: &Mutex<FleetStatus>) {
    status.lock().unwrap_or_else(|p| p.into_inner()).connected = false;
    if !*said {
        warn!(
            redis = %shown,
            "fleet: Redis is unreachable ({why}): this host enforces the leases it holds and \
             reconnects; what it counts meanwhile is reported when Redis is back"
        );
        *said = true;
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
fn collect(datapath: &Datapath, leases: &HashMap<u64, Lease>) -> anyhow::Result<Vec<Report>> {
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
        let baseline = leases
            .get(&hash)
            .filter(|l| l.tag == window.tag)
            .map_or(0, |l| l.baseline);
        reports.push(Report {
            hash,
            tag: window.tag,
            own: u64::from(usage.used.saturating_sub(baseline)),
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

/// Takes this host's lease of a key — an equal share of what remains among the hosts using
/// it — and moves the kernel's count to say so.
fn apply(
    datapath: &Datapath,
    leases: &mut HashMap<u64, Lease>,
    report: &Report,
    used: u64,
    hosts: u64,
) {
    let remaining = u64::from(report.limit).saturating_sub(used);
    // Rounded up: a key is never held below its quota by the rounding; the fleet may pass up
    // to `hosts − 1` more than the quota at its very end.
    let lease = remaining.div_ceil(hosts.max(1));
    let target = u64::from(report.limit) - lease;
    let delta = target as i64 - i64::from(report.local_used);
    match datapath.adjust_quota(report.hash, report.tag, delta) {
        Ok(true) => {
            leases.insert(
                report.hash,
                Lease {
                    tag: report.tag,
                    baseline: target as u32,
                },
            );
        }
        Ok(false) => {}
        Err(err) => warn!("fleet: moving a key's count: {err:#}"),
    }
}
