//! Kerberos for certsrv: a ticket for `HTTP/<host>` from the KDC, sent as SPNEGO.
//!
//! Asks the KDC (TCP, RFC 4120 7.2.2 framing) for a TGT with encrypted-timestamp
//! pre-authentication (aes256-cts-hmac-sha1-96, the key from the password and the KDC's
//! salt, or from a keytab), then for a service ticket, and wraps an AP-REQ in a SPNEGO
//! NegTokenInit for `Authorization: Negotiate`. The TGT and the service ticket are kept
//! per backend (so per issuer) until shortly before they expire or certsrv refuses a
//! ticket; each Negotiate token is a fresh authenticator. Messages and crypto come from
//! `picky-krb`.
//!
//! One file because it is one protocol exchange (AS, TGS, AP-REQ in SPNEGO, the keytab,
//! the ticket cache) whose steps share private message builders.

use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use picky_asn1::bit_string::BitString;
use picky_asn1::restricted_string::Ia5String;
use picky_asn1::wrapper::{
    Asn1SequenceOf, BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2,
    ExplicitContextTag3, ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag7,
    ExplicitContextTag8, GeneralStringAsn1, GeneralizedTimeAsn1, IntegerAsn1, ObjectIdentifierAsn1,
    OctetStringAsn1, Optional,
};
use picky_asn1_der::application_tag::ApplicationTag;
use picky_krb::crypto::{ChecksumSuite, CipherSuite};
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncryptedData, EtypeInfo2, KerberosTime, PaData,
    PaEncTsEnc, PrincipalName, Ticket,
};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage, NegTokenInit};
use picky_krb::messages::{
    ApReq, ApReqInner, AsRep, AsReq, EncAsRepPart, EncKdcRepPart, EncTgsRepPart, KdcRep, KdcReq,
    KdcReqBody, KrbError, TgsRep, TgsReq,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use certwright_backend_http::format_duration;
use certwright_pki::Error;

/// aes256-cts-hmac-sha1-96, the only encryption type used.
const AES256: u8 = 18;
/// hmac-sha1-96-aes256.
const HMAC_AES256: u8 = 16;
/// The Kerberos V5 GSS-API mechanism.
const KRB5_OID: &str = "1.2.840.113554.1.2.2";
/// Microsoft's alias of it, which Windows offers first.
const MS_KRB5_OID: &str = "1.2.840.48018.1.2.2";
/// SPNEGO.
const SPNEGO_OID: &str = "1.3.6.1.5.5.2";
/// Largest KDC answer read.
const MAX_KDC_REPLY: usize = 256 * 1024;

/// The secret half of Kerberos credentials.
#[derive(Clone)]
pub(crate) enum Secret {
    Password(String),
    /// The aes256 long-term key, from a keytab.
    Key(Vec<u8>),
}

/// A principal, its realm, its KDC and its secret.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) realm: String,
    pub(crate) kdc: String,
    pub(crate) secret: Secret,
    /// Where the KDC may be (issuers a tenant writes); anywhere when `None`.
    pub(crate) egress: Option<std::sync::Arc<certwright_pki::egress::EgressPolicy>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("kdc", &self.kdc)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub(crate) fn principal(&self) -> String {
        format!("{}@{}", self.username, self.realm)
    }
}

/// A failure building a message or reading one: the KDC or our side broke the format.
fn invalid(what: &str, e: impl fmt::Display) -> Error {
    Error::InvalidResponse {
        message: format!("Kerberos: {what}: {e}"),
    }
}

fn string(s: &str) -> Result<GeneralStringAsn1, Error> {
    Ia5String::from_str(s)
        .map(GeneralStringAsn1::from)
        .map_err(|e| Error::misconfigured(format!("Kerberos: {s:?} is not ASCII: {e}")))
}

fn int(v: u32) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_unsigned(v.to_be_bytes().to_vec())
}

fn principal(name_type: u8, parts: &[&str]) -> Result<PrincipalName, Error> {
    Ok(PrincipalName {
        name_type: ExplicitContextTag0::from(IntegerAsn1(vec![name_type])),
        name_string: ExplicitContextTag1::from(Asn1SequenceOf(
            parts.iter().map(|p| string(p)).collect::<Result<_, _>>()?,
        )),
    })
}

fn oid(s: &str) -> Result<ObjectIdentifierAsn1, Error> {
    oid::ObjectIdentifier::try_from(s)
        .map(ObjectIdentifierAsn1::from)
        .map_err(|e| invalid("an OID", format!("{e:?}")))
}

fn time_at(at: time::OffsetDateTime) -> KerberosTime {
    GeneralizedTimeAsn1::from(picky_asn1::date::GeneralizedTime::from(
        at.replace_nanosecond(0).unwrap_or(at),
    ))
}

