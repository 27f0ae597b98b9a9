//! The XDP object, built by build.rs and embedded in the binary, and the names it declares.

/// The object's bytes (ELF); empty in a build without the eBPF toolchain (see build.rs).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LIMITER_BPF_OBJECT"));

/// Refuses to go on with a build that embeds no XDP program.
pub fn require() -> anyhow::Result<&'static [u8]> {
    if cfg!(limiter_ebpf_stub) || BPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this limiter was built without its XDP program (the nightly toolchain or bpf-linker \
             was missing, or LIMITER_EBPF_STUB=1): build it with `cargo xtask build`, which \
             installs what is needed"
        );
    }
    Ok(BPF_OBJECT)
}

/// The names of the object's maps that can be pinned: what the agent may pin under
/// `--pin-path`, and the only entries there (with `links/`) that limiter ever removes. (A bpffs
/// refuses names with a dot, such as the globals' `.rodata`.)
pub fn map_names() -> anyhow::Result<Vec<String>> {
    let object = aya_obj::Object::parse(require()?)
        .map_err(|err| anyhow::anyhow!("parsing the embedded XDP object: {err}"))?;
    Ok(object
        .maps
        .keys()
        .filter(|name| !name.contains('.'))
        .cloned()
        .collect())
}

/// The names and layouts the agent relies on, checked in the object itself without root: a map
/// or program renamed in the XDP program, or a key or value whose size no longer matches the
/// type the agent reads it as, fails here instead of at load time on a gateway.
#[cfg(all(test, not(limiter_ebpf_stub)))]
mod tests {
    use super::BPF_OBJECT;
    use aya_obj::btf::BtfKind;
    use limiter_common::maps::*;
    use std::mem::size_of;

    /// An LPM trie key: the prefix length (u32), then the address.
    const fn lpm_key(addr: usize) -> usize {
        4 + addr
    }

    #[test]
    fn the_object_has_every_name_and_layout_the_agent_uses() {
        let object = aya_obj::Object::parse(BPF_OBJECT).expect("the embedded object parses");
        // (map, key size, value size) as the agent and limiter-common read them.
        let maps: &[(&str, usize, usize)] = &[
            (
                BUCKETS_MAP,
                size_of::<BucketKey>(),
                size_of::<BucketState>(),
            ),
            (CONFIG_MAP, 4, size_of::<DatapathConfig>()),
            (COUNTERS_MAP, 4, 8),
            (RULES_V4_MAP, lpm_key(4), size_of::<RuleEntry>()),
            (RULES_V6_MAP, lpm_key(16), size_of::<RuleEntry>()),
            (OVERRIDES_V4_MAP, lpm_key(4), size_of::<RuleEntry>()),
            (OVERRIDES_V6_MAP, lpm_key(16), size_of::<RuleEntry>()),
            (EVENT_BUDGET_MAP, 4, size_of::<EventBudget>()),
            (NEW_KEYS_MAP, 4, 8),
            (DROP_TALLIES_MAP, 4, size_of::<DropTally>()),
            (PLAN_QUOTAS_MAP, 4, size_of::<PlanQuota>()),
            (QUOTAS_MAP, 8, 8),
            (QUOTA_TOPUPS_MAP, 8, 8),
        ];
        let mut wrong = Vec::new();
        for &(name, key, value) in maps {
            match object.maps.get(name) {
                None => wrong.push(format!("no map {name}")),
                Some(map) => {
                    let got = (map.key_size() as usize, map.value_size() as usize);
                    if got != (key, value) {
                        wrong.push(format!(
                            "{name}: key and value of {got:?} bytes, the agent reads ({key}, {value})"
                        ));
                    }
                }
            }
        }
        match object.maps.get(EVENTS_MAP) {
            Some(map) if map.map_type() == RINGBUF_MAP_TYPE => {
                if map.max_entries() != EVENTS_BYTES {
                    wrong.push(format!("{EVENTS_MAP}: {} bytes", map.max_entries()));
                }
            }
            _ => wrong.push(format!("no ring buffer {EVENTS_MAP}")),
        }
        if object.maps.get(COUNTERS_MAP).map(|m| m.max_entries()) != Some(COUNTER_ENTRIES) {
            wrong.push(format!(
                "{COUNTERS_MAP} does not hold {COUNTER_ENTRIES} counters"
            ));
        }
        for program in [LIMITER_PROG, RESET_PROG] {
            if !object.programs.contains_key(program) {
                wrong.push(format!("no program {program}"));
            }
        }
        let btf = object.btf.as_ref().expect("the object carries BTF");
        for global in [IFACE_SLOT_GLOBAL, TICK_GLOBAL] {
            if btf.id_by_type_name_kind(global, BtfKind::Var).is_err() {
                wrong.push(format!("no global {global}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "the XDP object does not fit the agent:\n{}",
            wrong.join("\n")
        );
    }
}
