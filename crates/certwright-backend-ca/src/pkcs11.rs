//! A local CA's key in a PKCS#11 token: an HSM, a network HSM's client library, a cloud
//! KMS's PKCS#11 library, or SoftHSM2. The key never leaves the token; certwright hands
//! it the bytes to sign.
//!
//! Two layers:
//! - [`Module`]: one PKCS#11 library per path, loaded and initialized once per process
//!   and shared by every issuer that names it (`C_Initialize` is process-wide). It can be
//!   reloaded (`C_Finalize`, `C_Initialize`) so that a token that appears after start is
//!   seen (SoftHSM2, for one, lists its tokens once, at initialization); a reload waits
//!   for signatures in flight and happens at most once per [`RELOAD_INTERVAL`].
//! - [`TokenKey`]: one issuer's key: the token and key it names, its PIN, and a pool of
//!   logged-in sessions, bounded by the issuer's `maxConcurrentRequests`. Signing runs on
//!   tokio's blocking pool: a network HSM may take milliseconds.
//!
//! Login is per token for the whole process, so the module also keeps the PINs: which
//! one logged in (a key presenting another is refused, at most a few new ones an hour
//! compared), and which ones the token refused (never presented again).
//!
//! Every failure is an [`Error`] whose [`CaFault`] names it: `HsmUnavailable` (module
//! missing, token absent, session or device errors; transient, retried, and recovered
//! from when the token comes back), `HsmPinRejected` (a refused PIN is not presented
//! again: a token locks its PIN after a few wrong tries), `HsmKeyNotFound`, and
//! `KeyMismatch` (the token's key does not sign for the certificate).
//!
//! One file because it is one adapter to one C interface: the module registry, the
//! session pool and the error mapping share its locks and generations, and would be
//! harder to check for deadlocks apart.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ring::signature as ring_sig;
use sha2::Digest;

use super::{CaFault, KeyKind, fault, lock, sequence, tlv};
use certwright_pki::Error;

/// The least time between two reloads of one module, by default
/// ([`TokenKeyConfig::reload_interval`]).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(300);

/// What the key signs to show it belongs to the certificate.
const PROBE: &[u8] = b"certwright: does this token key belong to the CA certificate?";

/// `RSASSA-PSS` with SHA-256, MGF1-SHA-256 and a 32-byte salt, as an AlgorithmIdentifier
/// (RFC 4055).
pub(super) const RSA_PSS_SHA256: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20,
];

/// Which token holds the key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRef {
    /// The token whose label (`CK_TOKEN_INFO.label`, trailing blanks ignored) is this.
    Label(String),
    /// The token in this slot.
    Slot(u64),
}

impl fmt::Display for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRef::Label(label) => write!(f, "token {label:?}"),
            TokenRef::Slot(slot) => write!(f, "the token in slot {slot}"),
        }
    }
}

/// How an RSA key in a token signs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RsaScheme {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    #[default]
    Pkcs1v15,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, a 32-byte salt (`CKM_SHA256_RSA_PKCS_PSS`).
    Pss,
}

/// Where a local CA's key lives in a PKCS#11 token, and how to use it.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenKeyConfig {
    /// The PKCS#11 module (shared library) to load.
    pub module: PathBuf,
    /// The token holding the key.
    pub token: TokenRef,
    /// The private key's `CKA_LABEL`.
    pub key_label: Option<String>,
    /// The private key's `CKA_ID`.
    pub key_id: Option<Vec<u8>>,
    /// The token's user PIN. Never logged, never shown by `Debug`.
    pub pin: String,
    /// How an RSA key signs.
    pub rsa_scheme: RsaScheme,
    /// The most sessions open at once, and so the most signatures in flight.
    pub max_sessions: usize,
    /// The least time between two reloads of the module this key asks for when its
    /// token is not found. Default: [`RELOAD_INTERVAL`].
    pub reload_interval: Duration,
}

impl TokenKeyConfig {
    /// The key labelled `key_label` in `token` of `module`, opened with `pin`; RSA keys
    /// sign PKCS#1 v1.5, at most 8 signatures at once.
    pub fn new(module: impl Into<PathBuf>, token: TokenRef, pin: impl Into<String>) -> Self {
        TokenKeyConfig {
            module: module.into(),
            token,
            key_label: None,
            key_id: None,
            pin: pin.into(),
            rsa_scheme: RsaScheme::default(),
            max_sessions: 8,
            reload_interval: RELOAD_INTERVAL,
        }
    }

