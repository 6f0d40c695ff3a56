//! SoftHSM2 tokens for tests and benchmarks: one token per [`SoftHsm`], holding fixture
//! CA keys, and a private copy of the SoftHSM2 module to load it with.
//!
//! The copy matters: SoftHSM2 lists its tokens once, when the module is initialized, and
//! a library is initialized once per process. A module loaded before a test created its
//! token would never see it; a copy of its own (another file, so another instance of the
//! library) is loaded after the token exists.
//!
//! SoftHSM2 finds its token directory through `SOFTHSM2_CONF`, which the workspace's
//! `.cargo/config.toml` sets for every process cargo runs; [`SoftHsm::new`] writes that
//! file when it is missing. `cargo xtask test` installs the Debian package `softhsm2`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's `softhsm2` package puts the module.
pub const SYSTEM_MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// The user PIN of every token made here.
pub const USER_PIN: &str = "certwright-user-pin";
const SO_PIN: &str = "certwright-so-pin";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Held while softhsm2-util writes the token directory: two `--init-token --free` at once
/// pick the same free slot. Threads of this process wait on it; other test processes on
/// the file lock beside the configuration.
static WRITING: Mutex<()> = Mutex::new(());

struct Writing {
    _file: Option<std::fs::File>,
    _thread: std::sync::MutexGuard<'static, ()>,
}

fn writing() -> Writing {
    let thread = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let file = std::env::var_os("SOFTHSM2_CONF")
        .map(PathBuf::from)
        .and_then(|conf| {
            let dir = conf.parent()?.to_path_buf();
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("softhsm2.lock"))
                .ok()
        })
        .filter(|file| file.lock().is_ok());
    Writing {
        _file: file,
        _thread: thread,
    }
}

/// One SoftHSM2 token and a module file of its own.
///
/// Tokens are not deleted when dropped: a module instance that had the token open
/// writes to its directory again, leaving a broken token behind. The first `SoftHsm` of
/// a process deletes instead the tokens of test processes that have ended.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    module: PathBuf,
    label: String,
    slot: u64,
}

impl Default for SoftHsm {
    fn default() -> Self {
        SoftHsm::new()
    }
}

impl SoftHsm {
    /// A fresh token with the user PIN [`USER_PIN`].
    ///
    /// # Panics
    /// When SoftHSM2 is not installed or `SOFTHSM2_CONF` is not set (run the tests
    /// through cargo, which sets it).
    pub fn new() -> SoftHsm {
        let system = Self::system_module().unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (none of {SYSTEM_MODULES:?}): `apt-get install -y \
                 softhsm2`, as `cargo xtask test` does"
            )
        });
        ensure_config();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let label = format!(
            "cw{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let module = dir.path().join("libsofthsm2.so");
        std::fs::copy(&system, &module).expect("copy the SoftHSM2 module");
        let _writing = writing();
        let out = util(&[
            "--init-token",
            "--free",
            "--label",
            &label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]);
        // "The token has been initialized and is reassigned to slot 1234"
        let slot = out
            .rsplit("slot ")
            .next()
            .and_then(|rest| rest.trim().trim_end_matches('.').parse().ok())
            .unwrap_or_else(|| panic!("no slot in softhsm2-util's answer: {out}"));
        SoftHsm {
            dir,
            module,
            label,
            slot,
        }
    }

    /// The installed SoftHSM2 module, if any.
    pub fn system_module() -> Option<PathBuf> {
        SYSTEM_MODULES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    /// Imports a private key (PKCS#8 PEM, as [`crate::TestCa::key_pem`] gives) as
    /// `label` with id `id`.
    pub fn import(&self, key_pem: &str, label: &str, id: &[u8]) {
        Self::import_into(&self.label, key_pem, label, id);
    }

    /// Imports a private key into the token labelled `token`.
    pub fn import_into(token: &str, key_pem: &str, label: &str, id: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), key_pem).expect("write the key to import");
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let _writing = writing();
        let _ = util(&[
            "--import",
            file.path().to_str().expect("UTF-8 path"),
            "--token",
            token,
            "--label",
            label,
            "--id",
            &id,
            "--pin",
            USER_PIN,
            "--no-public-key",
        ]);
    }

    /// The module file this token is to be opened with.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The token's slot id.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// Removes the module file, as an HSM client library that is not installed.
    pub fn remove_module(&self) {
        std::fs::remove_file(&self.module).expect("remove the module copy");
    }

    /// Puts the module file back.
    pub fn restore_module(&self) {
        let system = Self::system_module().expect("SoftHSM2 is installed");
        std::fs::copy(system, &self.module).expect("copy the SoftHSM2 module");
    }

    /// A path where no module is, in this token's directory.
    pub fn missing_module(&self) -> PathBuf {
        self.dir.path().join("absent-pkcs11.so")
    }

    /// Makes another token, labelled `label`, in the same token directory, with the
    /// user PIN [`USER_PIN`]: a token that appears after a module was loaded.
    pub fn init_token(label: &str) {
        ensure_config();
        let _writing = writing();
        let _ = util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]);
    }
}

fn delete(label: &str) {
    let _ = Command::new("softhsm2-util")
        .args(["--delete-token", "--token", label])
        .output();
}

/// Writes SoftHSM2's configuration where `SOFTHSM2_CONF` says, with its token directory
/// beside it, unless it is there.
fn ensure_config() {
    let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").unwrap_or_else(|| {
        panic!("SOFTHSM2_CONF is not set: run through cargo (.cargo/config.toml sets it)")
    }));
    let _writing = writing();
    if conf.exists() {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep(&conf));
        return;
    }
    let dir = conf.parent().expect("SOFTHSM2_CONF names a file");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("create the SoftHSM2 token directory");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    // Several test processes may write it at once: each writes its own file and renames.
    let temporary = dir.join(format!("softhsm2.conf.{}", std::process::id()));
    std::fs::write(&temporary, text).expect("write the SoftHSM2 configuration");
    std::fs::rename(&temporary, &conf).expect("put the SoftHSM2 configuration in place");
}

/// Deletes what earlier test processes left in the token directory: tokens made by a
/// process that has ended (labels `cw<pid>-...`), and directories that hold no token.
fn sweep(conf: &Path) {
    let Some(tokens) = conf.parent().map(|d| d.join("tokens")) else {
        return;
    };
    for entry in std::fs::read_dir(&tokens).into_iter().flatten().flatten() {
        if !entry.path().join("token.object").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let Ok(out) = Command::new("softhsm2-util").arg("--show-slots").output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(label) = line.trim().strip_prefix("Label:").map(str::trim) else {
            continue;
        };
        let pid = label
            .strip_prefix("cw")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            delete(label);
        }
    }
}

/// Runs softhsm2-util; its standard output. softhsm2-util reads every token in the
/// directory, and a module loaded by a running test may be rewriting one of them at that
/// moment ("Could not get info about the token"): that read is tried again.
fn util(args: &[&str]) -> String {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = Command::new("softhsm2-util")
            .args(args)
            .output()
            .expect("run softhsm2-util (apt-get install -y softhsm2)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if attempt < 10 && said.contains("Could not get info about the token") {
            std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            continue;
        }
        panic!(
            "softhsm2-util {} failed: {said}",
            args.first().copied().unwrap_or_default()
        );
    }
}
