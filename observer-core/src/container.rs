//! Which container and Kubernetes pod a process runs in, from the text of its `/proc/<pid>/cgroup`.
//!
//! Container runtimes name the cgroup of each container after its id, and the kubelet names
//! the cgroup of each pod after its UID, so the path of a process's cgroup says both:
//!
//! | runtime, cgroup driver | path (cgroup v2 `0::<path>`, or any v1 hierarchy line) |
//! | --- | --- |
//! | containerd, systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | containerd, cgroupfs | `/kubepods/burstable/pod<uid>/<id>` |
//! | CRI-O, systemd | `/kubepods.slice/.../kubepods-pod<uid>.slice/crio-<id>.scope` |
//! | CRI-O, cgroupfs | `/kubepods/besteffort/pod<uid>/crio-<id>` |
//! | Docker, systemd | `/system.slice/docker-<id>.scope` |
//! | Docker, cgroupfs | `/docker/<id>` |
//! | Podman | `/machine.slice/libpod-<id>.scope` |
//!
//! `<id>` is the 64-hex-digit container id (what `kubectl get pod -o yaml` shows after
//! `containerd://` or `cri-o://` in `containerID`). `<uid>` is the pod's UID; in systemd slice
//! names its dashes are written as underscores (`-` separates the levels of a slice name), and
//! they are turned back into dashes here. Guaranteed pods have no QoS level
//! (`kubepods-pod<uid>.slice`, `/kubepods/pod<uid>`); static pods have a 32-hex-digit UID
//! without dashes.
//!
//! Also handled:
//!
//! - paths relative to the reader's cgroup namespace (`0::/../../kubepods-besteffort-pod<uid>.slice/...`):
//!   on cgroup v2 the kubelet's containers, observer's included, get a private cgroup
//!   namespace, so a daemon in a pod sees other processes' cgroups relative to its own. A
//!   process in observer's own pod then shows no pod UID (the pod's slice is above observer's
//!   namespace root); one in observer's own container shows `0::/`, nothing at all;
//! - CRI-O's and Podman's monitor, conmon (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`):
//!   not in the container, so no container id, but in the pod's slice, so the pod's UID;
//! - nested runtimes (kind, Docker in Docker): the innermost container and pod win;
//! - cgroup v1 and hybrid layouts: every hierarchy line is read and the most informative one
//!   wins, the v2 line on a tie.
//!
//! Plain host processes (`0::/system.slice/sshd.service`, `0::/user.slice/...`) are in no
//! container and no pod.

/// The container and pod of a process (None: not in one, or not recognised).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Container {
    /// The container id, 64 lowercase hex digits.
    pub container_id: Option<String>,
    /// The Kubernetes pod UID, with dashes (`5f1a2b3c-...`), or 32 hex digits for static pods.
    pub pod_uid: Option<String>,
}

/// The container and pod named by the text of a `/proc/<pid>/cgroup` file.
pub fn parse(text: &str) -> Container {
    // "hierarchy-id:controllers:path"; the path itself may contain ':'.
    let mut paths: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let _controllers = parts.next()?;
            let path = parts.next()?;
            Some((id == "0", path))
        })
        .collect();
    // The cgroup v2 line first: on a tie it wins.
    paths.sort_by_key(|(v2, _)| !v2);
    let score = |c: &Container| 2 * c.container_id.is_some() as u8 + c.pod_uid.is_some() as u8;
    let mut best = Container::default();
    for (_, path) in paths {
        let c = parse_path(path);
        if score(&c) > score(&best) {
            best = c;
        }
    }
    best
}

/// The container and pod named by one cgroup path.
fn parse_path(path: &str) -> Container {
    let mut c = Container::default();
    let mut in_kubepods = false;
    for component in path.split('/') {
        if component.contains("kubepods") {
            in_kubepods = true;
        }
        if let Some(uid) = pod_uid(component, in_kubepods) {
            c.pod_uid = Some(uid);
            // A pod's containers are below it: forget an outer container (Docker in Docker).
            c.container_id = None;
        } else if let Some(id) = container_id(component) {
            c.container_id = Some(id.to_string());
        }
    }
    c
}

