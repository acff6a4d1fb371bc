//! tracefs: making sure it is mounted, and checking tracepoint record layouts against the ones
//! the kernel programs were written for.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracefs root, mounting it at /sys/kernel/tracing if no tracefs is mounted.
pub fn ensure_mounted() -> Result<PathBuf> {
    for p in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let source = std::ffi::CString::new("nodev").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it on {TRACEFS} failed: {err} (mount it with `mount -t tracefs nodev {TRACEFS}`, or run with CAP_SYS_ADMIN)"
        );
    }
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!("mounted tracefs on {TRACEFS} but it has no events/ directory");
    }
    log::info!("mounted tracefs on {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// One `field:` line of a tracepoint format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// Parse the fields of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            // "const void * skaddr", "__u8 saddr[4]", "unsigned char common_flags"
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.trim_start_matches('*').to_string();
            let num = |key: &str| -> Option<usize> {
                line.split(';').map(str::trim).find_map(|p| p.strip_prefix(key)).and_then(|v| v.parse().ok())
            };
            Some(Field { name, offset: num("offset:")?, size: num("size:")? })
        })
        .collect()
}

/// A tracepoint the programs depend on, with the fields they read.
pub struct Expected {
    pub category: &'static str,
    pub name: &'static str,
    /// (field, offset, size)
    pub fields: &'static [(&'static str, usize, usize)],
}

/// Check a tracepoint exists and its record has the expected layout.
pub fn check(root: &Path, e: &Expected) -> Result<Vec<Field>> {
    let path = root.join("events").join(e.category).join(e.name).join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("tracepoint {}/{} is missing ({})", e.category, e.name, path.display()))?;
    let fields = parse_format(&text);
    for (name, offset, size) in e.fields {
        let f = fields
            .iter()
            .find(|f| f.name == *name)
            .ok_or_else(|| anyhow!("tracepoint {}/{} has no field {name}", e.category, e.name))?;
        if f.offset != *offset || f.size != *size {
            bail!(
                "tracepoint {}/{} field {name} is at offset {} size {}, expected offset {offset} size {size}",
                e.category,
                e.name,
                f.offset,
                f.size
            );
        }
    }
    Ok(fields)
}

pub const SCHED_PROCESS_EXIT: Expected =
    Expected { category: "sched", name: "sched_process_exit", fields: &[("pid", 24, 4)] };

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"family=%s\"
";

    #[test]
    fn parses_field_lines() {
        let f = parse_format(SAMPLE);
        assert_eq!(f.len(), 5);
        assert_eq!(f[1], Field { name: "skaddr".into(), offset: 8, size: 8 });
        assert_eq!(f[3], Field { name: "saddr_v6".into(), offset: 40, size: 16 });
        assert_eq!(f[4], Field { name: "group_dead".into(), offset: 32, size: 1 });
    }

    #[test]
    fn layout_mismatches_and_missing_tracepoints_are_explained() {
        let dir = std::env::temp_dir().join(format!("observer-tracefs-test-{}", std::process::id()));
        let tp = dir.join("events/sock/inet_sock_set_state");
        std::fs::create_dir_all(&tp).unwrap();
        std::fs::write(tp.join("format"), SAMPLE.replace("offset:16", "offset:20")).unwrap();
        let e = Expected { category: "sock", name: "inet_sock_set_state", fields: &[("oldstate", 16, 4)] };
        let err = check(&dir, &e).unwrap_err().to_string();
        assert!(err.contains("field oldstate is at offset 20"), "{err}");
        let missing = Expected { category: "tcp", name: "nope", fields: &[] };
        let err = format!("{:#}", check(&dir, &missing).unwrap_err());
        assert!(err.contains("tracepoint tcp/nope is missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