fn flags(bits: u32) -> BitStringAsn1 {
    BitStringAsn1::from(BitString::with_bytes(bits.to_be_bytes().to_vec()))
}

fn nonce() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_be_bytes(bytes) & 0x7fff_ffff
}

fn der<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, Error> {
    picky_asn1_der::to_vec(value).map_err(|e| invalid(&format!("cannot encode {what}"), e))
}

fn encrypt(key: &[u8], usage: i32, plain: &[u8]) -> Result<EncryptedData, Error> {
    let cipher = CipherSuite::Aes256CtsHmacSha196
        .cipher()
        .encrypt(key, usage, plain)
        .map_err(|e| invalid("cannot encrypt", e))?;
    Ok(EncryptedData {
        etype: ExplicitContextTag0::from(IntegerAsn1(vec![AES256])),
        kvno: Optional::from(None),
        cipher: ExplicitContextTag2::from(OctetStringAsn1::from(cipher)),
    })
}

fn decrypt(key: &[u8], usage: i32, data: &EncryptedData) -> Result<Vec<u8>, Error> {
    if data.etype.0.0 != [AES256] {
        return Err(invalid(
            "the KDC answered with an encryption type other than aes256-cts-hmac-sha1-96",
            format!("{:?}", data.etype.0.0),
        ));
    }
    CipherSuite::Aes256CtsHmacSha196
        .cipher()
        .decrypt(key, usage, &data.cipher.0.0)
        .map_err(|e| invalid("cannot decrypt the KDC's answer", e))
}

/// What the KDC said.
enum Reply {
    As(Box<KdcRep>),
    Tgs(Box<KdcRep>),
    Error(Box<picky_krb::messages::KrbErrorInner>),
}

/// One request to the KDC over TCP, with the 4-byte length prefix.
async fn kdc_call(
    credentials: &Credentials,
    request: &[u8],
    timeout: Duration,
) -> Result<Reply, Error> {
    let kdc = credentials.kdc.as_str();
    let call = format!("Kerberos: the KDC {kdc}");
    let work = async {
        // `kdc` is host:port, checked when the credentials were read.
        let (host, port) = kdc
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::misconfigured(format!("{call}: not host:port")))?;
        let addrs = certwright_backend_http::resolve(credentials.egress.as_deref(), host, port)
            .await
            .map_err(|e| match certwright_pki::egress::refusal(&e) {
                Some(refused) => certwright_backend_http::egress_error(&call, refused),
                None => Error::transient(format!("{call} is unreachable: {e}"), e),
            })?;
        let mut tcp = TcpStream::connect(&addrs[..])
            .await
            .map_err(|e| Error::transient(format!("{call} is unreachable: {e}"), e))?;
        let len = u32::try_from(request.len()).map_err(|e| invalid("request too large", e))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        tcp.write_all(&framed)
            .await
            .map_err(|e| Error::transient(format!("{call}: sending failed: {e}"), e))?;
        let mut head = [0u8; 4];
        tcp.read_exact(&mut head)
            .await
            .map_err(|e| Error::transient(format!("{call} closed the connection: {e}"), e))?;
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_KDC_REPLY {
            return Err(invalid(&call, format!("an answer of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body)
            .await
            .map_err(|e| Error::transient(format!("{call}: reading failed: {e}"), e))?;
        Ok(body)
    };
    let body = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Transient {
            message: format!("{call}: timed out after {}", format_duration(timeout)),
            source: Some(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))),
        })??;
    match body.first() {
        Some(0x6b) => picky_asn1_der::from_bytes::<AsRep>(&body)
            .map(|r| Reply::As(Box::new(r.0)))
            .map_err(|e| invalid(&format!("{call}: unreadable AS-REP"), e)),
        Some(0x6d) => picky_asn1_der::from_bytes::<TgsRep>(&body)
            .map(|r| Reply::Tgs(Box::new(r.0)))
            .map_err(|e| invalid(&format!("{call}: unreadable TGS-REP"), e)),
        Some(0x7e) => picky_asn1_der::from_bytes::<KrbError>(&body)
            .map(|r| Reply::Error(Box::new(r.0)))
            .map_err(|e| invalid(&format!("{call}: unreadable KRB-ERROR"), e)),
        _ => Err(invalid(&call, "an answer that is not a Kerberos message")),
    }
}

