//! The XDP object, built by build.rs and embedded in the binary, and the names it declares.

/// The object's bytes (ELF).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LIMITER_BPF_OBJECT"));

/// The names of the object's maps that can be pinned: what the agent may pin under
/// `--pin-path`, and the only entries there (with `links/`) that limiter ever removes. (A bpffs
/// refuses names with a dot, such as the globals' `.rodata`.)
pub fn map_names() -> anyhow::Result<Vec<String>> {
    let object = aya_obj::Object::parse(BPF_OBJECT)
        .map_err(|err| anyhow::anyhow!("parsing the embedded XDP object: {err}"))?;
    Ok(object
        .maps
        .keys()
        .filter(|name| !name.contains('.'))
        .cloned()
        .collect())
}
