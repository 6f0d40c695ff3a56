//! A Kerberos KDC on 127.0.0.1 (TCP, RFC 4120 framing), for testing the `adcs` backend's
//! Negotiate authentication against [`crate::adcs_sim`].
//!
//! [`KdcSimulator`] knows one user (its aes256-cts-hmac-sha1-96 key derived from a password
//! with the salt `REALMusername`) and one service, `HTTP/<host>`. It requires encrypted
//! timestamp pre-authentication (KDC_ERR_PREAUTH_REQUIRED with ETYPE-INFO2, then AS-REP or
//! KDC_ERR_PREAUTH_FAILED), answers TGS-REQs for the service, and [`verify_ap_req`] checks
//! the SPNEGO token certsrv receives: ticket, authenticator, time and channel bindings.
//! It counts AS-REQs and TGS-REQs (what a ticket cache saves), can give the service a new
//! key (tickets issued before stop decrypting), and can make the account one without an
//! AES key (ETYPE-INFO2 lists only RC4 and pre-authentication fails).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, MutexGuard};

use picky_asn1::bit_string::BitString;
use picky_asn1::restricted_string::Ia5String;
use picky_asn1::wrapper::{
    Asn1SequenceOf, BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2,
    ExplicitContextTag3, ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag6,
    ExplicitContextTag7, ExplicitContextTag9, ExplicitContextTag10, ExplicitContextTag11,
    ExplicitContextTag12, GeneralStringAsn1, GeneralizedTimeAsn1, IntegerAsn1, OctetStringAsn1,
    Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_krb::crypto::{ChecksumSuite, CipherSuite};
use picky_krb::data_types::{
    Authenticator, EncTicketPart, EncTicketPartInner, EncryptedData, EncryptionKey,
    EtypeInfo2Entry, KerberosTime, PaData, PaEncTsEnc, PrincipalName, Ticket, TicketInner,
    TransitedEncoding,
};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage};
use picky_krb::messages::{
    ApReq, AsRep, AsReq, EncKdcRepPart, KdcRep, KdcReq, KrbError, KrbErrorInner, TgsRep, TgsReq,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The realm the simulator serves by default.
pub const DEFAULT_REALM: &str = "CORP.EXAMPLE";
/// The host of the service principal by default: `HTTP/localhost`.
pub const DEFAULT_SERVICE_HOST: &str = "localhost";

const AES256: u8 = 18;
/// rc4-hmac.
const RC4_HMAC: u8 = 23;
/// Allowed clock skew, as Windows: five minutes.
const SKEW_SECONDS: i64 = 300;

/// A Kerberos key and how the simulator uses it.
type Key = Vec<u8>;

#[derive(Debug, Default)]
struct Counters {
    as_requests: u64,
    tgs_requests: u64,
    failures: Vec<String>,
    /// The key of `HTTP/<host>`; replaced by [`KdcSimulator::rotate_service_key`].
    service_key: Key,
    /// The account has no aes256 key (only RC4, as an account whose password predates
    /// the domain's AES support).
    no_aes_key: bool,
    /// Lifetime of the tickets issued; ten hours (Windows' default) when unset.
    ticket_lifetime: Option<std::time::Duration>,
}

struct Shared {
    realm: String,
    username: String,
    user_key: Key,
    krbtgt_key: Key,
    service_host: String,
    counters: Mutex<Counters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A KDC on 127.0.0.1. Stops when dropped.
pub struct KdcSimulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for KdcSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdcSimulator")
            .field("address", &self.addr)
            .field("realm", &self.shared.realm)
            .finish_non_exhaustive()
    }
}

impl Drop for KdcSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The long-term aes256 key of a password with `salt` (RFC 3962, 4096 iterations).
///
/// # Panics
/// Never for aes256 (the derivation cannot fail for it).
pub fn password_key(password: &str, salt: &str) -> Vec<u8> {
    CipherSuite::Aes256CtsHmacSha196
        .cipher()
        .generate_key_from_password(password.as_bytes(), salt.as_bytes())
        .unwrap_or_default()
}

fn random_key() -> Key {
    let mut key = vec![0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key);
    key
}

