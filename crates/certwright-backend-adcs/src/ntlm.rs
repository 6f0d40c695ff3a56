//! NTLMv2 for HTTP (MS-NLMP): the NEGOTIATE message, reading the server's CHALLENGE, and
//! the AUTHENTICATE message with an NTLMv2 response, a MIC and the channel binding of the
//! TLS connection (RFC 5929 `tls-server-end-point`), so that it passes IIS Extended
//! Protection. No signing or sealing is negotiated: HTTP needs neither.

use hmac::{Hmac, Mac};
use md4::Digest;

type HmacMd5 = Hmac<md5::Md5>;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// The flags this client asks for.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// AV pair ids (MS-NLMP 2.2.2.1).
pub(crate) const AV_EOL: u16 = 0x0000;
pub(crate) const AV_FLAGS: u16 = 0x0006;
pub(crate) const AV_TIMESTAMP: u16 = 0x0007;
pub(crate) const AV_TARGET_NAME: u16 = 0x0009;
pub(crate) const AV_CHANNEL_BINDINGS: u16 = 0x000A;

/// MsvAvFlags bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC: u32 = 0x0000_0002;

/// A version block (Windows 10, NTLM revision 15), informational only.
const VERSION: [u8; 8] = [10, 0, 0x61, 0x4a, 0, 0, 0, 15];

/// Seconds between 1601-01-01 and 1970-01-01, for FILETIME.
const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// The account NTLM authenticates as.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) domain: String,
    pub(crate) password: String,
}

impl Credentials {
    /// Splits `DOMAIN\user` into its parts; `user@domain` (a UPN) and a plain name are
    /// sent as they are, with `domain` (which may be empty).
    pub(crate) fn new(username: &str, password: &str, domain: Option<&str>) -> Self {
        let (domain_part, user) = match username.split_once('\\') {
            Some((d, u)) => (Some(d), u),
            None => (None, username),
        };
        Credentials {
            username: user.to_string(),
            domain: domain.or(domain_part).unwrap_or_default().to_string(),
            password: password.to_string(),
        }
    }
}

/// The NEGOTIATE message (type 1).
pub(crate) fn negotiate() -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // Domain and workstation: empty, payload offset 40.
    for _ in 0..2 {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&40u32.to_le_bytes());
    }
    out.extend_from_slice(&VERSION);
    out
}

/// What the server's CHALLENGE message (type 2) says.
#[derive(Debug, Clone)]
pub(crate) struct Challenge {
    pub(crate) flags: u32,
    pub(crate) server_challenge: [u8; 8],
    pub(crate) target_info: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The payload a (length, max length, offset) field at `at` points to.
pub(crate) fn field(b: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16_at(b, at)?);
    let offset = usize::try_from(u32_at(b, at + 4)?).ok()?;
    b.get(offset..offset.checked_add(len)?)
}

/// Reads a CHALLENGE message, or says what is wrong with it.
pub(crate) fn parse_challenge(b: &[u8]) -> Result<Challenge, &'static str> {
    if b.get(..8) != Some(SIGNATURE.as_slice()) || u32_at(b, 8) != Some(2) {
        return Err("not an NTLM CHALLENGE message");
    }
    let flags = u32_at(b, 20).ok_or("truncated CHALLENGE message")?;
    let server_challenge: [u8; 8] = b
        .get(24..32)
        .and_then(|s| s.try_into().ok())
        .ok_or("truncated CHALLENGE message")?;
    let target_info = if flags & NEGOTIATE_TARGET_INFO != 0 {
        field(b, 40)
            .ok_or("the CHALLENGE's target information lies outside the message")?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
    })
}

/// The AV pairs of a target-information block, without the terminating `MsvAvEOL`.
pub(crate) fn av_pairs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(id), Some(len)) = (u16_at(b, 0), u16_at(b, 2)) {
        if id == AV_EOL {
            break;
        }
        let Some(value) = b.get(4..4 + usize::from(len)) else {
            break;
        };
        out.push((id, value));
        b = &b[4 + usize::from(len)..];
    }
    out
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length.
    let mut mac = <HmacMd5 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: HMAC-MD5 keyed with MD4(UTF-16LE(password)) over UTF-16LE(UPPER(user) + domain).