    /// Names the key by its `CKA_LABEL`.
    pub fn key_label(mut self, label: impl Into<String>) -> Self {
        self.key_label = Some(label.into());
        self
    }

    /// Names the key by its `CKA_ID`.
    pub fn key_id(mut self, id: impl Into<Vec<u8>>) -> Self {
        self.key_id = Some(id.into());
        self
    }

    /// How an RSA key signs.
    pub fn rsa_scheme(mut self, scheme: RsaScheme) -> Self {
        self.rsa_scheme = scheme;
        self
    }

    /// The least time between two reloads of the module this key asks for.
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }

    /// The most sessions open at once (at least one).
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max.max(1);
        self
    }

    /// The key as a message names it: its label and id.
    fn key_name(&self) -> String {
        match (&self.key_label, &self.key_id) {
            (Some(label), Some(id)) => format!("key {label:?} (id {})", hex(id)),
            (Some(label), None) => format!("key {label:?}"),
            (None, Some(id)) => format!("key with id {}", hex(id)),
            (None, None) => "key".to_owned(),
        }
    }
}

impl fmt::Debug for TokenKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeyConfig")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("key_label", &self.key_label)
            .field("key_id", &self.key_id.as_deref().map(hex))
            .field("rsa_scheme", &self.rsa_scheme)
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Modules

/// The modules of this process, by canonical path (a library reached through a symlink
/// is one module, not two: its initialization and logins are the library's, once per
/// process). A module stays loaded once loaded: unloading a PKCS#11 library whose own
/// threads may still run is not safe.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = LazyLock::new(Default::default);

/// One PKCS#11 library, shared by every key that names its path.
pub(crate) struct Module {
    path: PathBuf,
    state: RwLock<ModuleState>,
    /// The tokens this process is logged in to, by slot, with a digest of the PIN that
    /// logged in. Login is per token for the whole process, so a second key on a token
    /// opened with another PIN is refused rather than let in by the first one's login.
    /// Its own lock: logging in happens while a lease holds `state` for reading.
    logins: Mutex<Logins>,
}

#[derive(Default)]
struct Logins {
    /// The initialization these logins belong to.
    generation: u64,
    by_slot: HashMap<u64, [u8; 32]>,
    /// PINs the token refused (`C_Login`), by slot: never tried again in this process,
    /// whichever issuer presents them, so that rebuilding an issuer does not count
    /// another wrong try towards the token's lockout. Kept across reloads.
    refused: HashMap<u64, Vec<[u8; 32]>>,
    /// PINs that did not match the one a token is logged in with, by slot, with when:
    /// at most [`MISMATCHES_PER_HOUR`] new ones an hour are compared, so that the
    /// comparison is no faster a way to guess a PIN than the token's own lockout.
    mismatched: HashMap<u64, Vec<([u8; 32], Instant)>>,
}

/// New PINs per token and hour compared with the PIN it is logged in with.
const MISMATCHES_PER_HOUR: usize = 5;

#[derive(Default)]
struct ModuleState {
    /// The initialized library, when it could be loaded.
    context: Option<Pkcs11>,
    /// Counts initializations: sessions and handles of an older one are gone.
    generation: u64,
    reloaded_at: Option<Instant>,
    /// Every context ever made, kept so that the library is never unloaded.
    kept: Vec<Pkcs11>,
}