impl KdcSimulator {
    /// A KDC for `username@realm` with `password` and the service `HTTP/localhost`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(realm: &str, username: &str, password: &str) -> io::Result<KdcSimulator> {
        let realm = realm.to_ascii_uppercase();
        let shared = Arc::new(Shared {
            user_key: password_key(password, &format!("{realm}{username}")),
            realm,
            username: username.to_string(),
            krbtgt_key: random_key(),
            service_host: DEFAULT_SERVICE_HOST.to_string(),
            counters: Mutex::new(Counters {
                service_key: random_key(),
                ..Counters::default()
            }),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &shared).await;
                });
            }
        });
        Ok(KdcSimulator { addr, shared, task })
    }

    /// `127.0.0.1:<port>`, for the Secret key `kdc`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The realm, upper-case.
    pub fn realm(&self) -> &str {
        &self.shared.realm
    }

    /// The key of `HTTP/<host>`, which certsrv decrypts tickets with.
    pub fn service_key(&self) -> Vec<u8> {
        self.shared.lock().service_key.clone()
    }

    /// Gives `HTTP/<host>` a new key (a reset of the service account's password) and
    /// returns it: tickets issued before no longer decrypt at certsrv.
    pub fn rotate_service_key(&self) -> Vec<u8> {
        let key = random_key();
        self.shared.lock().service_key = key.clone();
        key
    }

    /// Makes the account one without an aes256 key: ETYPE-INFO2 lists only RC4
    /// (rc4-hmac, etype 23), and an aes256 timestamp fails pre-authentication.
    pub fn remove_aes_key(&self) {
        self.shared.lock().no_aes_key = true;
    }

    /// Issues tickets valid for `lifetime` from now on (ten hours by default).
    pub fn set_ticket_lifetime(&self, lifetime: std::time::Duration) {
        self.shared.lock().ticket_lifetime = Some(lifetime);
    }

    /// An MIT keytab (format 0x0502) holding the user's aes256 key, version 2.
    pub fn keytab(&self) -> Vec<u8> {
        let s = &self.shared;
        let mut entry = Vec::new();
        entry.extend_from_slice(&1u16.to_be_bytes());
        for part in [s.realm.as_str(), s.username.as_str()] {
            entry.extend_from_slice(&(part.len() as u16).to_be_bytes());
            entry.extend_from_slice(part.as_bytes());
        }
        entry.extend_from_slice(&1u32.to_be_bytes()); // KRB5_NT_PRINCIPAL
        entry.extend_from_slice(&0u32.to_be_bytes()); // timestamp
        entry.push(2);
        entry.extend_from_slice(&u16::from(AES256).to_be_bytes());
        entry.extend_from_slice(&(s.user_key.len() as u16).to_be_bytes());
        entry.extend_from_slice(&s.user_key);
        entry.extend_from_slice(&2u32.to_be_bytes());
        let mut keytab = vec![0x05, 0x02];
        keytab.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        keytab.extend(entry);
        keytab
    }

    /// AS-REQs received.
    pub fn as_requests(&self) -> u64 {
        self.shared.lock().as_requests
    }

    /// TGS-REQs received.
    pub fn tgs_requests(&self) -> u64 {
        self.shared.lock().tgs_requests
    }

    /// Why requests were refused, oldest first.
    pub fn failures(&self) -> Vec<String> {
        self.shared.lock().failures.clone()
    }
}

async fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let mut head = [0u8; 4];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > 64 * 1024 {
            return Ok(());
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let reply = match body.first() {
            Some(0x6a) => {
                shared.lock().as_requests += 1;
                as_reply(shared, &body)
            }
            Some(0x6c) => {
                shared.lock().tgs_requests += 1;
                tgs_reply(shared, &body)
            }
            _ => Err(Refusal::new(40, "not an AS-REQ or TGS-REQ")),
        };
        let bytes = match reply {
            Ok(bytes) => bytes,
            Err(refusal) => {
                if refusal.code != 25 {
                    shared.lock().failures.push(refusal.why.clone());
                }
                krb_error(shared, &refusal)
            }
        };
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend(bytes);
        stream.write_all(&framed).await?;
    }
}

/// A KRB-ERROR to send.
struct Refusal {
    code: u32,
    why: String,
    e_data: Option<Vec<u8>>,
}

impl Refusal {
    fn new(code: u32, why: impl Into<String>) -> Refusal {
        Refusal {
            code,
            why: why.into(),
            e_data: None,
        }
    }
}