pub(crate) fn ntowf_v2(credentials: &Credentials) -> [u8; 16] {
    let nt_hash = md4::Md4::digest(utf16le(&credentials.password));
    let identity = format!(
        "{}{}",
        credentials.username.to_uppercase(),
        credentials.domain
    );
    hmac_md5(&nt_hash, &[&utf16le(&identity)])
}

/// MD5 of the `gss_channel_bindings_struct` whose application data is
/// `tls-server-end-point:` followed by the certificate hash (RFC 5929), as NTLM carries it
/// in `MsvAvChannelBindings`.
pub(crate) fn channel_bindings_hash(end_point_hash: &[u8]) -> [u8; 16] {
    let mut application_data = b"tls-server-end-point:".to_vec();
    application_data.extend_from_slice(end_point_hash);
    let mut structure = Vec::with_capacity(20 + application_data.len());
    // initiator address type and length, acceptor address type and length: all zero.
    structure.extend_from_slice(&[0u8; 16]);
    let len = u32::try_from(application_data.len()).unwrap_or(u32::MAX);
    structure.extend_from_slice(&len.to_le_bytes());
    structure.extend_from_slice(&application_data);
    md5::Md5::digest(&structure).into()
}

/// Inputs of one AUTHENTICATE message that tests fix and real calls draw.
pub(crate) struct Fresh {
    pub(crate) client_challenge: [u8; 8],
    /// FILETIME, used when the server sent no `MsvAvTimestamp`.
    pub(crate) now_filetime: u64,
}

impl Fresh {
    /// A random client challenge and the current time.
    pub(crate) fn draw() -> Fresh {
        let mut client_challenge = [0u8; 8];
        // ring's system random; an all-zero challenge only weakens, never breaks, it.
        let _ =
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut client_challenge);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now_filetime = (since_epoch.as_secs() + FILETIME_UNIX_OFFSET_SECS) * 10_000_000
            + u64::from(since_epoch.subsec_nanos() / 100);
        Fresh {
            client_challenge,
            now_filetime,
        }
    }
}

