//! The kernel's BPF objects, through `bpftool` and `/proc/<pid>/fdinfo`: the programs and links a
//! process holds, and the maps.

use std::process::Command;

use serde_json::Value;

use crate::processes::sh;

/// Ids of the BPF objects of one kind (`prog_id`, `link_id`) that process `pid` holds open,
/// from its file descriptors.
pub fn bpf_ids_of(pid: u32, key: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        for line in info.lines() {
            if let Some(v) = line.strip_prefix(&format!("{key}:")) {
                ids.push(v.trim().parse().unwrap());
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Whether the BPF object of `kind` (`prog`, `link`) with `id` is still in the kernel.
pub fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool").args([kind, "show", "id", &id.to_string()]).output().unwrap().status.success()
}

/// `recursion_misses` of the BPF program named `name` that process `pid` holds: the runs the
/// kernel skipped because the program was already running on the CPU.
pub fn recursion_misses(pid: u32, name: &str) -> u64 {
    for id in bpf_ids_of(pid, "prog_id") {
        let Some(prog) = prog_show(id) else { continue };
        if prog["name"] == name {
            return prog["recursion_misses"].as_u64().unwrap_or(0);
        }
    }
    panic!("process {pid} holds no BPF program named {name}");
}

/// `bpftool prog show` of program `id`, None if it is gone.
fn prog_show(id: u64) -> Option<Value> {
    let out = Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output().expect("bpftool");
    serde_json::from_slice(&out.stdout).ok()
}

/// Names of the BPF programs process `pid` holds, sorted.
pub fn prog_names_of(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = bpf_ids_of(pid, "prog_id")
        .into_iter()
        .map(|id| {
            let prog = prog_show(id).expect("bpftool prog show json");
            prog["name"].as_str().expect("program name").to_string()
        })
        .collect();
    names.sort();
    names
}

/// `bpftool map show`: every BPF map in the kernel.
pub fn maps() -> Vec<Value> {
    let maps: Value = serde_json::from_str(&sh(&["bpftool", "-j", "map", "show"])).expect("bpftool json");
    maps.as_array().expect("maps").clone()
}

/// `bpftool map dump` of map `id`: its entries.
pub fn map_dump(id: u64) -> Vec<Value> {
    let dump: Value =
        serde_json::from_str(&sh(&["bpftool", "-j", "map", "dump", "id", &id.to_string()])).expect("bpftool dump json");
    dump.as_array().expect("entries").clone()
}