/// The error a KRB-ERROR of the KDC becomes.
fn kdc_error(
    credentials: &Credentials,
    step: &str,
    error: &picky_krb::messages::KrbErrorInner,
    aes_listed: Option<bool>,
) -> Error {
    let code = error.error_code.0;
    let text = error
        .e_text
        .0
        .as_ref()
        .map(|t| format!(" ({})", t.0.0))
        .unwrap_or_default();
    let who = credentials.principal();
    match code {
        6 => Error::Unauthorized {
            message: format!(
                "Kerberos {step}: the KDC does not know {who} (KDC_ERR_C_PRINCIPAL_UNKNOWN){text}"
            ),
        },
        7 => Error::misconfigured(format!(
            "Kerberos {step}: the KDC knows no service principal for certsrv \
             (KDC_ERR_S_PRINCIPAL_UNKNOWN){text}; register the HTTP/<host> SPN for the url's host"
        )),
        14 => Error::misconfigured(format!(
            "Kerberos {step}: the KDC refuses aes256-cts-hmac-sha1-96 for {who} \
             (KDC_ERR_ETYPE_NOSUPP){text}; {NO_AES_KEY}"
        )),
        24 | 31 if aes_listed == Some(false) => Error::Unauthorized {
            message: format!(
                "Kerberos {step}: the KDC refused the pre-authentication of {who} \
                 (KDC_ERR_PREAUTH_FAILED){text} and lists no aes256-cts-hmac-sha1-96 key for \
                 it: the account may have no AES256 key ({NO_AES_KEY}); a wrong password or \
                 keytab key gives the same error"
            ),
        },
        18 | 12 => Error::Unauthorized {
            message: format!(
                "Kerberos {step}: the KDC refuses {who} (error {code}: account disabled, locked or restricted){text}"
            ),
        },
        23 => Error::Unauthorized {
            message: format!(
                "Kerberos {step}: the password of {who} has expired (KDC_ERR_KEY_EXPIRED){text}"
            ),
        },
        24 | 31 => Error::Unauthorized {
            message: format!(
                "Kerberos {step}: the KDC refused the pre-authentication of {who}: wrong password \
                 or keytab key (KDC_ERR_PREAUTH_FAILED){text}"
            ),
        },
        37 => Error::Transient {
            message: format!(
                "Kerberos {step}: our clock differs too much from the KDC's (KRB_AP_ERR_SKEW){text}"
            ),
            source: None,
        },
        _ => Error::Unauthorized {
            message: format!("Kerberos {step}: the KDC answered error {code}{text}"),
        },
    }
}

/// How to give an account an AES256 key, for messages.
const NO_AES_KEY: &str = "in Active Directory, tick \"This account supports Kerberos AES 256 \
     bit encryption\" on the account (msDS-SupportedEncryptionTypes), then reset its \
     password so that the domain controller creates the AES keys, and export a new keytab";

/// Whether the KDC's ETYPE-INFO2 lists an aes256 key for the account: `None` when the
/// error carries no ETYPE-INFO2.
fn aes_listed(error: &picky_krb::messages::KrbErrorInner) -> Option<bool> {
    let infos = etype_info(error)?;
    Some(infos.iter().any(|entry| entry.etype.0.0 == [AES256]))
}

/// The ETYPE-INFO2 entries in a KRB-ERROR's METHOD-DATA, if it has any.
fn etype_info(
    error: &picky_krb::messages::KrbErrorInner,
) -> Option<Vec<picky_krb::data_types::EtypeInfo2Entry>> {
    let data = error.e_data.0.as_ref()?;
    let method: Asn1SequenceOf<PaData> = picky_asn1_der::from_bytes(&data.0.0).ok()?;
    let infos = method
        .0
        .iter()
        .filter(|pa| pa.padata_type.0.0 == [19])
        .map(|pa| picky_asn1_der::from_bytes::<EtypeInfo2>(&pa.padata_data.0.0).ok())
        .collect::<Option<Vec<_>>>()?;
    // None too when no ETYPE-INFO2 is there, or one cannot be read: nothing is known.
    (!infos.is_empty()).then(|| infos.into_iter().flat_map(|info| info.0).collect())
}

/// The salt the KDC names in ETYPE-INFO2 for aes256, if any.
fn salt_of(error: &picky_krb::messages::KrbErrorInner) -> Option<String> {
    etype_info(error)?
        .into_iter()
        .find(|entry| entry.etype.0.0 == [AES256])
        .and_then(|entry| entry.salt.0.map(|s| s.0.0.to_string()))
}

