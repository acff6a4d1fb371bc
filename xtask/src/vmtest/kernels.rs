//! Debian's own cloud kernels, fetched without installing them: a private apt configuration
//! (its own sources, lists and cache under target/vmtest) pointing at the Debian archive this
//! machine uses, signatures checked by apt against Debian's archive keyring, the unsigned image
//! package downloaded and unpacked with `dpkg -x`. Cached: a second run reuses the unpacked tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{output, run, step};

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The metapackage whose Depends names the suite's current cloud kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Marks a completely unpacked package tree (written last).
const DONE: &str = ".unpacked";

/// An unpacked kernel package.
pub struct Kernel {
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` in the unpacked tree.
    pub modules: PathBuf,
}

/// The cloud kernel of `suite`, from the cache under `work` or fetched into it.
pub fn fetch(work: &Path, suite: &str) -> Result<Kernel> {
    let dir = work.join("kernels").join(suite);
    let tree = dir.join("root");
    if !tree.join(DONE).exists() {
        let apt = PrivateApt::new(&dir, suite)?;
        apt.update()?;
        let package = apt.cloud_image_package()?;
        let deb = apt.download(&package)?;
        step(&format!("unpacking {}", deb.display()));
        let _ = std::fs::remove_dir_all(&tree);
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
        std::fs::write(tree.join(DONE), format!("{package}\n"))?;
    }
    locate(&tree)
}

/// The kernel image and module tree inside an unpacked package.
fn locate(tree: &Path) -> Result<Kernel> {
    let boot = tree.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let name = vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let release = name.trim_start_matches("vmlinuz-").to_string();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(&release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no modules directory for {release} in {}", tree.display()))?;
    Ok(Kernel { release, vmlinuz, modules })
}

/// apt with its own sources, lists and cache: the host's apt state is neither read nor changed.
struct PrivateApt {
    dir: PathBuf,
    suite: String,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<PrivateApt> {
        for sub in ["lists/partial", "cache/archives/partial", "debs", "empty.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n");
        std::fs::write(dir.join("sources.list"), sources)?;
        Ok(PrivateApt { dir: dir.to_path_buf(), suite: suite.to_string() })
    }

    /// `apt-get` or `apt-cache` with the private configuration.
    fn cmd(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut c = Command::new(program);
        for opt in [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            // An empty directory: none of the host's sources or pins apply.
            format!("Dir::Etc::sourceparts={d}/empty.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Dir::State::status=/dev/null".into(),
            "Dir::Etc::preferences=/dev/null".into(),
            format!("Dir::Etc::preferencesparts={d}/empty.d"),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            // The files land under target/, which apt's unprivileged _apt user may not reach.
            "APT::Sandbox::User=root".into(),
        ] {
            c.arg("-o").arg(opt);
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// The suite's package lists, their signatures checked. If the keyring lacks the suite's
    /// keys, the debian-archive-keyring package is installed or updated and the update retried.
    fn update(&self) -> Result<()> {
        step(&format!("fetching the {} package lists (private apt configuration)", self.suite));
        let attempt = || -> Result<(bool, String)> {
            let out = self.cmd("apt-get").args(["update", "-q"]).output()?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            Ok((out.status.success() && !text.contains("NO_PUBKEY") && !text.contains("GPG error"), text))
        };
        let (ok, text) = attempt()?;
        if ok {
            return Ok(());
        }
        if text.contains("NO_PUBKEY") || text.contains("GPG error") || text.contains("not signed") {
            step(&format!("the keyring cannot check {}: updating debian-archive-keyring", self.suite));
            run(Command::new("apt-get").args(["update", "-q"]))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "debian-archive-keyring"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            let (ok, text) = attempt()?;
            if ok {
                return Ok(());
            }
            bail!("apt-get update for {} failed after updating the keyring:\n{text}", self.suite);
        }
        bail!("apt-get update for {} failed:\n{text}", self.suite)
    }

    /// `linux-image-<version>-cloud-amd64-unsigned`, from the metapackage's Depends.
    fn cloud_image_package(&self) -> Result<String> {
        let show = output(self.cmd("apt-cache").args(["show", METAPACKAGE]))?;
        let image = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .and_then(|d| d.split([',', ' ']).find(|w| w.starts_with("linux-image-")))
            .with_context(|| format!("no linux-image dependency of {METAPACKAGE} in {}", self.suite))?;
        let unsigned = format!("{image}-unsigned");
        output(self.cmd("apt-cache").args(["show", &unsigned]))
            .with_context(|| format!("{unsigned} is not in {}", self.suite))?;
        Ok(unsigned)
    }

    /// The package file (apt checks it against the signed index), downloaded once.
    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let find =
            || -> Option<PathBuf> {
                std::fs::read_dir(&debs).ok()?.flatten().map(|e| e.path()).find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")))
                })
            };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        step(&format!("downloading {package} from {MIRROR} ({})", self.suite));
        run(self.cmd("apt-get").current_dir(&debs).args(["download", "-q", package]))?;
        find().with_context(|| format!("apt-get download left no {package}_*.deb in {}", debs.display()))
    }
}