/// `kubepods-burstable-pod<uid_with_underscores>.slice` (systemd driver) or, below a
/// `kubepods` component, `pod<uid>` (cgroupfs driver).
fn pod_uid(component: &str, in_kubepods: bool) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(slice) if component.contains("kubepods") => slice.rsplit('-').next()?.strip_prefix("pod")?,
        Some(_) => return None,
        None if in_kubepods => component.strip_prefix("pod")?,
        None => return None,
    };
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (8-4-4-4-12 hex digits), or 32 hex digits (static pods: a hash of their manifest).
fn is_pod_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let hex = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_hexdigit());
    match groups.as_slice() {
        [one] => one.len() == 32 && hex(one),
        [a, b, c, d, e] => {
            [a.len(), b.len(), c.len(), d.len(), e.len()] == [8, 4, 4, 4, 12] && groups.iter().all(|g| hex(g))
        }
        _ => false,
    }
}

/// Prefixes of container scopes (systemd driver) and cgroups (cgroupfs driver), before the id.
const CONTAINER_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-", "libpod-", ""];

/// The container id a cgroup path component names, if any. conmon's scopes
/// (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) name none: conmon is outside the
/// container.
fn container_id(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    CONTAINER_PREFIXES.iter().find_map(|prefix| name.strip_prefix(prefix).filter(|id| is_container_id(id)))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2b4f63d9a8e1c7f05b3e9d2a6c8f1e4b7a0d3c6f9e2b5a8d1c4f7e0a3b6d9c2e";
    const UID: &str = "8e3c5f1a-7b2d-4c9e-a6f0-1d4b7e2c9a53";

    fn both(id: &str, uid: &str) -> Container {
        Container { container_id: Some(id.into()), pod_uid: Some(uid.into()) }
    }

    fn container_only(id: &str) -> Container {
        Container { container_id: Some(id.into()), pod_uid: None }
    }

    #[test]
    fn containerd_systemd_driver_cgroup_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&text), both(ID, UID));
        // Guaranteed QoS: no QoS level slice.
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
            "0d6e4b1f_23a8_4f7c_9e15_b82c6a0d7f31"
        );
        assert_eq!(parse(&text), both(ID, "0d6e4b1f-23a8-4f7c-9e15-b82c6a0d7f31"));
    }

    #[test]
    fn containerd_cgroupfs_driver_cgroup_v1() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}