impl Module {
    /// The module of the library at `path`, once the file is there.
    fn get(path: &Path) -> Result<Arc<Module>, Error> {
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            unavailable(format!(
                "the PKCS#11 module {} cannot be loaded ({e})",
                path.display()
            ))
        })?;
        Ok(lock(&MODULES)
            .entry(canonical.clone())
            .or_insert_with(|| {
                Arc::new(Module {
                    path: canonical,
                    state: RwLock::default(),
                    logins: Mutex::default(),
                })
            })
            .clone())
    }

    fn read(&self) -> RwLockReadGuard<'_, ModuleState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads and initializes the library unless it is.
    fn ensure_loaded(&self) -> Result<(), Error> {
        if self.read().context.is_some() {
            return Ok(());
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.context.is_some() {
            return Ok(());
        }
        let path = self.path.display();
        let context = Pkcs11::new(&self.path).map_err(|e| {
            unavailable(format!("the PKCS#11 module {path} cannot be loaded ({e})"))
        })?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(unavailable(format!(
                    "the PKCS#11 module {path} failed to initialize ({})",
                    short(&e)
                )));
            }
        }
        tracing::info!(module = %path, "PKCS#11 module loaded");
        state.kept.push(context.clone());
        state.context = Some(context);
        state.generation += 1;
        Ok(())
    }

    /// Finalizes and forgets the library, so that its next use initializes it again and
    /// sees the tokens present then. Nothing happens when another reload came after
    /// `seen` (the generation the caller used) or the last was under
    /// `interval` ago. Waits for signatures in flight.
    fn reload(&self, seen: u64, interval: Duration) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.generation != seen || state.reloaded_at.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        if let Some(context) = state.context.take()
            && let Err(e) = context.finalize()
        {
            tracing::warn!(module = %self.path.display(), error = %short(&e), "PKCS#11 C_Finalize failed");
        }
        state.reloaded_at = Some(Instant::now());
        tracing::info!(module = %self.path.display(), "PKCS#11 module finalized, to look for its tokens again");
    }
}

// ---------------------------------------------------------------------------------------
// Keys

/// One issuer's CA key in a token.
pub(crate) struct TokenKey {
    /// The module, once its file was found (a module not installed at build is looked
    /// for again at each use).
    module: Mutex<Option<Arc<Module>>>,
    config: TokenKeyConfig,
    pin: AuthPin,
    pin_digest: [u8; 32],
    /// The key type the certificate holds.
    kind: KeyKind,
    /// The certificate's public key (its SubjectPublicKeyInfo's BIT STRING), against
    /// which the probe signature is verified.
    public_key: Vec<u8>,
    permits: Arc<tokio::sync::Semaphore>,
    conn: Mutex<Conn>,
}

/// What this key knows of its token, for one initialization of the module.
#[derive(Default)]
struct Conn {
    generation: u64,
    /// The slot and key handle, once found and proved to match the certificate.
    found: Option<(Slot, ObjectHandle)>,
    /// Logged-in sessions not in use. They are opened without close-on-drop: after a
    /// reload their handles mean nothing, and closing one could close another's.
    idle: Vec<Session>,
}

/// A session lent out for one signature; the module cannot reload while it lives.
struct Lease<'a> {
    session: Session,
    key: ObjectHandle,
    generation: u64,
    module: &'a Module,
    _state: RwLockReadGuard<'a, ModuleState>,
}

