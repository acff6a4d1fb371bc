//! The VM's whole userland: a gzipped cpio (newc) archive with busybox, the release daemon, the
//! suite, the shared libraries they load (from `ldd`), the kernel modules the daemon needs and
//! `/init`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::output;

/// A cpio archive in the kernel's `newc` format, built in memory.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    /// One entry: header, name, data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.inode += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields =
            [self.inode, mode, 0, 0, nlink, 0, body.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// A directory and its parents, once each.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, body: &[u8]) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, S_IFREG | mode, (0, 0), body);
    }

    /// A copy of a host file at `dest` (symlinks followed).
    pub fn copy(&mut self, src: &Path, dest: &str, mode: u32) -> Result<()> {
        let body = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.file(dest, mode, &body);
        Ok(())
    }

    /// `/dev/console`, so that /init has a console before devtmpfs is mounted.
    pub fn console(&mut self) {
        self.dir("dev");
        self.entry("dev/console", S_IFCHR | 0o600, (5, 1), &[]);
    }

    /// The archive, gzipped, written to `path`.
    pub fn write_gz(mut self, path: &Path) -> Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::default());
        gz.write_all(&self.data)?;
        gz.finish()?.flush()?;
        Ok(())
    }
}

/// The shared libraries and dynamic loader a binary needs, by the paths `ldd` gives (empty for
/// a static binary).
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{}: {} not found", binary.display(), name.trim());
                }
                target.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A kernel module file, decompressed when the kernel's modules are (busybox insmod loads
/// plain ELF only).
pub struct Module {
    pub name: String,
    pub body: Vec<u8>,
}

/// `names` and every module they depend on (from each module's own `depends=`), in load order;
/// modules built into the kernel are left out.
pub fn modules(dir: &Path, names: &[&str], busybox: &Path) -> Result<Vec<Module>> {
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().filter_map(module_name).collect();
    let mut files = Vec::new();
    walk(&dir.join("kernel"), &mut files)?;
    let mut ordered = Vec::new();
    for name in names {
        add_module(name, &files, &builtin, busybox, &mut ordered)?;
    }
    Ok(ordered)
}

fn add_module(
    name: &str,
    files: &[PathBuf],
    builtin: &BTreeSet<String>,
    busybox: &Path,
    out: &mut Vec<Module>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || out.iter().any(|m| m.name == name) {
        return Ok(());
    }
    let file = files
        .iter()
        .find(|f| f.to_str().and_then(module_name).as_deref() == Some(name.as_str()))
        .with_context(|| format!("no module {name} in the kernel package"))?;
    let body = read_module(file, busybox)?;
    for dep in depends(&body) {
        add_module(&dep, files, builtin, busybox, out)?;
    }
    out.push(Module { name, body });
    Ok(())
}

/// `kernel/net/ipv4/tcp_diag.ko.xz` -> `tcp_diag`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(stem.replace('-', "_"))
}

fn read_module(file: &Path, busybox: &Path) -> Result<Vec<u8>> {
    let name = file.to_string_lossy();
    if name.ends_with(".ko") {
        return std::fs::read(file).with_context(|| format!("reading {name}"));
    }
    if name.ends_with(".ko.xz") {
        let out = Command::new(busybox).args(["xz", "-dc"]).arg(file).output()?;
        if !out.status.success() {
            bail!("decompressing {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        return Ok(out.stdout);
    }
    bail!("{name}: unsupported module compression (only .ko and .ko.xz)")
}

/// The `depends=` of a module's `.modinfo` strings.
fn depends(body: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = body.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let value = &body[at + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Where OpenSSL reads its configuration (`OPENSSLDIR`), so that `openssl req` works in the VM.
pub fn openssl_dir(openssl: &Path) -> Option<String> {
    let v = output(Command::new(openssl).args(["version", "-d"])).ok()?;
    Some(v.split('"').nth(1)?.to_string())
}