11:hugetlb:/kubepods/besteffort/pod{UID}/{ID}
10:net_cls,net_prio:/kubepods/besteffort/pod{UID}/{ID}
9:cpuset:/kubepods/besteffort/pod{UID}/{ID}
8:memory:/kubepods/besteffort/pod{UID}/{ID}
7:devices:/kubepods/besteffort/pod{UID}/{ID}
6:freezer:/kubepods/besteffort/pod{UID}/{ID}
5:blkio:/kubepods/besteffort/pod{UID}/{ID}
4:perf_event:/kubepods/besteffort/pod{UID}/{ID}
3:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}
2:rdma:/
1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}
0::/
"
        );
        assert_eq!(parse(&text), both(ID, UID));
        // Guaranteed QoS.
        assert_eq!(parse(&format!("4:memory:/kubepods/pod{UID}/{ID}\n")), both(ID, UID));
    }

    #[test]
    fn containerd_systemd_driver_cgroup_v1() {
        let uid = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        let text = format!(
            "11:memory:{path}\n10:cpu,cpuacct:{path}\n4:pids:{path}\n1:name=systemd:{path}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(parse(&text), both(ID, UID));
    }

    #[test]
    fn crio_containers_and_conmon() {
        let uid = UID.replace('-', "_");
        let slice = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice");
        assert_eq!(parse(&format!("0::{slice}/crio-{ID}.scope\n")), both(ID, UID));
        // conmon, CRI-O's monitor: in the pod's slice, not in the container.
        assert_eq!(
            parse(&format!("0::{slice}/crio-conmon-{ID}.scope\n")),
            Container { container_id: None, pod_uid: Some(UID.into()) }
        );
        // cgroupfs driver, cgroup v1.
        let text = format!(
            "7:memory:/kubepods/burstable/pod{UID}/crio-{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/crio-{ID}\n"
        );
        assert_eq!(parse(&text), both(ID, UID));
    }

    #[test]
    fn docker_both_drivers() {
        assert_eq!(parse(&format!("0::/system.slice/docker-{ID}.scope\n")), container_only(ID));
        let text = format!(
            "13:misc:/\n12:pids:/docker/{ID}\n9:memory:/docker/{ID}\n3:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(parse(&text), container_only(ID));
        assert_eq!(parse(&format!("0::/docker/{ID}\n")), container_only(ID));
    }

    #[test]
    fn podman_and_its_conmon() {
        let user = "/user.slice/user-1000.slice/user@1000.service/user.slice";
        assert_eq!(parse(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")), container_only(ID));
        assert_eq!(parse(&format!("0::{user}/libpod-{ID}.scope\n")), container_only(ID));
        assert_eq!(parse(&format!("0::{user}/libpod-conmon-{ID}.scope\n")), Container::default());
    }

    #[test]
    fn host_processes_are_in_no_container() {
        for text in [
            "0::/\n",
            "0::/init.scope\n",
            "0::/system.slice/sshd.service\n",
            "0::/system.slice/containerd.service\n",
            "0::/system.slice/kubelet.service\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/kubepods.slice\n",
            "0::/kubepods.slice/kubepods-besteffort.slice\n",
            // v1, with a hierarchy named after a 32-hex-digit id that is no container id.
            "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/861788f3e4bd51de456bb5288c3da7ac\n1:cpu:/\n0::/\n",
            "",
            "garbage\n",
        ] {
            assert_eq!(parse(text), Container::default(), "{text:?}");
        }
    }

    #[test]
    fn paths_relative_to_a_cgroup_namespace() {
        // What a daemon in a burstable pod with a private cgroup namespace reads for another pod.
        let uid = UID.replace('-', "_");
        let text = format!(
            "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), both(ID, UID));
        // Same QoS class: only the pod's slice and the container are below the common ancestor.
        let text = format!("0::/../../kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parse(&text), both(ID, UID));
        // Another container of the daemon's own pod: the pod's slice is above the namespace root.
        assert_eq!(parse(&format!("0::/../cri-containerd-{ID}.scope\n")), container_only(ID));
        // A host process.
        assert_eq!(parse("0::/../../../../system.slice/kubelet.service\n"), Container::default());
    }

    #[test]
    fn static_pods_have_hex_uids() {
        let uid = "0c4d1e9e5c6d4e2b8d0e2f8a9b7c6d5e";
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), both(ID, uid));
        assert_eq!(parse(&format!("0::/kubepods/burstable/pod{uid}/{ID}\n")), both(ID, uid));
    }

    #[test]
    fn nested_runtimes_give_the_innermost_pod_and_container() {
        // kind: a node container, with its own kubelet cgroup root.
        let outer = "f".repeat(64);
        let uid = UID.replace('-', "_");
        let text = format!(
            "0::/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parse(&text), both(ID, UID));
        // The pod's sandbox itself, between levels: the pod without an outer container.
        let text = format!("0::/docker/{outer}/kubepods/besteffort/pod{UID}\n");
        assert_eq!(parse(&text), Container { container_id: None, pod_uid: Some(UID.into()) });
        // Docker in Docker, no pods: the inner container.
        assert_eq!(parse(&format!("0::/docker/{outer}/docker/{ID}\n")), container_only(ID));
    }

    #[test]
    fn look_alikes_are_not_ids() {
        let short = &ID[..63];
        let upper = ID.to_ascii_uppercase();
        for text in [
            format!("0::/system.slice/docker-{short}.scope\n"),
            format!("0::/docker/{upper}\n"),
            format!("0::/system.slice/docker-{ID}x.scope\n"),
            // "pod" + UID outside kubepods: some other tool's naming.
            format!("0::/system.slice/pod{UID}\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice\n", &UID[..30]),
            "0::/kubepods/burstable/podnotauid\n".to_string(),
        ] {
            assert_eq!(parse(&text), Container::default(), "{text:?}");
        }
    }

    #[test]
    fn the_most_informative_line_wins_and_v2_breaks_ties() {
        let other = "a".repeat(64);
        // Hybrid: the v2 line names a container too; on a tie the v2 line wins.
        let text = format!("4:memory:/docker/{other}\n0::/docker/{ID}\n");
        assert_eq!(parse(&text), container_only(ID));
        // A v1 line with container and pod beats a v2 line with the container only.
        let text = format!("0::/docker/{other}\n4:memory:/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse(&text), both(ID, UID));
    }
}