fn kdc_body(
    credentials: &Credentials,
    cname: Option<PrincipalName>,
    sname: PrincipalName,
    now: time::OffsetDateTime,
    nonce: u32,
) -> Result<KdcReqBody, Error> {
    Ok(KdcReqBody {
        // forwardable, renewable, canonicalize, renewable-ok
        kdc_options: ExplicitContextTag0::from(flags(0x4081_0010)),
        cname: Optional::from(cname.map(ExplicitContextTag1::from)),
        realm: ExplicitContextTag2::from(string(&credentials.realm)?),
        sname: Optional::from(Some(ExplicitContextTag3::from(sname))),
        from: Optional::from(None),
        till: ExplicitContextTag5::from(time_at(now + time::Duration::hours(10))),
        rtime: Optional::from(None),
        nonce: ExplicitContextTag7::from(int(nonce)),
        etype: ExplicitContextTag8::from(Asn1SequenceOf(vec![IntegerAsn1(vec![AES256])])),
        addresses: Optional::from(None),
        enc_authorization_data: Optional::from(None),
        additional_tickets: Optional::from(None),
    })
}

fn kdc_req(padata: Vec<PaData>, body: KdcReqBody, msg_type: u8) -> KdcReq {
    KdcReq {
        pvno: ExplicitContextTag1::from(IntegerAsn1(vec![5])),
        msg_type: ExplicitContextTag2::from(IntegerAsn1(vec![msg_type])),
        padata: Optional::from(
            (!padata.is_empty()).then(|| ExplicitContextTag3::from(Asn1SequenceOf(padata))),
        ),
        req_body: ExplicitContextTag4::from(body),
    }
}

/// A session key, the ticket it goes with, and when the ticket stops being valid.
#[derive(Clone)]
struct Granted {
    ticket: Ticket,
    key: Vec<u8>,
    /// When the ticket is replaced: shortly before it ends (by a quarter of its lifetime
    /// when granted, at most [`RENEW_BEFORE`]).
    renew_at: time::OffsetDateTime,
}

impl Granted {
    /// Whether the ticket may still be used at `now`.
    fn usable_at(&self, now: time::OffsetDateTime) -> bool {
        now < self.renew_at
    }
}

/// When a ticket granted at `now` and ending at `end` is replaced: a quarter of its
/// lifetime before its end, at most [`RENEW_BEFORE`] before.
fn renew_at(end: time::OffsetDateTime, now: time::OffsetDateTime) -> time::OffsetDateTime {
    let lifetime = end - now;
    end - (lifetime / 4i32).clamp(time::Duration::ZERO, RENEW_BEFORE)
}

/// How long before its end a cached ticket is replaced, at most.
const RENEW_BEFORE: time::Duration = time::Duration::minutes(5);

fn granted(rep: &KdcRep, key: &[u8], usage: i32, nonce: u32, what: &str) -> Result<Granted, Error> {
    let plain = decrypt(key, usage, &rep.enc_part.0)?;
    // Windows sends the TGS tag on AS-REP parts too; read either.
    let part: EncKdcRepPart = match plain.first() {
        Some(0x79) => picky_asn1_der::from_bytes::<EncAsRepPart>(&plain).map(|p| p.0),
        _ => picky_asn1_der::from_bytes::<EncTgsRepPart>(&plain).map(|p| p.0),
    }
    .map_err(|e| invalid(&format!("the {what}'s encrypted part is unreadable"), e))?;
    if part.nonce.0.as_unsigned_bytes_be() != int(nonce).as_unsigned_bytes_be() {
        return Err(invalid(
            &format!("the {what}"),
            "answers another request (nonce)",
        ));
    }
    if part.key.0.key_type.0.0 != [AES256] {
        return Err(invalid(
            &format!("the {what}"),
            "holds a session key that is not aes256",
        ));
    }
    let end = time::OffsetDateTime::try_from(part.end_time.0.0.clone())
        .map_err(|e| invalid(&format!("the {what}'s end time"), e))?;
    Ok(Granted {
        ticket: rep.ticket.0.clone(),
        key: part.key.0.key_value.0.0.clone(),
        renew_at: renew_at(end, time::OffsetDateTime::now_utc()),
    })
}

fn authenticator(
    credentials: &Credentials,
    cname: &PrincipalName,
    cksum: Option<Checksum>,
    now: time::OffsetDateTime,
) -> Result<Authenticator, Error> {
    Ok(ApplicationTag(AuthenticatorInner {
        authenticator_vno: ExplicitContextTag0::from(IntegerAsn1(vec![5])),
        crealm: ExplicitContextTag1::from(string(&credentials.realm)?),
        cname: ExplicitContextTag2::from(cname.clone()),
        cksum: Optional::from(cksum.map(ExplicitContextTag3::from)),
        cusec: ExplicitContextTag4::from(int(now.microsecond())),
        ctime: ExplicitContextTag5::from(time_at(now)),
        subkey: Optional::from(None),
        seq_number: Optional::from(None),
        authorization_data: Optional::from(None),
    }))
}