fn string(s: &str) -> GeneralStringAsn1 {
    GeneralStringAsn1::from(
        Ia5String::from_str(s)
            .unwrap_or_else(|_| Ia5String::from_str("?").unwrap_or_else(|_| unreachable!("ASCII"))),
    )
}

fn int(v: u32) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_unsigned(v.to_be_bytes().to_vec())
}

fn principal(name_type: u8, parts: &[&str]) -> PrincipalName {
    PrincipalName {
        name_type: ExplicitContextTag0::from(IntegerAsn1(vec![name_type])),
        name_string: ExplicitContextTag1::from(Asn1SequenceOf(
            parts.iter().map(|p| string(p)).collect(),
        )),
    }
}

fn names(p: &PrincipalName) -> Vec<String> {
    p.name_string.0.0.iter().map(|s| s.0.to_string()).collect()
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn time_at(at: time::OffsetDateTime) -> KerberosTime {
    GeneralizedTimeAsn1::from(picky_asn1::date::GeneralizedTime::from(
        at.replace_nanosecond(0).unwrap_or(at),
    ))
}

fn fresh(t: &KerberosTime) -> bool {
    time::OffsetDateTime::try_from(t.0.clone())
        .is_ok_and(|at| (at - now()).whole_seconds().abs() <= SKEW_SECONDS)
}

fn der<T: serde::Serialize>(value: &T) -> Vec<u8> {
    picky_asn1_der::to_vec(value).unwrap_or_default()
}

fn encrypt(key: &[u8], usage: i32, plain: &[u8]) -> EncryptedData {
    EncryptedData {
        etype: ExplicitContextTag0::from(IntegerAsn1(vec![AES256])),
        kvno: Optional::from(Some(ExplicitContextTag1::from(IntegerAsn1(vec![2])))),
        cipher: ExplicitContextTag2::from(OctetStringAsn1::from(
            CipherSuite::Aes256CtsHmacSha196
                .cipher()
                .encrypt(key, usage, plain)
                .unwrap_or_default(),
        )),
    }
}

fn decrypt(key: &[u8], usage: i32, data: &EncryptedData) -> Option<Vec<u8>> {
    if data.etype.0.0 != [AES256] {
        return None;
    }
    CipherSuite::Aes256CtsHmacSha196
        .cipher()
        .decrypt(key, usage, &data.cipher.0.0)
        .ok()
}

fn krb_error(shared: &Shared, refusal: &Refusal) -> Vec<u8> {
    let at = now();
    let error: KrbError = ApplicationTag(KrbErrorInner {
        pvno: ExplicitContextTag0::from(IntegerAsn1(vec![5])),
        msg_type: ExplicitContextTag1::from(IntegerAsn1(vec![30])),
        ctime: Optional::from(None),
        cusec: Optional::from(None),
        stime: ExplicitContextTag4::from(time_at(at)),
        susec: ExplicitContextTag5::from(int(0)),
        error_code: ExplicitContextTag6::from(refusal.code),
        crealm: Optional::from(None),
        cname: Optional::from(None),
        realm: ExplicitContextTag9::from(string(&shared.realm)),
        sname: ExplicitContextTag10::from(principal(2, &["krbtgt", &shared.realm])),
        e_text: Optional::from(Some(ExplicitContextTag11::from(string(&refusal.why)))),
        e_data: Optional::from(
            refusal
                .e_data
                .clone()
                .map(|d| ExplicitContextTag12::from(OctetStringAsn1::from(d))),
        ),
    });
    der(&error)
}

/// A ticket for `sname` and the EncKDCRepPart that goes with it.
fn issue(
    shared: &Shared,
    sname: PrincipalName,
    ticket_key: &[u8],
    nonce: &IntegerAsn1,
    crealm: &str,
    cname: &PrincipalName,
) -> (Ticket, EncKdcRepPart) {
    let session = random_key();
    let at = now();
    let lifetime = shared
        .lock()
        .ticket_lifetime
        .unwrap_or(std::time::Duration::from_secs(10 * 3600));
    let end = at + lifetime;
    let key = EncryptionKey {
        key_type: ExplicitContextTag0::from(IntegerAsn1(vec![AES256])),
        key_value: ExplicitContextTag1::from(OctetStringAsn1::from(session)),
    };
    let flags = || BitStringAsn1::from(BitString::with_bytes(vec![0x40, 0xe0, 0x00, 0x00]));
    let enc_ticket: EncTicketPart = ApplicationTag(EncTicketPartInner {
        flags: ExplicitContextTag0::from(flags()),
        key: ExplicitContextTag1::from(key.clone()),
        crealm: ExplicitContextTag2::from(string(crealm)),
        cname: ExplicitContextTag3::from(cname.clone()),
        transited: ExplicitContextTag4::from(TransitedEncoding {
            tr_type: ExplicitContextTag0::from(IntegerAsn1(vec![1])),
            contents: ExplicitContextTag1::from(OctetStringAsn1::from(Vec::new())),
        }),
        auth_time: ExplicitContextTag5::from(time_at(at)),
        starttime: Optional::from(None),
        endtime: ExplicitContextTag7::from(time_at(end)),
        renew_till: Optional::from(None),
        caddr: Optional::from(None),
        authorization_data: Optional::from(None),
    });
    let ticket: Ticket = ApplicationTag(TicketInner {
        tkt_vno: ExplicitContextTag0::from(IntegerAsn1(vec![5])),
        realm: ExplicitContextTag1::from(string(&shared.realm)),
        sname: ExplicitContextTag2::from(sname.clone()),
        enc_part: ExplicitContextTag3::from(encrypt(ticket_key, 2, &der(&enc_ticket))),
    });
    let part = EncKdcRepPart {
        key: ExplicitContextTag0::from(key),
        last_req: ExplicitContextTag1::from(Asn1SequenceOf(Vec::new())),
        nonce: ExplicitContextTag2::from(nonce.clone()),
        key_expiration: Optional::from(None),
        flags: ExplicitContextTag4::from(flags()),
        auth_time: ExplicitContextTag5::from(time_at(at)),
        start_time: Optional::from(None),
        end_time: ExplicitContextTag7::from(time_at(end)),
        renew_till: Optional::from(None),
        srealm: ExplicitContextTag9::from(string(&shared.realm)),
        sname: ExplicitContextTag10::from(sname),
        caddr: Optional::from(None),
        encrypted_pa_data: Optional::from(None),
    };
    (ticket, part)
}

fn kdc_rep(
    msg_type: u8,
    crealm: &str,
    cname: PrincipalName,
    ticket: Ticket,
    enc: EncryptedData,
) -> KdcRep {
    KdcRep {
        pvno: ExplicitContextTag0::from(IntegerAsn1(vec![5])),
        msg_type: ExplicitContextTag1::from(IntegerAsn1(vec![msg_type])),
        padata: Optional::from(None),
        crealm: ExplicitContextTag3::from(string(crealm)),
        cname: ExplicitContextTag4::from(cname),
        ticket: ExplicitContextTag5::from(ticket),
        enc_part: ExplicitContextTag6::from(enc),
    }
}

fn padata(req: &KdcReq, kind: u8) -> Option<&[u8]> {
    req.padata
        .0
        .as_ref()?
        .0
        .0
        .iter()
        .find(|pa| pa.padata_type.0.0 == [kind])
        .map(|pa| pa.padata_data.0.0.as_slice())
}

fn as_reply(shared: &Shared, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let req = picky_asn1_der::from_bytes::<AsReq>(body)
        .map_err(|e| Refusal::new(40, format!("unreadable AS-REQ: {e}")))?
        .0;
    let b = &req.req_body.0;
    let cname = b
        .cname
        .0
        .as_ref()
        .map(|c| c.0.clone())
        .ok_or_else(|| Refusal::new(6, "AS-REQ without cname"))?;
    if names(&cname) != [shared.username.clone()]
        || !b.realm.0.0.to_string().eq_ignore_ascii_case(&shared.realm)
    {
        return Err(Refusal::new(
            6,
            format!("unknown client {:?}", names(&cname)),
        ));
    }
    if !b.etype.0.0.iter().any(|e| e.0 == [AES256]) {
        return Err(Refusal::new(14, "aes256-cts-hmac-sha1-96 not offered"));
    }
    let salt = format!("{}{}", shared.realm, shared.username);
    let no_aes_key = shared.lock().no_aes_key;
    let info = if no_aes_key {
        Asn1SequenceOf(vec![EtypeInfo2Entry {
            etype: ExplicitContextTag0::from(IntegerAsn1(vec![RC4_HMAC])),
            salt: Optional::from(None),
            s2kparams: Optional::from(None),
        }])
    } else {
        Asn1SequenceOf(vec![EtypeInfo2Entry {
            etype: ExplicitContextTag0::from(IntegerAsn1(vec![AES256])),
            salt: Optional::from(Some(ExplicitContextTag1::from(string(&salt)))),
            s2kparams: Optional::from(None),
        }])
    };
    let Some(timestamp) = padata(&req, 2) else {
        let method = Asn1SequenceOf(vec![
            PaData {
                padata_type: ExplicitContextTag1::from(IntegerAsn1(vec![19])),
                padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(der(&info))),
            },
            PaData {
                padata_type: ExplicitContextTag1::from(IntegerAsn1(vec![2])),
                padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(Vec::new())),
            },
        ]);
        let mut refusal = Refusal::new(25, "pre-authentication required");
        refusal.e_data = Some(der(&method));
        return Err(refusal);
    };
    if no_aes_key {
        // As a KDC does: the timestamp is under a key the account does not have.
        let method = Asn1SequenceOf(vec![PaData {
            padata_type: ExplicitContextTag1::from(IntegerAsn1(vec![19])),
            padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(der(&info))),
        }]);
        let mut refusal = Refusal::new(24, "pre-authentication failed: no aes256 key");
        refusal.e_data = Some(der(&method));
        return Err(refusal);
    }
    let enc: EncryptedData = picky_asn1_der::from_bytes(timestamp)
        .map_err(|e| Refusal::new(24, format!("unreadable PA-ENC-TIMESTAMP: {e}")))?;
    let plain = decrypt(&shared.user_key, 1, &enc)
        .ok_or_else(|| Refusal::new(24, "PA-ENC-TIMESTAMP does not decrypt: wrong key"))?;
    let stamp: PaEncTsEnc = picky_asn1_der::from_bytes(&plain)
        .map_err(|e| Refusal::new(24, format!("unreadable PA-ENC-TS-ENC: {e}")))?;
    if !fresh(&stamp.patimestamp.0) {
        return Err(Refusal::new(37, "pre-authentication timestamp out of skew"));
    }
    let krbtgt = principal(2, &["krbtgt", &shared.realm]);
    let (ticket, part) = issue(
        shared,
        krbtgt,
        &shared.krbtgt_key,
        &b.nonce.0,
        &shared.realm,
        &cname,
    );
    let enc = encrypt(&shared.user_key, 3, &der(&ApplicationTag::<_, 25>(part)));
    let rep: AsRep = ApplicationTag(kdc_rep(11, &shared.realm, cname, ticket, enc));
    Ok(der(&rep))
}