/// The AUTHENTICATE message (type 3) answering `challenge` on a connection whose server
/// certificate hashes (tls-server-end-point) to `end_point_hash`, if known.
pub(crate) fn authenticate(
    credentials: &Credentials,
    negotiate_msg: &[u8],
    challenge_msg: &[u8],
    challenge: &Challenge,
    end_point_hash: Option<&[u8]>,
    spn: &str,
    fresh: &Fresh,
) -> Vec<u8> {
    let key = ntowf_v2(credentials);
    let server_pairs = av_pairs(&challenge.target_info);
    let timestamp = server_pairs
        .iter()
        .find(|(id, v)| *id == AV_TIMESTAMP && v.len() == 8)
        .map(|(_, v)| v.to_vec());
    // The server's pairs, then ours: the MIC flag, the channel binding, the SPN.
    let mut info = Vec::new();
    let mut push = |id: u16, value: &[u8]| {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
        info.extend_from_slice(value);
    };
    for (id, value) in &server_pairs {
        if !matches!(*id, AV_FLAGS | AV_CHANNEL_BINDINGS | AV_TARGET_NAME) {
            push(*id, value);
        }
    }
    let with_mic = timestamp.is_some();
    if with_mic {
        push(AV_FLAGS, &AV_FLAG_MIC.to_le_bytes());
    }
    let bindings = end_point_hash.map(channel_bindings_hash).unwrap_or([0; 16]);
    push(AV_CHANNEL_BINDINGS, &bindings);
    push(AV_TARGET_NAME, &utf16le(spn));
    push(AV_EOL, &[]);

    let time = timestamp.unwrap_or_else(|| fresh.now_filetime.to_le_bytes().to_vec());
    let mut blob = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&time);
    blob.extend_from_slice(&fresh.client_challenge);
    blob.extend_from_slice(&[0u8; 4]);
    blob.extend_from_slice(&info);
    blob.extend_from_slice(&[0u8; 4]);
    let proof = hmac_md5(&key, &[&challenge.server_challenge, &blob]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);
    let lm_response = if with_mic {
        vec![0u8; 24]
    } else {
        let mut lm = hmac_md5(
            &key,
            &[&challenge.server_challenge, &fresh.client_challenge],
        )
        .to_vec();
        lm.extend_from_slice(&fresh.client_challenge);
        lm
    };
    let session_base_key = hmac_md5(&key, &[&proof]);

    let flags = CLIENT_FLAGS & (challenge.flags | NEGOTIATE_VERSION);
    let domain = utf16le(&credentials.domain);
    let user = utf16le(&credentials.username);
    let workstation = utf16le("CERTWRIGHT");
    let payloads: [&[u8]; 6] = [
        &lm_response,
        &nt_response,
        &domain,
        &user,
        &workstation,
        &[],
    ];
    const HEADER: usize = 88;
    let mut out = Vec::with_capacity(HEADER + payloads.iter().map(|p| p.len()).sum::<usize>());
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = HEADER;
    for p in payloads {
        let len = u16::try_from(p.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&u32::try_from(offset).unwrap_or(0).to_le_bytes());
        offset += p.len();
    }
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&VERSION);
    out.extend_from_slice(&[0u8; 16]); // MIC, filled below.
    for p in payloads {
        out.extend_from_slice(p);
    }
    if with_mic {
        // No key exchange is negotiated, so the exported session key is the base key.
        let mic = hmac_md5(&session_base_key, &[negotiate_msg, challenge_msg, &out]);
        out[72..88].copy_from_slice(&mic);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn ntowfv2_matches_ms_nlmp_4_2_4() {
        // MS-NLMP 4.2.4.1.1: User "User", UserDom "Domain", Passwd "Password".
        let key = ntowf_v2(&Credentials::new("User", "Password", Some("Domain")));
        assert_eq!(key.to_vec(), hex("0c868a403bfd7a93a3001ef22ef02e3f"));
    }

    #[test]
    fn ntproofstr_matches_ms_nlmp_4_2_4() {
        // MS-NLMP 4.2.4: server challenge 0123456789abcdef, client challenge aa*8, time 0,
        // target info: NetBIOS domain "Domain", NetBIOS computer "Server".
        let credentials = Credentials::new("User", "Password", Some("Domain"));
        let key = ntowf_v2(&credentials);
        let mut info = Vec::new();
        for (id, v) in [(2u16, utf16le("Domain")), (1u16, utf16le("Server"))] {
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(v.len() as u16).to_le_bytes());
            info.extend_from_slice(&v);
        }
        info.extend_from_slice(&[0; 4]);
        let mut blob = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
        blob.extend_from_slice(&[0; 8]);
        blob.extend_from_slice(&[0xaa; 8]);
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(&info);
        blob.extend_from_slice(&[0; 4]);
        let proof = hmac_md5(&key, &[&hex("0123456789abcdef"), &blob]);
        assert_eq!(proof.to_vec(), hex("68cd0ab851e51c96aabc927bebef6a1c"));
    }

    #[test]
    fn usernames_split_their_domain() {
        let c = Credentials::new("CORP\\svc", "p", None);
        assert_eq!((c.username.as_str(), c.domain.as_str()), ("svc", "CORP"));
        let c = Credentials::new("svc@corp.example", "p", None);
        assert_eq!(
            (c.username.as_str(), c.domain.as_str()),
            ("svc@corp.example", "")
        );
        let c = Credentials::new("CORP\\svc", "p", Some("OTHER"));
        assert_eq!(c.domain, "OTHER");
    }

    #[test]
    fn challenges_are_read_with_bounds() {
        assert!(parse_challenge(b"NTLMSSP\0").is_err());
        assert!(parse_challenge(&negotiate()).is_err());
        let mut msg = SIGNATURE.to_vec();
        msg.extend_from_slice(&2u32.to_le_bytes());
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(&NEGOTIATE_TARGET_INFO.to_le_bytes());
        msg.extend_from_slice(&[7; 8]);
        msg.extend_from_slice(&[0; 8]);
        // Target info pointing far outside the message.
        msg.extend_from_slice(&[10, 0, 10, 0, 0xff, 0xff, 0, 0]);
        assert!(parse_challenge(&msg).is_err());
        assert!(av_pairs(&[6, 0, 200, 0, 1]).is_empty());
    }
}