fn ap_req(ticket: Ticket, authenticator: EncryptedData) -> ApReq {
    ApplicationTag(ApReqInner {
        pvno: ExplicitContextTag0::from(IntegerAsn1(vec![5])),
        msg_type: ExplicitContextTag1::from(IntegerAsn1(vec![14])),
        ap_options: ExplicitContextTag2::from(flags(0)),
        ticket: ExplicitContextTag3::from(ticket),
        authenticator: ExplicitContextTag4::from(authenticator),
    })
}

/// The long-term key: from the keytab, or from the password and the KDC's salt.
fn long_term_key(credentials: &Credentials, salt: Option<String>) -> Result<Vec<u8>, Error> {
    match &credentials.secret {
        Secret::Key(key) => Ok(key.clone()),
        Secret::Password(password) => {
            let salt =
                salt.unwrap_or_else(|| format!("{}{}", credentials.realm, credentials.username));
            CipherSuite::Aes256CtsHmacSha196
                .cipher()
                .generate_key_from_password(password.as_bytes(), salt.as_bytes())
                .map_err(|e| invalid("cannot derive the key from the password", e))
        }
    }
}

/// A TGT for the principal: AS-REQ, pre-authentication asked, AS-REQ with PA-ENC-TIMESTAMP.
async fn tgt(
    credentials: &Credentials,
    cname: &PrincipalName,
    timeout: Duration,
) -> Result<Granted, Error> {
    let krbtgt = principal(2, &["krbtgt", &credentials.realm])?;
    let now = time::OffsetDateTime::now_utc();
    let first_nonce = nonce();
    let first = ApplicationTag::<KdcReq, 10>(kdc_req(
        Vec::new(),
        kdc_body(
            credentials,
            Some(cname.clone()),
            krbtgt.clone(),
            now,
            first_nonce,
        )?,
        10,
    ));
    let (salt, first_aes) =
        match kdc_call(credentials, &der("the AS-REQ", &first)?, timeout).await? {
            Reply::Error(e) if e.error_code.0 == 25 => (salt_of(&e), aes_listed(&e)),
            Reply::Error(e) => return Err(kdc_error(credentials, "AS-REQ", &e, aes_listed(&e))),
            Reply::As(_) | Reply::Tgs(_) => {
                return Err(Error::misconfigured(format!(
                    "Kerberos: the KDC does not require pre-authentication for {}; refusing to \
                     use such an account",
                    credentials.principal()
                )));
            }
        };
    let key = long_term_key(credentials, salt)?;
    let stamp = PaEncTsEnc {
        patimestamp: ExplicitContextTag0::from(time_at(now)),
        pausec: Optional::from(Some(ExplicitContextTag1::from(int(now.microsecond())))),
    };
    let enc = encrypt(&key, 1, &der("PA-ENC-TS-ENC", &stamp)?)?;
    let pa = PaData {
        padata_type: ExplicitContextTag1::from(IntegerAsn1(vec![2])),
        padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(der(
            "PA-ENC-TIMESTAMP",
            &enc,
        )?)),
    };
    let as_nonce = nonce();
    let request: AsReq = ApplicationTag(kdc_req(
        vec![pa],
        kdc_body(credentials, Some(cname.clone()), krbtgt, now, as_nonce)?,
        10,
    ));
    match kdc_call(credentials, &der("the AS-REQ", &request)?, timeout).await? {
        Reply::As(rep) => granted(&rep, &key, 3, as_nonce, "AS-REP"),
        Reply::Error(e) => {
            let aes = aes_listed(&e).or(first_aes);
            Err(kdc_error(credentials, "AS-REQ", &e, aes))
        }
        Reply::Tgs(_) => Err(invalid("the KDC", "answered an AS-REQ with a TGS-REP")),
    }
}

/// A service ticket for `HTTP/<host>`.
async fn service_ticket(
    credentials: &Credentials,
    cname: &PrincipalName,
    tgt: &Granted,
    host: &str,
    timeout: Duration,
) -> Result<Granted, Error> {
    let now = time::OffsetDateTime::now_utc();
    let tgs_nonce = nonce();
    let body = kdc_body(
        credentials,
        None,
        principal(2, &["HTTP", host])?,
        now,
        tgs_nonce,
    )?;
    let body_sum = ChecksumSuite::HmacSha196Aes256
        .hasher()
        .checksum(&tgt.key, 6, &der("the TGS-REQ body", &body)?)
        .map_err(|e| invalid("cannot checksum the TGS-REQ body", e))?;
    let cksum = Checksum {
        cksumtype: ExplicitContextTag0::from(IntegerAsn1(vec![HMAC_AES256])),
        checksum: ExplicitContextTag1::from(OctetStringAsn1::from(body_sum)),
    };
    let auth = authenticator(credentials, cname, Some(cksum), now)?;
    let enc = encrypt(&tgt.key, 7, &der("the TGS authenticator", &auth)?)?;
    let pa = PaData {
        padata_type: ExplicitContextTag1::from(IntegerAsn1(vec![1])),
        padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(der(
            "PA-TGS-REQ",
            &ap_req(tgt.ticket.clone(), enc),
        )?)),
    };
    let request: TgsReq = ApplicationTag(kdc_req(vec![pa], body, 12));
    match kdc_call(credentials, &der("the TGS-REQ", &request)?, timeout).await? {
        Reply::Tgs(rep) => granted(&rep, &tgt.key, 8, tgs_nonce, "TGS-REP"),
        Reply::Error(e) => Err(kdc_error(credentials, "TGS-REQ", &e, None)),
        Reply::As(_) => Err(invalid("the KDC", "answered a TGS-REQ with an AS-REP")),
    }
}