/// The EncTicketPart of `ticket`, decrypted with `key`.
fn open_ticket(ticket: &Ticket, key: &[u8]) -> Result<EncTicketPartInner, String> {
    let plain = decrypt(key, 2, &ticket.0.enc_part.0).ok_or("the ticket does not decrypt")?;
    picky_asn1_der::from_bytes::<EncTicketPart>(&plain)
        .map(|t| t.0)
        .map_err(|e| format!("unreadable EncTicketPart: {e}"))
}

/// Checks an AP-REQ against its ticket: returns the ticket's part and the authenticator.
fn check_ap_req(
    ap: &ApReq,
    key: &[u8],
    usage: i32,
) -> Result<
    (
        EncTicketPartInner,
        picky_krb::data_types::AuthenticatorInner,
    ),
    String,
> {
    let part = open_ticket(&ap.0.ticket.0, key)?;
    let session = &part.key.0.key_value.0.0;
    let plain = decrypt(session, usage, &ap.0.authenticator.0)
        .ok_or("the authenticator does not decrypt with the ticket's session key")?;
    let auth = picky_asn1_der::from_bytes::<Authenticator>(&plain)
        .map_err(|e| format!("unreadable Authenticator: {e}"))?
        .0;
    if names(&auth.cname.0) != names(&part.cname.0)
        || auth.crealm.0.0.to_string() != part.crealm.0.0.to_string()
    {
        return Err("the authenticator names another client than the ticket".into());
    }
    if !fresh(&auth.ctime.0) {
        return Err("the authenticator's time is out of skew".into());
    }
    Ok((part, auth))
}