impl TokenKey {
    /// A key for a certificate whose key type is `kind` and whose public key is
    /// `public_key`. Nothing is loaded or opened until the first use, so an issuer whose
    /// token is away at start is built, reports `HSMUnavailable`, and recovers.
    pub(crate) fn new(
        config: TokenKeyConfig,
        kind: KeyKind,
        public_key: Vec<u8>,
    ) -> Result<TokenKey, Error> {
        if kind == KeyKind::Ed25519 {
            return Err(fault(
                CaFault::KeyUnreadable,
                "the CA certificate holds an Ed25519 key; a token key must be ECDSA P-256, \
                 P-384 or RSA",
            ));
        }
        if config.key_label.is_none() && config.key_id.is_none() {
            return Err(Error::misconfigured(
                "a PKCS#11 key must be named by its label, its id or both",
            ));
        }
        let pin_digest = sha2::Sha256::digest(config.pin.as_bytes()).into();
        Ok(TokenKey {
            module: Mutex::new(Module::get(&config.module).ok()),
            pin: AuthPin::from(config.pin.clone()),
            pin_digest,
            kind,
            public_key,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_sessions.max(1))),
            conn: Mutex::default(),
            config,
        })
    }

    pub(crate) fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The AlgorithmIdentifier of the signatures this key makes.
    pub(crate) fn algorithm_identifier(&self) -> &'static [u8] {
        match (self.kind, self.config.rsa_scheme) {
            (KeyKind::Rsa, RsaScheme::Pss) => RSA_PSS_SHA256,
            (KeyKind::Rsa, _) => super::SHA256_WITH_RSA,
            (KeyKind::EcdsaP384, _) => super::ECDSA_WITH_SHA384,
            _ => super::ECDSA_WITH_SHA256,
        }
    }

    /// Where the key is, for messages: module, token and key.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} in {} of PKCS#11 module {}",
            self.config.key_name(),
            self.config.token,
            self.config.module.display()
        )
    }

    /// Signs `message` in the token, as the certificate's signature algorithm wants it.
    pub(crate) async fn sign(self: &Arc<Self>, message: &[u8]) -> Result<Vec<u8>, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the token's session pool is closed"))?;
        let key = self.clone();
        let message = message.to_vec();
        // The permit goes with the blocking task: a caller that gives up does not free
        // its place while the token still signs.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            key.sign_blocking(&message)
        })
        .await
        .map_err(|_| unavailable("signing in the token failed unexpectedly"))?
    }

    /// The module, looked for again while its file was missing.
    fn module(&self) -> Result<Arc<Module>, Error> {
        let mut module = lock(&self.module);
        if let Some(module) = module.as_ref() {
            return Ok(module.clone());
        }
        let found = Module::get(&self.config.module)?;
        *module = Some(found.clone());
        Ok(found)
    }

    /// Opens the token if needed and signs a probe: the health check.
    pub(crate) async fn probe(self: &Arc<Self>) -> Result<(), Error> {
        self.sign(PROBE).await.map(|_| ())
    }

    fn sign_blocking(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let (mechanism, data) = self.mechanism(message);
        // A session that broke (the HSM restarted, the module was reloaded) is dropped
        // and the signature tried once more on a fresh one.
        let module = self.module()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let lease = self.lease(&module)?;
            match lease.session.sign(&mechanism, lease.key, &data) {
                Ok(raw) => {
                    self.give_back(lease);
                    return self.encode(raw);
                }
                Err(e) if session_broken(&e) => {
                    let generation = lease.generation;
                    let _ = lease.session.close();
                    drop(lease._state);
                    self.forget(&module, generation, &e);
                    if attempts >= 2 {
                        return Err(self.error(&e, "signing"));
                    }
                }
                Err(e) => {
                    // A failed C_Sign ends the operation; the session stays usable.
                    self.give_back(lease);
                    return Err(self.error(&e, "signing"));
                }
            }
        }
    }

    /// The mechanism and the bytes to hand the token: ECDSA signs a digest made here
    /// (`CKM_ECDSA` is the mechanism every token has), RSA hashes in the token.
    fn mechanism(&self, message: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
        match (self.kind, self.config.rsa_scheme) {
            (KeyKind::EcdsaP384, _) => (Mechanism::Ecdsa, sha2::Sha384::digest(message).to_vec()),
            (KeyKind::Rsa, RsaScheme::Pss) => (
                Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32u64.into(),
                }),
                message.to_vec(),
            ),
            (KeyKind::Rsa, _) => (Mechanism::Sha256RsaPkcs, message.to_vec()),
            _ => (Mechanism::Ecdsa, sha2::Sha256::digest(message).to_vec()),
        }
    }

    /// The signature as X.509 carries it: ECDSA's r‖s becomes an `Ecdsa-Sig-Value`.
    fn encode(&self, raw: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.kind {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => ecdsa_der(&raw).ok_or_else(|| {
                unavailable(format!(
                    "the token returned an ECDSA signature of {} bytes",
                    raw.len()
                ))
            }),
            _ => Ok(raw),
        }
    }

    /// A logged-in session and the key handle, opening the token and finding the key
    /// first when this key has not yet (or not since the module's last initialization).
    fn lease<'m>(&self, module: &'m Module) -> Result<Lease<'m>, Error> {
        module.ensure_loaded()?;
        let state = module.read();
        let Some(context) = state.context.clone() else {
            // Reloaded between the two lines above: the next use loads it again.
            return Err(unavailable(format!(
                "the PKCS#11 module {} is being reloaded",
                self.config.module.display()
            )));
        };
        let generation = state.generation;
        let mut conn = lock(&self.conn);
        if conn.generation != generation {
            // Sessions of an earlier initialization are gone with it.
            conn.idle.clear();
            conn.found = None;
            conn.generation = generation;
        }
        if let (Some(session), Some((_, key))) = (conn.idle.pop(), conn.found) {
            return Ok(Lease {
                session,
                key,
                generation,
                module,
                _state: state,
            });
        }
        let slot = match conn.found {
            Some((slot, _)) => slot,
            None => match self.find_slot(&context) {
                Ok(slot) => slot,
                Err(e) => {
                    drop(conn);
                    drop(state);
                    // A token that is not there now may appear: look again, later.
                    module.reload(generation, self.config.reload_interval);
                    return Err(e);
                }
            },
        };
        let session = context
            .open_ro_session_no_drop(slot)
            .map_err(|e| self.error(&e, "opening a session"))?;
        if let Err(e) = self.login(module, generation, &context, &session, slot) {
            let _ = session.close();
            return Err(e);
        }
        let key = match conn.found {
            Some((_, key)) => key,
            None => match self.find_key(&session) {
                Ok(key) => {
                    conn.found = Some((slot, key));
                    key
                }
                Err(e) => {
                    let _ = session.close();
                    return Err(e);
                }
            },
        };
        Ok(Lease {
            session,
            key,
            generation,
            module,
            _state: state,
        })
    }

    fn give_back(&self, lease: Lease<'_>) {
        let mut conn = lock(&self.conn);
        if conn.generation == lease.generation && conn.idle.len() < self.config.max_sessions {
            conn.idle.push(lease.session);
        } else {
            let _ = lease.session.close();
        }
        let _ = lease.module;
    }

    /// Forgets what this key knew of its token after a session broke (closing its idle
    /// sessions of this initialization), and reloads the module when the token is gone.
    fn forget(&self, module: &Module, generation: u64, e: &CkError) {
        {
            let _state = module.read();
            let mut conn = lock(&self.conn);
            if conn.generation == generation {
                for session in conn.idle.drain(..) {
                    let _ = session.close();
                }
                conn.found = None;
            }
        }
        if matches!(
            e,
            CkError::Pkcs11(
                RvError::CryptokiNotInitialized
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::DeviceError,
                _
            )
        ) {
            module.reload(generation, self.config.reload_interval);
        }
    }

    fn find_slot(&self, context: &Pkcs11) -> Result<Slot, Error> {
        let slots = context
            .get_slots_with_token()
            .map_err(|e| self.error(&e, "listing the slots"))?;
        let found: Vec<Slot> = match &self.config.token {
            TokenRef::Slot(id) => slots.into_iter().filter(|s| s.id() == *id).collect(),
            TokenRef::Label(label) => slots
                .into_iter()
                .filter(|slot| {
                    context
                        .get_token_info(*slot)
                        .is_ok_and(|info| info.label().trim_end() == label.trim_end())
                })
                .collect(),
        };
        match found.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(unavailable(format!(
                "{} is not present in PKCS#11 module {}",
                self.config.token,
                self.config.module.display()
            ))),
            more => Err(fault(
                CaFault::HsmKeyNotFound,
                format!(
                    "{} tokens of PKCS#11 module {} are labelled alike: name the token by \
                     slot",
                    more.len(),
                    self.config.module.display()
                ),
            )),
        }
    }

    /// Logs in to the token unless this process is, with this PIN. Login is per token
    /// for the whole process (and ends with its last session), so the module records
    /// the digest of the PIN that logged in: a key that names the token with another PIN
    /// is refused rather than let in by the other's login, and at most
    /// [`MISMATCHES_PER_HOUR`] such PINs an hour are even compared. A PIN the token
    /// refused is never presented again by this process.
    fn login(
        &self,
        module: &Module,
        generation: u64,
        context: &Pkcs11,
        session: &Session,
        slot: Slot,
    ) -> Result<(), Error> {
        let info = context
            .get_token_info(slot)
            .map_err(|e| self.error(&e, "reading the token's flags"))?;
        if !info.login_required() {
            return Ok(());
        }
        // Held across C_Login: of two keys logging in at once, the second sees the first.
        let mut logins = lock(&module.logins);
        if logins.generation != generation {
            logins.by_slot.clear();
            logins.generation = generation;
        }
        if logins
            .refused
            .get(&slot.id())
            .is_some_and(|refused| refused.contains(&self.pin_digest))
        {
            return Err(pin_rejected(format!(
                "{} refused this PIN before; it is not tried again (a token locks its PIN \
                 after a few wrong tries): write the right PIN to the Secret",
                self.config.token
            )));
        }
        let state = session
            .get_session_info()
            .map_err(|e| self.error(&e, "reading the session's state"))?
            .session_state();
        if matches!(state, SessionState::RoUser | SessionState::RwUser) {
            return match logins.by_slot.get(&slot.id()).copied() {
                Some(digest) if digest == self.pin_digest => Ok(()),
                Some(_) => Err(self.mismatch(&mut logins, slot)),
                None => Err(pin_rejected(format!(
                    "{} is logged in outside certwright, so the PIN cannot be checked",
                    self.config.token
                ))),
            };
        }
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                return Err(pin_rejected(format!(
                    "{} is logged in outside certwright, so the PIN cannot be checked",
                    self.config.token
                )));
            }
            Err(e) => {
                let error = self.error(&e, "logging in");
                if CaFault::of(&error) == Some(CaFault::HsmPinRejected) {
                    logins
                        .refused
                        .entry(slot.id())
                        .or_default()
                        .push(self.pin_digest);
                }
                return Err(error);
            }
        }
        logins.by_slot.insert(slot.id(), self.pin_digest);
        Ok(())
    }

    /// The refusal of a PIN that is not the one the token is logged in with.
    fn mismatch(&self, logins: &mut Logins, slot: Slot) -> Error {
        let tried = logins.mismatched.entry(slot.id()).or_default();
        tried.retain(|(_, at)| at.elapsed() < Duration::from_secs(3600));
        if !tried.iter().any(|(digest, _)| *digest == self.pin_digest) {
            if tried.len() >= MISMATCHES_PER_HOUR {
                return pin_rejected(format!(
                    "{} is open in this process with another PIN, and {MISMATCHES_PER_HOUR} \
                     other PINs were presented for it within the hour: this one is not \
                     compared until that is over",
                    self.config.token
                ));
            }
            tried.push((self.pin_digest, Instant::now()));
        }
        pin_rejected(format!(
            "{} is open in this process with another PIN: this PIN is not the token's",
            self.config.token
        ))
    }

    fn find_key(&self, session: &Session) -> Result<ObjectHandle, Error> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(label) = &self.config.key_label {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &self.config.key_id {
            template.push(Attribute::Id(id.clone()));
        }
        let keys = session
            .find_objects(&template)
            .map_err(|e| self.error(&e, "looking for the key"))?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                return Err(fault(
                    CaFault::HsmKeyNotFound,
                    format!(
                        "{} holds no private {}",
                        self.config.token,
                        self.config.key_name()
                    ),
                ));
            }
            more => {
                return Err(fault(
                    CaFault::HsmKeyNotFound,
                    format!(
                        "{} holds {} private keys that match {}; name it by keyLabel and keyId",
                        self.config.token,
                        more.len(),
                        self.config.key_name()
                    ),
                ));
            }
        };
        let attributes = session
            .get_attributes(
                key,
                &[AttributeType::KeyType, AttributeType::AlwaysAuthenticate],
            )
            .map_err(|e| self.error(&e, "reading the key's attributes"))?;
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(kind) => {
                    let matches = match self.kind {
                        KeyKind::Rsa => kind == KeyType::RSA,
                        _ => kind == KeyType::EC,
                    };
                    if !matches {
                        return Err(fault(
                            CaFault::KeyMismatch,
                            format!(
                                "the {} is of type {kind} and the CA certificate holds an {} key",
                                self.describe(),
                                self.kind
                            ),
                        ));
                    }
                }
                Attribute::AlwaysAuthenticate(true) => {
                    return Err(fault(
                        CaFault::KeyUnreadable,
                        format!(
                            "the {} wants the PIN again for every signature \
                             (CKA_ALWAYS_AUTHENTICATE), which certwright does not give",
                            self.describe()
                        ),
                    ));
                }
                _ => {}
            }
        }
        // The key signs a probe, checked with the certificate's public key: a key of the
        // right type but another pair is refused here, not at the first request.
        let (mechanism, data) = self.mechanism(PROBE);
        let raw = session
            .sign(&mechanism, key, &data)
            .map_err(|e| self.error(&e, "signing a probe"))?;
        let matches = match self.kind {
            KeyKind::EcdsaP256 => verify(&ring_sig::ECDSA_P256_SHA256_FIXED, self, &raw),
            KeyKind::EcdsaP384 => verify(&ring_sig::ECDSA_P384_SHA384_FIXED, self, &raw),
            KeyKind::Rsa if self.config.rsa_scheme == RsaScheme::Pss => {
                verify(&ring_sig::RSA_PSS_2048_8192_SHA256, self, &raw)
            }
            _ => verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, self, &raw),
        };
        if !matches {
            return Err(fault(
                CaFault::KeyMismatch,
                format!(
                    "the {} does not match the CA certificate in tls.crt: its signature does \
                     not verify with the certificate's public key",
                    self.describe()
                ),
            ));
        }
        Ok(key)
    }

    /// An error of the token while `doing` something, named by its fault.
    fn error(&self, e: &CkError, doing: &str) -> Error {
        let detail = short(e);
        let place = self.describe();
        match e {
            CkError::Pkcs11(
                RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::PinExpired
                | RvError::PinLocked,
                _,
            ) => pin_rejected(format!(
                "{} refused the PIN ({detail}); fix the PIN Secret",
                self.config.token
            )),
            CkError::Pkcs11(RvError::UserPinNotInitialized, _) => pin_rejected(format!(
                "{} has no user PIN set ({detail}); initialize it with the token's SO tools",
                self.config.token
            )),
            CkError::Pkcs11(
                RvError::KeyTypeInconsistent
                | RvError::KeyFunctionNotPermitted
                | RvError::KeySizeRange
                | RvError::MechanismInvalid
                | RvError::MechanismParamInvalid,
                _,
            ) => fault(
                CaFault::KeyUnreadable,
                format!("the {place} cannot sign as the certificate wants ({detail})"),
            ),
            _ => unavailable(format!("{doing} with the {place} failed ({detail})")),
        }
    }
}

