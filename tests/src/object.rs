//! The built XDP object, loaded into the kernel but attached nowhere, for driving the `limiter`
//! program with crafted packets through `BPF_PROG_TEST_RUN`. No namespace, no interface: each
//! [`XdpObject`] has maps of its own, pinned in a directory of its own that is removed on drop.

use crate::agent::{ensure_bpffs, TEST_BPFFS};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::HashMap;
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use limiter_common::bucket::Limit;
use limiter_common::http::{Answer, KeyHeaders};
use limiter_common::maps::{
    add_tallied, counter_index, drop_tally_slot, BucketKey, BucketState, Counter, DatapathConfig,
    DropTally, HttpConfig, PlanQuota, RuleEntry, ACTION_DENY, ANSWERS_MAP, BUCKETS_MAP,
    CONFIG_HAS_RULES_V4, CONFIG_HAS_RULES_V6, CONFIG_HTTP, CONFIG_MAP, COUNTERS_MAP,
    DROP_TALLIES_MAP, LIMITER_PROG, MAX_HTTP_PORTS, PERIOD_DAY, PERIOD_HOUR, PERIOD_MINUTE,
    PLAN_QUOTAS_MAP, QUOTAS_MAP, QUOTA_ANSWERS, QUOTA_TOPUPS_MAP, RULES_V4_MAP, RULES_V6_MAP,
    TICK_GLOBAL,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Entries of the bucket map in these objects.
const MAX_KEYS: u32 = 65_536;

/// The object built by `cargo build --release`: `$LIMITER_BPF_OBJECT_PATH`, else
/// `<workspace>/target/ebpf/bpfel-unknown-none/release/limiter`.
pub fn object_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LIMITER_BPF_OBJECT_PATH") {
        return PathBuf::from(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/limiter")
}

static NEXT_OBJECT: AtomicU32 = AtomicU32::new(0);

/// The `limiter` XDP program, loaded (not attached), with a configuration written.
pub struct XdpObject {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    _pin_dir: PinDir,
}

/// The directory the object's maps are pinned in; removed on drop.
struct PinDir(PathBuf);

impl XdpObject {
    /// Loads the object with `[limits] rate`/`burst`, `ipv4_prefix = 32`, `ipv6_prefix = 64`,
    /// no rules, not in dry run; the timer tick set as the agent sets it.
    pub fn load(rate: u64, burst: u64) -> XdpObject {
        XdpObject::load_with_tick(rate, burst, limiter_common::sys::tick_ns())
    }

    /// [`XdpObject::load`] telling the program the timer tick is `tick_ns` (0: the coarse-clock
    /// fast path off).
    pub fn load_with_tick(rate: u64, burst: u64, tick_ns: u64) -> XdpObject {
        let path = object_path();
        assert!(
            path.exists(),
            "{} does not exist: build it with cargo build --release (it builds the XDP program)",
            path.display()
        );
        let bpffs = Path::new(TEST_BPFFS);
        ensure_bpffs(bpffs);
        let pin_dir = bpffs.join(format!(
            "object-{}-{}",
            std::process::id(),
            NEXT_OBJECT.fetch_add(1, Ordering::Relaxed)
        ));
        // Left over by an earlier process with the same pid: its pins would be adopted.
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", pin_dir.display()));
        // Removed on drop from here on, also when a step below panics.
        let pin_dir = PinDir(pin_dir);

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir.0)
            .map_max_entries(BUCKETS_MAP, MAX_KEYS)
            .override_global(TICK_GLOBAL, &tick_ns, true)
            .load_file(&path)
            .unwrap_or_else(|e| panic!("loading {}: {e:#?}", path.display()));
        let counters = PerCpuArray::try_from(
            ebpf.take_map(COUNTERS_MAP)
                .unwrap_or_else(|| panic!("the object has no {COUNTERS_MAP} map")),
        )
        .expect("COUNTERS is a per-CPU array of u64");
        let mut object = XdpObject {
            ebpf,
            counters,
            _pin_dir: pin_dir,
        };
        {
            let program: &mut Xdp = object
                .ebpf
                .program_mut(LIMITER_PROG)
                .unwrap_or_else(|| panic!("the object has no {LIMITER_PROG} program"))
                .try_into()
                .expect("limiter is an XDP program");
            // The verifier's log is in the error: print all of it.
            if let Err(e) = program.load() {
                panic!("loading the {LIMITER_PROG} program (verifier): {e:#?}");
            }
        }
        let mut config: Array<_, DatapathConfig> = Array::try_from(
            object
                .ebpf
                .map_mut(CONFIG_MAP)
                .unwrap_or_else(|| panic!("the object has no {CONFIG_MAP} map")),
        )
        .expect("CONFIG is an array of DatapathConfig");
        config
            .set(
                0,
                DatapathConfig {
                    default_limit: Limit::new(rate, burst),
                    new_key_limit: Limit::new(1, 1),
                    ipv4_prefix: 32,
                    ipv6_prefix: 64,
                    flags: 0,
                    valid: 1,
                    http: limiter_common::maps::HttpConfig::OFF,
                },
                0,
            )
            .expect("writing the CONFIG map");
        object
    }

    /// Adds a `deny` rule for `addr/prefix_len` (IPv4 in the first 4 bytes of `addr` when
    /// `ipv4`), as the agent would write it.
    pub fn deny(&mut self, ipv4: bool, addr: [u8; 16], prefix_len: u32) {
        let entry = RuleEntry {
            id: 7,
            action: ACTION_DENY,
            flags: 0,
            prefix_len,
            limit: Limit::new(1, 1),
        };
        let flag = if ipv4 {
            let mut rules: LpmTrie<_, [u8; 4], RuleEntry> =
                LpmTrie::try_from(self.ebpf.map_mut(RULES_V4_MAP).expect("RULES_V4")).unwrap();
            let key = LpmKey::new(prefix_len, [addr[0], addr[1], addr[2], addr[3]]);
            rules.insert(&key, entry, 0).expect("writing RULES_V4");
            CONFIG_HAS_RULES_V4
        } else {
            let mut rules: LpmTrie<_, [u8; 16], RuleEntry> =
                LpmTrie::try_from(self.ebpf.map_mut(RULES_V6_MAP).expect("RULES_V6")).unwrap();
            rules
                .insert(&LpmKey::new(prefix_len, addr), entry, 0)
                .expect("writing RULES_V6");
            CONFIG_HAS_RULES_V6
        };
        let mut config: Array<_, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).expect("CONFIG")).unwrap();
        let mut value = config.get(&0, 0).expect("reading CONFIG");
        value.flags |= flag;
        config.set(0, value, 0).expect("writing CONFIG");
    }

    /// Sets `[http]`: requests to `ports` carry their key in `headers`; keys are limited to
    /// `rate`/`burst` and hashed with `secret`; the 429 is the `default` policy's.
    pub fn enable_http(
        &mut self,
        ports: &[u16],
        headers: &[&[u8]],
        rate: u64,
        burst: u64,
        secret: [u64; 2],
    ) {
        self.enable_http_with(ports, headers, (rate, burst), secret, false);
    }

    /// [`XdpObject::enable_http`], with `[http] keep_alive` as given.
    pub fn enable_http_with(
        &mut self,
        ports: &[u16],
        headers: &[&[u8]],
        (rate, burst): (u64, u64),
        secret: [u64; 2],
        keep_alive: bool,
    ) {
        let mut http = HttpConfig::OFF;
        http.key_headers = KeyHeaders::new(headers).expect("valid key headers");
        http.default_limit = Limit::new(rate, burst);
        http.secret = secret;
        assert!(ports.len() <= MAX_HTTP_PORTS);
        http.ports[..ports.len()].copy_from_slice(ports);
        http.port_count = ports.len() as u32;
        if keep_alive {
            http.flags |= limiter_common::maps::HTTP_KEEP_ALIVE;
        }
        let mut answers: Array<_, Answer> =
            Array::try_from(self.ebpf.map_mut(ANSWERS_MAP).expect("ANSWERS")).unwrap();
        answers
            .set(0, Answer::render("default", rate, burst, keep_alive), 0)
            .expect("writing ANSWERS");
        let mut config: Array<_, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).expect("CONFIG")).unwrap();
        let mut value = config.get(&0, 0).expect("reading CONFIG");
        value.flags |= CONFIG_HTTP;
        value.http = http;
        config.set(0, value, 0).expect("writing CONFIG");
    }

    /// Gives plan slot `plan` (0: `[http]`'s) a quota of `quota` requests per `period`
    /// (`PERIOD_*`), and the program the quota clock as the agent writes it: UTC as
    /// CLOCK_MONOTONIC plus `utc_offset_ns` (see [`utc_offset_ns`]), the month bounds of that
    /// moment.
    pub fn set_quota(&mut self, plan: u32, quota: u32, period: u32, utc_offset_ns: u64) {
        let mut quotas: Array<_, PlanQuota> =
            Array::try_from(self.ebpf.map_mut(PLAN_QUOTAS_MAP).expect("PLAN_QUOTAS")).unwrap();
        quotas
            .set(plan, PlanQuota { quota, period }, 0)
            .expect("writing PLAN_QUOTAS");
        let window = match period {
            PERIOD_MINUTE => 60,
            PERIOD_HOUR => 3600,
            PERIOD_DAY => 86_400,
            _ => 2_592_000,
        };
        let mut answers: Array<_, Answer> =
            Array::try_from(self.ebpf.map_mut(ANSWERS_MAP).expect("ANSWERS")).unwrap();
        answers
            .set(
                QUOTA_ANSWERS + plan,
                Answer::render_quota("default", u64::from(quota), window, false),
                0,
            )
            .expect("writing ANSWERS");
        let utc_secs = (read_clock(libc::CLOCK_MONOTONIC) + utc_offset_ns) / 1_000_000_000;
        let mut config: Array<_, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).expect("CONFIG")).unwrap();
        let mut value = config.get(&0, 0).expect("reading CONFIG");
        value.http.quota_clock = limiter_common::quota::month_clock(utc_secs, utc_offset_ns);
        if quota == 0 {
            value.http.quota_plans &= !(1 << plan);
        } else {
            value.http.quota_plans |= 1 << plan;
        }
        config.set(0, value, 0).expect("writing CONFIG");
    }

    /// The quota count of the API key of token hash `hash` (none before its first request).
    pub fn quota_usage(&self, hash: u64) -> Option<limiter_common::quota::Usage> {
        let counts: HashMap<_, u64, u64> =
            HashMap::try_from(self.ebpf.map(QUOTAS_MAP).expect("QUOTAS")).unwrap();
        let word = counts.get(&hash, 0).ok()?;
        Some(limiter_common::quota::Usage::from_word(word))
    }

    /// Moves the quota count of the API key of token hash `hash` in window `tag` by `delta`
    /// through the quota-adjust program, as the fleet's agent does: its answer (`ADJUST_*`).
    pub fn adjust_quota(&mut self, hash: u64, tag: u32, delta: i64) -> u32 {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(limiter_common::maps::QUOTA_ADJUST_PROG)
            .expect("the quota-adjust program")
            .try_into()
            .expect("an XDP program");
        if program.fd().is_err() {
            program.load().expect("loading the quota-adjust program");
        }
        let request = limiter_common::maps::QuotaAdjust {
            hash,
            delta,
            tag,
            _pad: 0,
        };
        program
            .test_run(TestRunOptions {
                data_in: Some(request.as_bytes()),
                ..TestRunOptions::new()
            })
            .expect("running the quota-adjust program")
            .return_value
    }

    /// Tops up the quota of the API key of token hash `hash` by `added` for the minute window
    /// `tag` (as `limiter quota KEY --add` does).
    pub fn set_top_up(&mut self, hash: u64, tag: u32, added: u32) {
        let mut top_ups: HashMap<_, u64, u64> =
            HashMap::try_from(self.ebpf.map_mut(QUOTA_TOPUPS_MAP).expect("QUOTA_TOPUPS")).unwrap();
        let word = limiter_common::quota::TopUp { tag, added }.word();
        top_ups.insert(hash, word, 0).expect("writing QUOTA_TOPUPS");
    }

    /// The bucket of `key`, if the program tracks it, with the drops the CPUs tallied for it
    /// (`DropTally`) added, as the agent shows it.
    pub fn bucket(&self, key: &BucketKey) -> Option<BucketState> {
        let mut state = self.raw_bucket(key)?;
        add_tallied(&mut state, key, &self.tallies(key));
        Some(state)
    }

    /// The bucket of `key` as the map holds it, without what the CPUs tallied.
    pub fn raw_bucket(&self, key: &BucketKey) -> Option<BucketState> {
        let buckets: HashMap<_, BucketKey, BucketState> =
            HashMap::try_from(self.ebpf.map(BUCKETS_MAP).expect("BUCKETS")).unwrap();
        buckets.get(key, 0).ok()
    }

    /// The drop tally slot of `key`, every CPU's (whatever key each holds).
    pub fn tallies(&self, key: &BucketKey) -> Vec<DropTally> {
        let tallies: PerCpuArray<_, DropTally> =
            PerCpuArray::try_from(self.ebpf.map(DROP_TALLIES_MAP).expect("DROP_TALLIES")).unwrap();
        let slot = tallies
            .get(&drop_tally_slot(key), 0)
            .expect("reading DROP_TALLIES");
        slot.iter().copied().collect()
    }

    /// Runs the program once on `packet`; its verdict and the frame as the program left it.
    pub fn run_out(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| {
                panic!("test_run of a {}-byte packet failed: {e:#?}", packet.len())
            });
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the egress program (`limiter_egress`, TC) once on `packet`: its verdict and the
    /// frame as it left it.
    pub fn run_egress(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        use aya::programs::SchedClassifier;
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(limiter_common::maps::EGRESS_PROG)
            .expect("the egress program")
            .try_into()
            .expect("a classifier");
        if program.fd().is_err() {
            program.load().expect("loading the egress program");
        }
        let mut out = vec![0u8; 4096];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("test_run of the egress program failed: {e:#?}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(LIMITER_PROG)
            .expect("loaded above")
            .try_into()
            .expect("limiter is an XDP program")
    }

    /// Runs the program once on `packet` (an Ethernet frame, at least 14 bytes).
    pub fn try_run(&self, packet: &[u8]) -> Result<u32, ProgramError> {
        self.program()
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ..TestRunOptions::new()
            })
            .map(|result| result.return_value)
    }

    /// Runs the program once on `packet` and returns its verdict; panics when the run fails.
    pub fn run(&self, packet: &[u8]) -> u32 {
        self.try_run(packet).unwrap_or_else(|e| {
            let head = &packet[..packet.len().min(128)];
            panic!(
                "test_run of a {}-byte packet failed: {e:#?}\nits first bytes: {head:02x?}",
                packet.len()
            )
        })
    }

    /// One global counter of the program, summed over the CPUs. The program's `IFACE_SLOT` is
    /// left at 0, so it counts into interface slot 0.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .get(&counter_index(0, counter), 0)
            .unwrap_or_else(|e| panic!("reading COUNTERS for {counter:?}: {e}"))
            .iter()
            .copied()
            .fold(0, u64::wrapping_add)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A clock's reading, ns.
fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut now) }, 0);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The minute the quota clock of [`XdpObject::set_quota`] with `utc_offset_ns` is in now (its
/// window tag: minutes since 1970).
pub fn quota_minute(utc_offset_ns: u64) -> u32 {
    let utc_secs = (read_clock(libc::CLOCK_MONOTONIC) + utc_offset_ns) / 1_000_000_000;
    limiter_common::quota::window(limiter_common::quota::Period::Minute, utc_secs).tag
}

/// CLOCK_REALTIME less CLOCK_MONOTONIC now, ns (as the agent tells the datapath).
pub fn utc_offset_ns() -> u64 {
    limiter_common::sys::utc_offset_ns()
}