fn tgs_reply(shared: &Shared, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let req = picky_asn1_der::from_bytes::<TgsReq>(body)
        .map_err(|e| Refusal::new(40, format!("unreadable TGS-REQ: {e}")))?
        .0;
    let ap_bytes = padata(&req, 1).ok_or_else(|| Refusal::new(16, "TGS-REQ without PA-TGS-REQ"))?;
    let ap: ApReq = picky_asn1_der::from_bytes(ap_bytes)
        .map_err(|e| Refusal::new(40, format!("unreadable PA-TGS-REQ: {e}")))?;
    let (tgt, auth) =
        check_ap_req(&ap, &shared.krbtgt_key, 7).map_err(|why| Refusal::new(31, why))?;
    let session = tgt.key.0.key_value.0.0.clone();
    // The authenticator's checksum covers the request body.
    let cksum = auth
        .cksum
        .0
        .as_ref()
        .ok_or_else(|| Refusal::new(31, "the TGS authenticator has no checksum"))?;
    let expected = ChecksumSuite::HmacSha196Aes256
        .hasher()
        .checksum(&session, 6, &der(&req.req_body.0))
        .unwrap_or_default();
    if cksum.0.checksum.0.0 != expected {
        return Err(Refusal::new(
            41,
            "the TGS-REQ body checksum does not match (KRB_AP_ERR_MODIFIED)",
        ));
    }
    let b = &req.req_body.0;
    let sname = b
        .sname
        .0
        .as_ref()
        .map(|s| s.0.clone())
        .ok_or_else(|| Refusal::new(7, "TGS-REQ without sname"))?;
    if names(&sname) != ["HTTP".to_string(), shared.service_host.clone()] {
        return Err(Refusal::new(
            7,
            format!("unknown service {}", names(&sname).join("/")),
        ));
    }
    let crealm = tgt.crealm.0.0.to_string();
    let service_key = shared.lock().service_key.clone();
    let (ticket, part) = issue(
        shared,
        sname,
        &service_key,
        &b.nonce.0,
        &crealm,
        &tgt.cname.0,
    );
    let enc = encrypt(&session, 8, &der(&ApplicationTag::<_, 26>(part)));
    let rep: TgsRep = ApplicationTag(kdc_rep(13, &crealm, tgt.cname.0, ticket, enc));
    Ok(der(&rep))
}