impl Drop for TokenKey {
    fn drop(&mut self) {
        // Close this key's idle sessions, unless the module was reloaded since (their
        // handles are gone, and may be another's now). Runs on an async worker: when a
        // reload holds the module, the sessions are left to it rather than waited for.
        let Some(module) = lock(&self.module).clone() else {
            return;
        };
        let Ok(state) = module.state.try_read() else {
            return;
        };
        let mut conn = lock(&self.conn);
        let current = conn.generation == state.generation;
        for session in conn.idle.drain(..) {
            if current {
                let _ = session.close();
            }
        }
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("config", &self.config)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn verify(
    algorithm: &'static dyn ring_sig::VerificationAlgorithm,
    key: &TokenKey,
    raw: &[u8],
) -> bool {
    ring_sig::UnparsedPublicKey::new(algorithm, &key.public_key)
        .verify(PROBE, raw)
        .is_ok()
}

/// Whether the session (or the token behind it) is gone, so a fresh one may succeed.
fn session_broken(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::DeviceError,
            _
        )
    )
}

/// A PKCS#11 error in a few words: the return value's name and the function.
fn short(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{rv:?} from {function:?}"),
        other => other.to_string(),
    }
}

fn unavailable(message: impl Into<String>) -> Error {
    Error::Transient {
        message: message.into(),
        source: Some(Box::new(CaFault::HsmUnavailable)),
    }
}