/// The RFC 4121 authenticator checksum: no delegation, the channel bindings' MD5.
fn gss_checksum(bindings: Option<[u8; 16]>) -> Checksum {
    let mut value = Vec::with_capacity(24);
    value.extend_from_slice(&16u32.to_le_bytes());
    value.extend_from_slice(&bindings.unwrap_or([0; 16]));
    // GSS_C_INTEG_FLAG | GSS_C_CONF_FLAG | GSS_C_SEQUENCE_FLAG
    value.extend_from_slice(&0x0000_0038u32.to_le_bytes());
    Checksum {
        cksumtype: ExplicitContextTag0::from(IntegerAsn1(vec![0x00, 0x80, 0x03])),
        checksum: ExplicitContextTag1::from(OctetStringAsn1::from(value)),
    }
}

/// Kerberos for one backend: its credentials and the tickets it holds.
pub(crate) struct Client {
    pub(crate) credentials: Credentials,
    /// Held across a KDC exchange, so that concurrent calls wait for one set of tickets
    /// instead of each asking the KDC.
    tickets: tokio::sync::Mutex<Tickets>,
}

/// The cached TGT, the service ticket for the host it was asked for, and the last
/// failure to get tickets.
#[derive(Default)]
struct Tickets {
    tgt: Option<Granted>,
    service: Option<(String, Granted)>,
    failed: Option<(std::time::Instant, Error)>,
}