/// Verifies the SPNEGO token of `Authorization: Negotiate` as IIS would: the AP-REQ's
/// ticket decrypts with the service key, its authenticator with the session key, the time
/// is within five minutes, and, when `bindings` is given, the authenticator's GSS checksum
/// carries that channel-binding MD5. Returns the client principal (`user@REALM`).
///
/// # Errors
/// Why the token is refused.
pub fn verify_ap_req(
    token: &[u8],
    service_key: &[u8],
    bindings: Option<[u8; 16]>,
) -> Result<String, String> {
    // picky's ApplicationTag0 decoder expects a well-formed [APPLICATION 0] SEQUENCE.
    if token.first() != Some(&0x60) {
        return Err("not a SPNEGO NegTokenInit".into());
    }
    let init: ApplicationTag0<GssApiNegInit> =
        std::panic::catch_unwind(|| picky_asn1_der::from_bytes(token))
            .map_err(|_| "unreadable SPNEGO token".to_string())?
            .map_err(|e| format!("unreadable SPNEGO token: {e}"))?;
    let mech = init
        .0
        .neg_token_init
        .0
        .mech_token
        .0
        .ok_or("the NegTokenInit carries no mechToken")?
        .0
        .0;
    let krb = KrbMessage::<ApReq>::decode_application_krb_message(&mech)
        .map_err(|e| format!("unreadable Kerberos GSS token: {e:?}"))?
        .0;
    if krb.krb5_token_id != [0x01, 0x00] {
        return Err("the GSS token is not an AP-REQ".into());
    }
    let (part, auth) = check_ap_req(&krb.krb_msg, service_key, 11)?;
    if let Some(expected) = bindings {
        let cksum = auth
            .cksum
            .0
            .ok_or("the authenticator has no GSS checksum")?
            .0;
        let value = &cksum.checksum.0.0;
        if cksum.cksumtype.0.0 != [0x00, 0x80, 0x03]
            || value.get(4..20) != Some(expected.as_slice())
        {
            return Err("the channel bindings do not match the TLS certificate".into());
        }
    }
    Ok(format!(
        "{}@{}",
        names(&part.cname.0).join("/"),
        part.crealm.0.0
    ))
}
