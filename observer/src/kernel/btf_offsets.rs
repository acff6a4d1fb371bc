//! Offsets of the kernel struct members the kernel programs read, from the running kernel's
//! BTF. (aya's Rust programs have no CO-RE relocations; these offsets play that part.)

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use observer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of a member reached by `path` from `struct_name`, looking through anonymous
/// structs and unions and through typedefs.
pub fn member_offset(btf: &Btf, struct_name: &str, path: &[&str]) -> Result<u32> {
    let root = btf
        .resolve_types_by_name(struct_name)
        .with_context(|| format!("struct {struct_name} not in BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| anyhow!("struct {struct_name} not in BTF"))?;
    let mut current = root;
    let mut bits = 0u32;
    for (i, name) in path.iter().enumerate() {
        let (offset, ty) = find_member(btf, &current, name)?
            .ok_or_else(|| anyhow!("{struct_name}.{} not in BTF", path[..=i].join(".")))?;
        bits += offset;
        current = ty;
    }
    if !bits.is_multiple_of(8) {
        bail!("{struct_name}.{} is a bitfield", path.join("."));
    }
    Ok(bits / 8)
}

/// Skip typedefs and qualifiers.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t)?,
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

/// (bit offset, stripped type) of member `name` of a struct or union, searching anonymous
/// members too.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        other => bail!("looking for {name} in a {}", other.name()),
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = strip(btf, btf.resolve_chained_type(m)?)?;
        if mname == name {
            if m.bitfield_size().is_some_and(|s| s != 0) {
                bail!("{name} is a bitfield");
            }
            return Ok(Some((m.bit_offset(), mty)));
        }
        if mname.is_empty()
            && matches!(mty, Type::Struct(_) | Type::Union(_))
            && let Some((inner, t)) = find_member(btf, &mty, name)?
        {
            return Ok(Some((m.bit_offset() + inner, t)));
        }
    }
    Ok(None)
}

/// Compute every offset the kernel programs need.
pub fn compute(btf: &Btf) -> Result<KernelOffsets> {
    let o = |s: &str, p: &[&str]| member_offset(btf, s, p);
    Ok(KernelOffsets {
        valid: 1,
        sock_net: o("sock", &["__sk_common", "skc_net", "net"])?,
        net_inum: o("net", &["ns", "inum"])?,
        sock_err: o("sock", &["sk_err"])?,
        sock_protocol: o("sock", &["sk_protocol"])?,
        sock_type: o("sock", &["sk_type"])?,
        sock_family: o("sock", &["__sk_common", "skc_family"])?,
        sock_daddr: o("sock", &["__sk_common", "skc_daddr"])?,
        inet_saddr: o("inet_sock", &["inet_saddr"])?,
        sock_dport: o("sock", &["__sk_common", "skc_dport"])?,
        inet_sport: o("inet_sock", &["inet_sport"])?,
        sock_num: o("sock", &["__sk_common", "skc_num"])?,
        sock_cookie: o("sock", &["__sk_common", "skc_cookie"])?,
        sock_v6_daddr: o("sock", &["__sk_common", "skc_v6_daddr"])?,
        sock_v6_saddr: o("sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
        task_group_leader: o("task_struct", &["group_leader"])?,
        task_start_boottime: o("task_struct", &["start_boottime"])?,
        task_comm: o("task_struct", &["comm"])?,
        sock_lock_owned: o("sock", &["sk_lock", "owned"])?,
        tcp_write_seq: o("tcp_sock", &["write_seq"])?,
        tcp_copied_seq: o("tcp_sock", &["copied_seq"])?,
    })
}

/// Offsets from the kernel's BTF file.
pub fn from_file(path: &Path) -> Result<KernelOffsets> {
    let btf = Btf::from_file(path).with_context(|| format!("reading {}", path.display()))?;
    compute(&btf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the running kernel's BTF (every machine this project supports has it).
    #[test]
    fn resolves_every_offset_from_the_running_kernel() {
        let off = from_file(Path::new(VMLINUX_BTF)).expect("offsets from vmlinux BTF");
        assert_eq!(off.valid, 1);
        // skc_net lies in struct sock_common (136 bytes), after the 16 bytes of addresses,
        // hash and ports.
        assert!(off.sock_net > 16 && off.sock_net < 136, "{}", off.sock_net);
        assert!(off.sock_type == off.sock_protocol + 2, "sk_protocol then sk_type, both u16");
        // struct inet_sock starts with struct sock: its own fields come after.
        assert!(off.inet_sport > off.sock_net && off.inet_saddr > off.sock_net);
        // socket_lock_t: a spinlock, then `owned`.
        assert!(off.sock_lock_owned > off.sock_net, "{}", off.sock_lock_owned);
        assert_eq!(off.sock_family, 16, "sock_common: 8 bytes of addresses, 4 of hash, 4 of ports, then the family");
        // The same offset as a path through sock_common directly.
        assert_eq!(
            member_offset(&Btf::from_file(VMLINUX_BTF).unwrap(), "sock_common", &["skc_net"]).unwrap(),
            off.sock_net
        );
    }

    #[test]
    fn unknown_members_are_errors_naming_the_path() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let e = member_offset(&btf, "sock", &["__sk_common", "no_such_member"]).unwrap_err();
        assert!(e.to_string().contains("sock.__sk_common.no_such_member"), "{e}");
        assert!(member_offset(&btf, "no_such_struct_xyz", &["a"]).is_err());
    }
}