/// The same failure again, for a call that waited while another call failed to get
/// tickets (errors hold sources that cannot be cloned; the kind and message are kept).
fn again(e: &Error) -> Error {
    match e {
        Error::Unauthorized { message } => Error::Unauthorized {
            message: message.clone(),
        },
        Error::Misconfigured { message, .. } => Error::misconfigured(message.clone()),
        Error::InvalidResponse { message } => Error::InvalidResponse {
            message: message.clone(),
        },
        other => Error::Transient {
            message: other.to_string(),
            source: None,
        },
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(credentials: Credentials) -> Client {
        Client {
            credentials,
            tickets: tokio::sync::Mutex::new(Tickets::default()),
        }
    }

    /// Drops the cached tickets: certsrv refused one, or it was issued for another key.
    pub(crate) async fn forget(&self) {
        *self.tickets.lock().await = Tickets::default();
    }

    /// A service ticket for `HTTP/<host>`, from the cache or the KDC, and whether it
    /// came from the cache.
    ///
    /// One call at a time asks the KDC; calls that waited meanwhile take its tickets, or
    /// its failure, instead of asking the KDC one after another.
    async fn service_ticket(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<(Granted, bool), Error> {
        let asked = std::time::Instant::now();
        let mut tickets = self.tickets.lock().await;
        let now = time::OffsetDateTime::now_utc();
        if let Some((cached_host, service)) = &tickets.service
            && cached_host == host
            && service.usable_at(now)
        {
            return Ok((service.clone(), true));
        }
        if let Some((at, e)) = &tickets.failed
            && *at >= asked
        {
            return Err(again(e));
        }
        match self.fetch(&mut tickets, host, timeout, now).await {
            Ok(service) => {
                tickets.failed = None;
                tickets.service = Some((host.to_string(), service.clone()));
                Ok((service, false))
            }
            Err(e) => {
                tickets.failed = Some((std::time::Instant::now(), again(&e)));
                Err(e)
            }
        }
    }

    /// A service ticket from the KDC, with the cached TGT or a new one. A cached TGT the
    /// KDC refuses (its key was reset, or it ended early) is replaced once.
    async fn fetch(
        &self,
        tickets: &mut Tickets,
        host: &str,
        timeout: Duration,
        now: time::OffsetDateTime,
    ) -> Result<Granted, Error> {
        let cname = principal(1, &[self.credentials.username.as_str()])?;
        if let Some(cached) = tickets.tgt.clone().filter(|t| t.usable_at(now)) {
            match service_ticket(&self.credentials, &cname, &cached, host, timeout).await {
                Ok(service) => return Ok(service),
                // The KDC answered, and refused this TGT: try once with a new one.
                Err(Error::Unauthorized { .. }) => tickets.tgt = None,
                Err(e) => return Err(e),
            }
        }
        let fresh = tgt(&self.credentials, &cname, timeout).await?;
        tickets.tgt = Some(fresh.clone());
        service_ticket(&self.credentials, &cname, &fresh, host, timeout).await
    }

    /// The SPNEGO token for `Authorization: Negotiate`: a fresh AP-REQ for `HTTP/<host>`,
    /// carrying the channel bindings (`tls-server-end-point`) when the TLS certificate is
    /// known, and whether its ticket came from the cache.
    pub(crate) async fn negotiate_token(
        &self,
        host: &str,
        bindings: Option<[u8; 16]>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, bool), Error> {
        let (service, cached) = self.service_ticket(host, timeout).await?;
        let cname = principal(1, &[self.credentials.username.as_str()])?;
        let now = time::OffsetDateTime::now_utc();
        let auth = authenticator(&self.credentials, &cname, Some(gss_checksum(bindings)), now)?;
        let enc = encrypt(&service.key, 11, &der("the AP-REQ authenticator", &auth)?)?;
        let krb = ApplicationTag0(KrbMessage {
            krb5_oid: oid(KRB5_OID)?,
            krb5_token_id: [0x01, 0x00],
            krb_msg: ap_req(service.ticket, enc),
        });
        let init = ApplicationTag0(GssApiNegInit {
            oid: oid(SPNEGO_OID)?,
            neg_token_init: ExplicitContextTag0::from(NegTokenInit {
                mech_types: Optional::from(Some(ExplicitContextTag0::from(Asn1SequenceOf(vec![
                    oid(MS_KRB5_OID)?,
                    oid(KRB5_OID)?,
                ])))),
                req_flags: Optional::from(None),
                mech_token: Optional::from(Some(ExplicitContextTag2::from(OctetStringAsn1::from(
                    der("the Kerberos GSS token", &krb)?,
                )))),
                mech_list_mic: Optional::from(None),
            }),
        });
        Ok((der("the SPNEGO token", &init)?, cached))
    }
}

/// The aes256 key of `principal@realm` with the highest version in an MIT keytab.
///
/// # Errors
/// A message saying why the keytab is unusable.
pub(crate) fn keytab_key(keytab: &[u8], username: &str, realm: &str) -> Result<Vec<u8>, String> {
    let mut at = match keytab {
        [0x05, 0x02, ..] => 2usize,
        [0x05, 0x01, ..] => return Err("keytab format version 1 is not supported".into()),
        _ => return Err("not an MIT keytab (no 0x0502 header)".into()),
    };
    let u16_at = |at: usize| {
        keytab
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        keytab
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut best: Option<(u32, Vec<u8>)> = None;
    let mut found_principal = false;
    while at < keytab.len() {
        let size = u32_at(at).ok_or("truncated entry size")? as i32;
        at += 4;
        let len = size.unsigned_abs() as usize;
        if keytab.get(at..at + len).is_none() {
            return Err("truncated entry".into());
        }
        let next = at + len;
        if size > 0 {
            let mut p = at;
            let count = u16_at(p).ok_or("truncated entry")?;
            p += 2;
            let read = |p: &mut usize| -> Result<&[u8], String> {
                let n = u16_at(*p).ok_or("truncated entry")?;
                let data = keytab.get(*p + 2..*p + 2 + n).ok_or("truncated entry")?;
                *p += 2 + n;
                Ok(data)
            };
            let entry_realm = read(&mut p)?.to_vec();
            let mut parts = Vec::new();
            for _ in 0..count {
                parts.push(read(&mut p)?.to_vec());
            }
            p += 4 + 4; // name type, timestamp
            let vno8 = *keytab.get(p).ok_or("truncated entry")? as u32;
            p += 1;
            let key_type = u16_at(p).ok_or("truncated entry")?;
            p += 2;
            let key = read(&mut p)?.to_vec();
            let key_end = p;
            let vno = if next >= key_end + 4 {
                u32_at(key_end).filter(|v| *v != 0).unwrap_or(vno8)
            } else {
                vno8
            };
            let matches = parts.len() == 1
                && parts[0] == username.as_bytes()
                && entry_realm.eq_ignore_ascii_case(realm.as_bytes());
            if matches {
                found_principal = true;
                if key_type == AES256 as usize
                    && key.len() == 32
                    && best.as_ref().is_none_or(|(v, _)| vno > *v)
                {
                    best = Some((vno, key));
                }
            }
        }
        at = next;
    }
    match best {
        Some((_, key)) => Ok(key),
        None if found_principal => Err(format!(
            "the keytab holds no aes256-cts-hmac-sha1-96 key for {username}@{realm}"
        )),
        None => Err(format!("the keytab holds no key for {username}@{realm}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(realm: &str, name: &str, key_type: u16, key: &[u8], kvno: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&1u16.to_be_bytes());
        for s in [realm, name] {
            e.extend_from_slice(&(s.len() as u16).to_be_bytes());
            e.extend_from_slice(s.as_bytes());
        }
        e.extend_from_slice(&1u32.to_be_bytes());
        e.extend_from_slice(&0u32.to_be_bytes());
        e.push(kvno as u8);
        e.extend_from_slice(&key_type.to_be_bytes());
        e.extend_from_slice(&(key.len() as u16).to_be_bytes());
        e.extend_from_slice(key);
        e.extend_from_slice(&kvno.to_be_bytes());
        let mut out = (e.len() as u32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn keytab_picks_the_newest_aes256_key() {
        let mut kt = vec![0x05, 0x02];
        kt.extend(entry("CORP.EXAMPLE", "svc", 17, &[1; 16], 3));
        kt.extend(entry("CORP.EXAMPLE", "svc", 18, &[2; 32], 2));
        kt.extend(entry("CORP.EXAMPLE", "svc", 18, &[3; 32], 300));
        kt.extend(entry("CORP.EXAMPLE", "other", 18, &[4; 32], 400));
        // A deleted hole.
        kt.extend((-8i32).to_be_bytes());
        kt.extend([0u8; 8]);
        assert_eq!(
            keytab_key(&kt, "svc", "corp.example").expect("key"),
            vec![3; 32]
        );
        assert!(
            keytab_key(&kt, "nobody", "CORP.EXAMPLE")
                .expect_err("none")
                .contains("no key")
        );
        let mut only128 = vec![0x05, 0x02];
        only128.extend(entry("CORP.EXAMPLE", "svc", 17, &[1; 16], 3));
        assert!(
            keytab_key(&only128, "svc", "CORP.EXAMPLE")
                .expect_err("none")
                .contains("aes256")
        );
        assert!(keytab_key(b"junk", "svc", "CORP.EXAMPLE").is_err());
        assert!(keytab_key(&[0x05, 0x02, 0, 0, 0, 40, 0], "svc", "CORP.EXAMPLE").is_err());
    }

    #[tokio::test]
    async fn a_kdc_the_egress_policy_refuses_is_never_reached() {
        // A port that refuses: were the connection attempted, the error would say
        // "unreachable", not name the policy.
        let credentials = Credentials {
            username: "svc".into(),
            realm: "CORP.EXAMPLE".into(),
            kdc: "127.0.0.1:1".into(),
            secret: Secret::Password("pw".into()),
            egress: Some(std::sync::Arc::new(
                certwright_pki::egress::EgressPolicy::new(),
            )),
        };
        let err = match kdc_call(&credentials, b"x", Duration::from_secs(2)).await {
            Err(e) => e,
            Ok(_) => panic!("reached"),
        };
        assert_eq!(err.metric_label(), "misconfigured", "{err}");
        assert!(
            err.to_string().contains("egress policy refuses 127.0.0.1"),
            "{err}"
        );
    }

    #[test]
    fn tickets_are_renewed_shortly_before_they_end() {
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        // A ten-hour ticket: five minutes before its end.
        let end = now + time::Duration::hours(10);
        assert_eq!(renew_at(end, now), end - time::Duration::minutes(5));
        // A four-minute ticket: a quarter of its lifetime before its end.
        let end = now + time::Duration::minutes(4);
        assert_eq!(renew_at(end, now), end - time::Duration::minutes(1));
        // A ticket that has already ended is renewed at once.
        let end = now - time::Duration::minutes(1);
        assert_eq!(renew_at(end, now), end);
    }

    #[test]
    fn password_key_uses_the_default_salt() {
        let c = |pw: &str| Credentials {
            username: "svc".into(),
            realm: "CORP.EXAMPLE".into(),
            kdc: "127.0.0.1:88".into(),
            secret: Secret::Password(pw.into()),
            egress: None,
        };
        let a = long_term_key(&c("pw"), None).expect("key");
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            long_term_key(&c("pw"), Some("CORP.EXAMPLEsvc".into())).expect("key")
        );
        assert_ne!(a, long_term_key(&c("pw2"), None).expect("key"));
    }
}