fn pin_rejected(message: String) -> Error {
    fault(CaFault::HsmPinRejected, message)
}

/// ECDSA's fixed-width r‖s as a DER `Ecdsa-Sig-Value` (RFC 3279).
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Some(sequence(&[&unsigned_integer(r), &unsigned_integer(s)]))
}

/// A DER INTEGER of a big-endian unsigned number: leading zeros dropped, one added when
/// the top bit is set.
fn unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let bytes = &bytes[start..];
    let mut content = Vec::with_capacity(bytes.len() + 1);
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    tlv(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_become_der_integers() {
        // r with its top bit set gains a zero; s with leading zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend(std::iter::repeat_n(0, 31));
        raw.push(0x05);
        let der = ecdsa_der(&raw).expect("even length");
        assert_eq!(&der[..4], &[0x30, 0x26, 0x02, 0x21]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[37..], &[0x02, 0x01, 0x05]);
        assert_eq!(ecdsa_der(&[1, 2, 3]), None);
        assert_eq!(ecdsa_der(&[]), None);
        // An all-zero half stays one zero byte.
        assert_eq!(unsigned_integer(&[0, 0]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn the_pss_identifier_is_rfc_4055s() {
        use der::Decode;
        let id = x509_cert::spki::AlgorithmIdentifierOwned::from_der(RSA_PSS_SHA256)
            .expect("DER AlgorithmIdentifier");
        assert_eq!(id.oid.to_string(), "1.2.840.113549.1.1.10");
    }

    #[test]
    fn the_pin_is_not_in_debug() {
        let config = TokenKeyConfig::new(
            "/usr/lib/softhsm/libsofthsm2.so",
            TokenRef::Label("ca".into()),
            "1234-secret",
        )
        .key_label("root")
        .key_id(vec![0xab]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("1234-secret"), "{shown}");
        assert!(shown.contains("\"ab\""), "{shown}");
        assert_eq!(config.key_name(), "key \"root\" (id ab)");
    }
}
